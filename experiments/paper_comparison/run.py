"""Cross-entropy vs SupCon vs ProjNCE under label noise: tuned on validation, paired seeds.

Two stages, every cell one call of the trainer (`projnce_jax.train.train_and_evaluate`):

* Stage 1 (tuning, `eval_split="validation"`, one seed, per dataset and noise level):
  the learning rate of cross-entropy, the temperature of every contrastive method, then beta
  of every ProjNCE projection and the bandwidth of the kernel projection (coordinate-wise,
  each step at the values chosen before it), then the training length: the shortest of
  `epoch_choices` whose validation linear-probe accuracy (mean over cross-entropy, SupCon and
  ProjNCE-centroid at the highest noise) is within `length_tolerance` of the best. The chosen
  values go to OUT/tuned.json. The test split is never read in stage 1.
* Stage 2 (evaluation on the test split): per dataset, its methods x label noise x paired
  seeds with the stage-1 values; seed s sets the initialisation, the data order and the
  label-noise draw, and is shared by all methods (so the contrasts are paired).

The primary endpoint is fixed in `PREREGISTRATION`, written into results.md before any cell
of the sweep is trained. Contrasts are paired mean differences over seeds with 95%
t-intervals; the verdict is read from the interval.

Usage::

  python experiments/paper_comparison/run.py --out experiments/paper_comparison
  python experiments/paper_comparison/run.py --out DIR --stage 1 --datasets mnist5k
  python experiments/paper_comparison/run.py --out DIR --max_cells 20   # a partial sitting
  python experiments/paper_comparison/run.py --out DIR --time_budget_s 3600
  python experiments/paper_comparison/run.py --out /tmp/pc --smallest   # tiny (what the tests run)
  python experiments/paper_comparison/run.py --out DIR --readme         # README tables
  python experiments/paper_comparison/run.py --out DIR --stage 2 --allow_untuned  # defaults

Resuming: every finished cell is stored as OUT/cells/<stage>/<dataset>/noise<n>/<name>/
seed<s>.json (small, committed); trainer folders are OUT/runs/... (ignored by git). Rerun
the same command to continue; finished cells are read back, a half-trained cell resumes
from its checkpoint, and a cell whose config changed is trained again. results.md always
says how many of the planned cells are done.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
sys.path.insert(0, os.path.dirname(_HERE))
if _ROOT not in sys.path:
  sys.path.append(_ROOT)  # configs/spoken_digits.py imports configs.speech_commands
import _sweep  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position



def code_root() -> str:
  """The checkout whose package this process imports (PYTHONPATH may name another
  worktree): its `projnce_jax/` and `configs/` are the code a cell runs and is hashed by."""
  import projnce_jax  # pylint: disable=g-import-not-at-top
  return os.path.dirname(os.path.dirname(os.path.abspath(projnce_jax.__file__)))


# Re-exported for experiments that reuse this sweep's cell runner and statistics.
machine_info = _sweep.machine_info
enable_compilation_cache = _sweep.enable_compilation_cache
run_cell = _sweep.run_cell
mean_std = _sweep.mean_std

PROJECTIONS = ("centroid", "median", "kernel", "orthogonal", "mlp")
METHODS: Dict[str, Dict[str, Any]] = {
    "cross_entropy": {"method": "cross_entropy"},
    "supcon": {"method": "supcon"},
    **{f"projnce_{p}": {"method": "projnce",
                        "loss": {"positive": p, "negative": "sample", "beta": 1.0}}
       for p in PROJECTIONS},
}
PRIMARY_DATASET = "mnist5k"
PRIMARY_NOISE = 0.4
PRIMARY_METRIC = "linear_probe_accuracy"
PRIMARY_TARGET = "projnce_centroid"
PRIMARY_REFERENCES = ("supcon", "cross_entropy")
PREREGISTERED_SEEDS = 5
MIN_EPOCHS = 20
SPREAD = 2.0  # pooled sds of `compare` (kept for experiments that use that rule)

FULL_SCALE_DATASET = "fashion_mnist_full"
FULL_SCALE_TARGET = PRIMARY_TARGET
FULL_SCALE_OTHER = "projnce_kernel"
FULL_SCALE_MIN_EPOCHS = 10
FULL_MAX_GRID = 6
ROUNDING_SEEDS = (0, 1, 2)

PREREGISTRATION = f"""\
## Preregistration (fixed before the sweep; written by the script from a constant)

- Primary endpoint: linear-probe test accuracy (frozen encoder features; probe trained on
  the noisy training labels, the trainer's `{PRIMARY_METRIC}`; clean test labels) on
  {PRIMARY_DATASET} at symmetric label noise {PRIMARY_NOISE:g}.
- Primary contrasts: {PRIMARY_TARGET} minus supcon, and {PRIMARY_TARGET} minus
  cross_entropy, as paired mean differences over {PREREGISTERED_SEEDS} seeds (seed s is shared
  by all methods: initialisation, data order, label-noise draw), with two-sided 95%
  t-intervals (mean +- t_0.975,n-1 * sd / sqrt(n)).
- Hyperparameters: chosen in stage 1 on the validation split only (one seed), then frozen.
  Training length: at least {MIN_EPOCHS} epochs, chosen from the validation accuracy.
- Reading: an interval above 0 means {PRIMARY_TARGET} is better, below 0 worse, an interval
  containing 0 means no difference is resolved. With fewer than {PREREGISTERED_SEEDS} paired
  seeds, fewer than {MIN_EPOCHS} epochs or untuned hyperparameters the verdict is "not
  tested at adequate scale".
- Secondary (reported, not confirmatory): the same contrasts at noise 0, and on
  fashion_mnist_local (10,000 training images) and spoken_digits at both noise levels;
  kNN; probe and kNN trained on the clean training labels; the held-out MI bound; every
  other method's accuracy.

### Protocol 2 (added before its first cell; the endpoint above is unchanged)

- Tuning: every hyperparameter of every method, the contrastive methods' learning rate
  included, on a grid extended until the chosen value is interior (or the grid holds
  {FULL_MAX_GRID} values, or a stated limit; such a choice is marked in tuned.json); the
  number of stage-1 cells per method is reported beside the results.
- Full-scale comparison: {FULL_SCALE_DATASET} (the whole Fashion-MNIST training split:
  54,000 train / 6,000 validation, 10,000 test) at noise {PRIMARY_NOISE:g} (and 0,
  secondary); {FULL_SCALE_TARGET} minus supcon and minus cross_entropy, and
  {FULL_SCALE_OTHER} (the projection with the largest gain over supcon on the
  10,000-image subset at noise 0.4 under protocol 1) minus the same references, on the
  primary metric, paired over {PREREGISTERED_SEEDS} seeds with 95% t-intervals.
  Hyperparameters are fashion_mnist_local's (stage 1 on the 10,000-image subset); the
  length is chosen on the full validation split from {{10, 20, 30}} epochs, extended by
  10 while the validation accuracy still rises; adequate means at least
  {FULL_SCALE_MIN_EPOCHS} epochs (an epoch here is 5.4x the subset's steps).
- Variance: beside each paired interval, the unpaired (Welch) interval, and, where
  stage-2 cells were rerun with the same global batch on 2 devices (a change of rounding
  only), the paired interval widened by the rounding variance of a seed's difference.
  A verdict that the widened interval does not support is reported as such.
"""


@dataclasses.dataclass(frozen=True)
class Setting:
  """The training scale, the grids and the tuning ranges.

  Attributes:
    name: "full" or "smallest".
    widths: small_cnn channels per stage (image datasets).
    audio_widths: audio_cnn channels per stage (spoken_digits; its log-mel settings are
      its config's).
    extra_convs: stride-1 convolutions per stage after the first.
    batch_size: examples per step (two views each).
    num_epochs: pretraining epochs when stage 1 has not chosen a length.
    num_steps: pretraining steps (overrides every epoch count), or None.
    base_lr: SGD learning rate per 256 examples (image datasets).
    crop_scale: random-resized-crop area range.
    probe_epochs: linear-probe epochs.
    methods: keys of METHODS, per dataset.
    noises: symmetric label-noise rates.
    seeds: stage-2 seeds (paired across methods).
    checkpoint_every: steps between checkpoints.
    tune_seed: the stage-1 seed.
    tune_noises: noise rates stage 1 tunes at (each stage-2 noise uses the nearest one).
    tune_noises_by_dataset: datasets tuned at other rates than `tune_noises` (the larger
      datasets are tuned at the primary noise only: a 2-core CPU affords one grid each).
    temperatures: stage-1 grid for the contrastive methods.
    lr_factors: stage-1 grid for cross-entropy, multiples of the dataset's base lr.
    betas: stage-1 grid for ProjNCE.
    bandwidths: stage-1 grid for the kernel projection.
    epoch_choices: stage-1 training lengths (epochs).
    length_methods: methods whose mean validation accuracy chooses the length.
    length_tolerance: accuracy (fraction) below the best that a shorter length may lose.
    epoch_step: the length grid grows by this many epochs while its longest length scores
      best (validation accuracy still rising), up to `max_epochs`.
    max_epochs: the longest length stage 1 tries.
    epoch_choices_by_dataset: datasets with another length grid than `epoch_choices`.
    grid_ratio: a hyperparameter grid grows by this factor beyond the end where its best
      value lies (`extend_grid`).
    grid_limit_pairs: (hyperparameter, (lowest, highest)) values an extension may reach.
    max_grid: values per hyperparameter grid at most (initial ones included).
    hp_source: (dataset, source): the dataset takes the source's stage-1 values and
      chooses only its length (fashion_mnist_full takes the 10,000-image subset's: a
      54,000-image cell costs about 5x as much).
    fashion_subset: dataset.train_subset of fashion_mnist_local.
  """
  name: str = "full"
  widths: Tuple[int, ...] = (16, 32, 64)
  audio_widths: Tuple[int, ...] = (8, 16, 32)
  extra_convs: int = 1
  batch_size: int = 128
  num_epochs: int = 20
  num_steps: Optional[int] = None
  base_lr: float = 0.2
  crop_scale: Tuple[float, float] = (0.5, 1.0)
  probe_epochs: int = 30
  methods: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
      ("mnist5k", tuple(METHODS)),
      ("fashion_mnist_local", ("cross_entropy", "supcon", "projnce_centroid",
                               "projnce_kernel", "projnce_mlp")),
      ("fashion_mnist_full", ("cross_entropy", "supcon", "projnce_centroid",
                              "projnce_kernel")),
      ("spoken_digits", ("cross_entropy", "supcon", "projnce_centroid", "projnce_kernel",
                         "projnce_mlp")))
  noises: Tuple[float, ...] = (0.0, 0.4)
  seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
  checkpoint_every: int = 200
  tune_seed: int = 100
  tune_noises: Tuple[float, ...] = (0.0, 0.4)
  tune_noises_by_dataset: Tuple[Tuple[str, Tuple[float, ...]], ...] = (
      ("fashion_mnist_local", (0.4,)), ("fashion_mnist_full", (0.4,)),
      ("spoken_digits", (0.4,)))
  temperatures: Tuple[float, ...] = (0.05, 0.1, 0.2)
  lr_factors: Tuple[float, ...] = (0.5, 1.0, 2.0)
  betas: Tuple[float, ...] = (0.5, 1.0, 2.0)
  bandwidths: Tuple[float, ...] = (0.5, 1.0, 2.0)
  epoch_choices: Tuple[int, ...] = (20, 30, 40)
  length_methods: Tuple[str, ...] = ("cross_entropy", "supcon", "projnce_centroid")
  length_tolerance: float = 0.005
  epoch_step: int = 10
  max_epochs: int = 80
  epoch_choices_by_dataset: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
      ("fashion_mnist_full", (10, 20, 30)),)
  grid_ratio: float = 2.0
  grid_limit_pairs: Tuple[Tuple[str, Tuple[float, float]], ...] = (
      ("lr_factor", (1 / 16, 16.0)), ("temperature", (0.0125, 1.6)),
      ("beta", (0.125, 8.0)), ("bandwidth", (0.125, 8.0)))
  max_grid: int = 6
  hp_source: Tuple[Tuple[str, str], ...] = (("fashion_mnist_full", "fashion_mnist_local"),)
  fashion_subset: int = 10000

  @property
  def methods_by_dataset(self) -> Dict[str, Tuple[str, ...]]:
    return dict(self.methods)

  @property
  def datasets(self) -> Tuple[str, ...]:
    return tuple(d for d, _ in self.methods)

  def tune_noises_of(self, dataset: str) -> Tuple[float, ...]:
    """The noise rates stage 1 tunes `dataset` at."""
    return dict(self.tune_noises_by_dataset).get(dataset, self.tune_noises)

  def epoch_choices_of(self, dataset: str) -> Tuple[int, ...]:
    """The initial length grid of `dataset` (its first entry is the tuning length)."""
    return dict(self.epoch_choices_by_dataset).get(dataset, self.epoch_choices)

  @property
  def grid_limits(self) -> Dict[str, Tuple[float, float]]:
    return dict(self.grid_limit_pairs)


# Hyperparameter -> the Setting field holding its initial grid.
GRIDS = {"lr_factor": "lr_factors", "temperature": "temperatures", "beta": "betas",
         "bandwidth": "bandwidths"}


def hp_order(method: str) -> Tuple[str, ...]:
  """The hyperparameters stage 1 tunes for `method`, in order (coordinate-wise)."""
  if method == "cross_entropy":
    return ("lr_factor",)
  order = ("temperature", "lr_factor")
  if method.startswith("projnce_"):
    order += ("beta",)
  if method == "projnce_kernel":
    order += ("bandwidth",)
  return order


FULL = Setting()
SMALLEST = Setting(
    name="smallest", widths=(8, 16), extra_convs=0, batch_size=64, num_epochs=1,
    num_steps=3, probe_epochs=2,
    methods=(("mnist5k", ("cross_entropy", "supcon", "projnce_centroid")),),
    noises=(0.4,), seeds=(0, 1), checkpoint_every=3, tune_noises=(0.4,),
    temperatures=(0.1,), lr_factors=(1.0,), betas=(1.0,), bandwidths=(1.0,),
    epoch_choices=(1,), length_methods=("supcon", "projnce_centroid"), max_grid=1,
    epoch_choices_by_dataset=(), hp_source=())
SMALL = SMALLEST  # the name used by experiments that import this module


# ----------------------------------------------------------------------------------------
# Configs.


def available_fields() -> set:
  """Dotted names of every field of the trainer's base config."""
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  out = set()

  def walk(node, prefix):
    for k in node.keys():
      out.add(prefix + k)
      if hasattr(node[k], "keys") and not isinstance(node[k], dict):
        walk(node[k], prefix + k + ".")

  walk(train.base_config(), "")
  return out


# Sweep dataset names that train on another registered dataset (all its training images).
SOURCE_DATASET = {"fashion_mnist_full": "fashion_mnist_local"}


def dataset_skip_reason(dataset: str, stage: int) -> Optional[str]:
  """Why `dataset` cannot run in `stage` with this checkout, or None when it can."""
  from projnce_jax.data import sources  # pylint: disable=g-import-not-at-top
  fields = available_fields()
  if stage == 1 and "eval_split" not in fields:
    return ("the trainer config has no `eval_split` field, so tuning would read the test "
            "split; stage 1 needs the validation split")
  if SOURCE_DATASET.get(dataset, dataset) not in sources.list_datasets():
    return f"dataset {dataset!r} is not registered in projnce_jax.data"
  if dataset == "fashion_mnist_local" and "dataset.train_subset" not in fields:
    return ("the trainer config has no `dataset.train_subset` field (the 10,000-image "
            "subset)")
  if dataset == "spoken_digits" and not os.path.exists(
      os.path.join(code_root(), "configs", "spoken_digits.py")):
    return "configs/spoken_digits.py does not exist"
  return None


def train_examples(config) -> int:
  """How many examples a cell's config trains on: the dataset's training split less the
  validation hold-out (`splits.holdout_split`'s size rule), or `train_subset`."""
  from projnce_jax.data import sources  # pylint: disable=g-import-not-at-top
  n = sources.get_info(config.dataset.name).num_train
  fraction = float(config.dataset.val_fraction)
  held = 0 if fraction == 0.0 else min(max(1, int(round(fraction * n))), n - 1)
  subset = config.dataset.get("train_subset")
  return int(subset) if subset else n - held


PINS_FILE = "code_pins.json"


def dataset_prefixes(dataset: str) -> Tuple[str, ...]:
  """The cell-key prefixes of one dataset's cells (stage 1, stage 2, rounding reruns)."""
  return (f"stage1/{dataset}/", f"stage2/{dataset}/", f"rounding/devices2/stage2/{dataset}/")


def load_pins(out: str) -> Dict[str, Dict[str, Any]]:
  """OUT/code_pins.json: dataset -> {"sha256", "commit", "why"}, the code version that
  dataset's cells are made by ({} without the file: every cell by this process's code).

  Raises:
    ValueError: the file is not a mapping of datasets to entries with a "sha256".
  """
  path = os.path.join(out, PINS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    pins = json.load(f)
  if not isinstance(pins, dict) or not all(
      isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in pins.values()):
    raise ValueError(f"{path}: expected {{dataset: {{\"sha256\": ..., \"commit\": ...}}}}")
  return pins


def cache_pins(pins: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
  """`load_pins` as CellCache's key prefix -> code hash."""
  return {p: entry["sha256"] for ds, entry in pins.items() for p in dataset_prefixes(ds)}


def _dataset_base(setting: Setting, dataset: str):
  """The trainer config every cell of `dataset` starts from (unlocked copy)."""
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  if dataset == "spoken_digits":
    module = _sweep.load_module(os.path.join(code_root(), "configs", "spoken_digits.py"),
                                "configs_spoken_digits")
    c = train.apply_overrides(module.get_config(None), {
        "model": {"widths": tuple(setting.audio_widths), "dtype": "float32"}})
    return c
  c = train.base_config()
  c.dataset.augment.crop_scale = tuple(setting.crop_scale)
  c = train.apply_overrides(c, {
      "dataset": {"name": SOURCE_DATASET.get(dataset, dataset)},
      "model": {"name": "small_cnn", "widths": tuple(setting.widths),
                "extra_convs": setting.extra_convs},
      "optimizer": {"base_lr": setting.base_lr}})
  if dataset == "fashion_mnist_local":
    c = train.apply_overrides(c, {"dataset": {"train_subset": setting.fashion_subset}})
  return c


def build_config(setting: Setting, dataset: str, overrides: Dict[str, Any], noise: float,
                 seed: int, *, eval_split: Optional[str] = None,
                 num_epochs: Optional[int] = None):
  """The locked trainer config of one cell.

  Args:
    setting: scale and grids.
    dataset: dataset name.
    overrides: the method's (and tuned values') nested overrides.
    noise: symmetric label-noise rate of the training labels.
    seed: run seed (initialisation, data order, label noise).
    eval_split: "validation" or "test" (set only when given; the field must exist).
    num_epochs: training length (default: setting.num_epochs).

  Raises:
    KeyError: an override names a field this trainer config does not have.
  """
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  c = _dataset_base(setting, dataset)
  common = {
      "dataset": {"in_memory": True, "label_noise": float(noise)},
      "batch_size": setting.batch_size,
      "num_epochs": int(num_epochs or setting.num_epochs),
      "num_steps": setting.num_steps, "linear_probe": {"epochs": setting.probe_epochs},
      "log_every": 10, "checkpoint_every": setting.checkpoint_every,
      "report": {"tsne": False}, "progress": False, "seed": int(seed),
  }
  if eval_split is not None:
    common["eval_split"] = eval_split
  c = train.apply_overrides(c, common)
  c = train.apply_overrides(c, overrides)
  c.lock()
  return c


def _nested(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
  out = json.loads(json.dumps(base))
  for k, v in extra.items():
    if isinstance(v, dict):
      out[k] = _nested(out.get(k, {}), v)
    else:
      out[k] = v
  return out


def hp_overrides(method: str, hp: Dict[str, float], base_lr: float) -> Dict[str, Any]:
  """Method overrides plus hyperparameters {"lr_factor", "temperature", "beta", "bandwidth"}."""
  extra: Dict[str, Any] = {}
  if "lr_factor" in hp:
    extra["optimizer"] = {"base_lr": base_lr * hp["lr_factor"]}
  loss = {k: hp[k] for k in ("temperature", "beta", "bandwidth") if k in hp}
  if loss:
    extra["loss"] = loss
  return _nested(METHODS[method], extra)


# Values equal to these (the configs' defaults) are left out of cell names, so that the
# same config reached from two tuning steps is one cached cell.
DEFAULT_HP = {"lr_factor": 1.0, "beta": 1.0, "bandwidth": 1.0}


def hp_name(method: str, hp: Dict[str, float]) -> str:
  """A folder name for a method and its hyperparameters, e.g. "supcon_t0.1"."""
  short = {"lr_factor": "lr", "temperature": "t", "beta": "b", "bandwidth": "bw",
           "num_epochs": "ep"}
  return "_".join([method] + [f"{short[k]}{hp[k]:g}" for k in sorted(hp)
                              if DEFAULT_HP.get(k) != hp[k]])


def dataset_base_lr(setting: Setting, dataset: str) -> float:
  return float(_dataset_base(setting, dataset).optimizer.base_lr)


# ----------------------------------------------------------------------------------------
# Cell records.


def _first(res: Dict[str, Any], *keys: str) -> Any:
  for k in keys:
    if res.get(k) is not None:
      return res[k]
  return None


def cell_record(res: Dict[str, Any]) -> Dict[str, Any]:
  """The fields of a trainer results dict that the sweep keeps (missing ones as None)."""
  return {
      "linear_probe_accuracy": res.get("linear_probe_accuracy"),
      "knn_accuracy": res.get("knn_accuracy"),
      "linear_probe_acc_clean_labels": _first(
          res, "linear_probe_acc_clean_labels", "linear_probe_accuracy_clean_labels"),
      "knn_acc_clean_labels": _first(res, "knn_acc_clean_labels",
                                     "knn_accuracy_clean_labels"),
      "probe_train_labels": res.get("probe_train_labels"),
      # Stage 1 at label noise: the same probe and kNN scored on the clean validation labels.
      "linear_probe_accuracy_clean_eval_labels": res.get(
          "linear_probe_accuracy_clean_eval_labels"),
      "knn_accuracy_clean_eval_labels": res.get("knn_accuracy_clean_eval_labels"),
      "heldout_mi_bound": res.get("heldout_mi_bound"),
      "train_batch_mi_estimate": _first(res, "train_batch_mi_estimate", "mi_lower_bound"),
      "eval_split": res.get("eval_split"),
      "final_loss": res.get("final_loss"), "steps": res.get("steps"),
      "epochs": res.get("epochs"), "train_seconds": res.get("train_seconds"),
      "error": res.get("error"),
  }


# ----------------------------------------------------------------------------------------
# Stage 1: tuning on the validation split.


class Incomplete(Exception):
  """A stage-1 step has cells that are not finished yet (budget spent)."""


def _score(record: Optional[Dict[str, Any]]) -> float:
  if record is None:
    raise Incomplete()
  v = record.get("linear_probe_accuracy") if record.get("status") == "ok" else None
  return float(v) if v is not None and math.isfinite(v) else -math.inf


def extend_grid(grid: Sequence[float], scores: Sequence[float], ratio: float,
                limits: Tuple[float, float], max_size: int) -> Optional[float]:
  """The next value of a geometric grid to try, or None once the best value is interior.

  When the best score is at an end of `grid` (sorted ascending), the grid grows by one value
  beyond that end (times or divided by `ratio`), unless that value leaves `limits` or the
  grid already holds `max_size` values. Ties go to the smaller value (numpy's argmax).
  """
  i = int(np.argmax(scores))
  if 0 < i < len(grid) - 1 or len(grid) >= max_size:
    return None
  value = grid[0] / ratio if i == 0 else grid[-1] * ratio
  value = float(f"{value:.6g}")
  return value if limits[0] <= value <= limits[1] else None


def tune_dataset(cache: _sweep.CellCache, setting: Setting, dataset: str,
                 planned: List[str], methods: Optional[Sequence[str]] = None,
                 noises: Optional[Sequence[float]] = None,
                 inherited: Optional[Dict[str, Any]] = None,
                 length: bool = True) -> Dict[str, Any]:
  """Stage 1 for one dataset; returns its entry of tuned.json ("complete" says if done).

  Coordinate-wise, each method through its hyperparameters in `hp_order` (cross-entropy:
  learning rate; contrastive: temperature, learning rate, then beta for ProjNCE and the
  bandwidth for the kernel projection), each at the values chosen before it. Every
  hyperparameter's grid is extended (`extend_grid`) until the chosen value is interior, or
  the grid reaches `max_grid` values or a limit (recorded). Each method's steps depend only
  on its own cells, so methods are tuned one after the other and `by_noise[noise]` holds a
  method only once all its steps are done: a value there is final. Then the training
  length, with the length methods' chosen values at the highest tuning noise: the grid
  `epoch_choices` is extended by `epoch_step` while its longest length scores best, and the
  shortest length within `length_tolerance` of the best is kept.

  Args:
    cache: the cell cache.
    setting: grids.
    dataset: dataset name.
    planned: the key of every distinct cell this stage needs is appended once (for
      done/planned).
    methods: tune only these (default: all of the dataset's); "complete" then refers to
      them.
    noises: tune only at these of `setting.tune_noises_of(dataset)` (default: all).
    inherited: for a dataset in `setting.hp_source`, the source dataset's entry: its
      chosen values are used as they are and only the length is chosen here.
    length: False skips the length step (the entry then is not complete): for a caller
      that needs only the hyperparameters.

  Returns:
    {"complete", "by_noise": {noise: {method: hp}}, "search": {noise: {method: {hp:
    {"grid", "scores", "chosen", "interior"}}}}, "budget": {noise: {method: cells}},
    "scores", "length": {"grid", "scores", "chosen", "interior"}, "num_epochs"}.
  """
  methods = [m for m in setting.methods_by_dataset[dataset]
             if methods is None or m in methods]
  tune_noises = [n for n in setting.tune_noises_of(dataset)
                 if noises is None or n in noises]
  base_lr = dataset_base_lr(setting, dataset)
  epoch_grid = list(setting.epoch_choices_of(dataset))
  entry: Dict[str, Any] = {"complete": False, "by_noise": {}, "search": {}, "budget": {},
                           "scores": {}}
  source = dict(setting.hp_source).get(dataset)
  if source is not None:
    entry["hyperparameters_from"] = source

  def cell(method, hp, noise, epochs=None):
    if epochs == epoch_grid[0]:
      epochs = None  # the same cell as the tuning steps'
    full_hp = dict(hp, **({"num_epochs": epochs} if epochs else {}))
    key = (f"stage1/{dataset}/noise{noise:g}/{hp_name(method, full_hp)}/"
           f"seed{setting.tune_seed}")
    if key not in planned:  # a reused cell (beta 1 after the temperature step) counts once
      planned.append(key)
    config = build_config(setting, dataset, hp_overrides(method, hp, base_lr), noise,
                          setting.tune_seed, eval_split="validation",
                          num_epochs=epochs or epoch_grid[0])
    rec = cache.get_or_run(key, config, cell_record)
    entry["scores"][key] = None if rec is None else rec.get("linear_probe_accuracy")
    return rec

  def search(method, noise, hp, name, used):
    """Tunes `name` at the other values of `hp`; returns the updated hp."""
    grid = sorted(getattr(setting, GRIDS[name]))
    lo, hi = setting.grid_limits[name]
    while True:
      recs = [cell(method, dict(hp, **{name: v}), noise) for v in grid]
      for v in grid:
        used.add(hp_name(method, dict(hp, **{name: v})))
      scores = [_score(r) for r in recs]  # raises Incomplete before choosing
      nxt = extend_grid(grid, scores, setting.grid_ratio, (lo, hi), setting.max_grid)
      if nxt is None:
        break
      grid = sorted(grid + [nxt])
    i = int(np.argmax(scores))
    record = {"grid": grid, "scores": scores, "chosen": grid[i],
              "interior": 0 < i < len(grid) - 1}
    return dict(hp, **{name: grid[i]}), record

  def tune_method(m, noise):
    hp: Dict[str, float] = {}
    searched: Dict[str, Any] = {}
    used: set = set()
    try:
      for name in hp_order(m):
        hp, searched[name] = search(m, noise, hp, name, used)
    finally:
      entry["search"].setdefault(f"{noise:g}", {})[m] = searched
      entry["budget"].setdefault(f"{noise:g}", {})[m] = len(used)
    return hp

  incomplete = False
  if source is not None:
    src = inherited or {}
    for noise in tune_noises:
      near = (min(src.get("by_noise", {}), key=lambda n: abs(float(n) - noise))
              if src.get("by_noise") else None)
      chosen = {m: dict(src["by_noise"][near][m]) for m in methods
                if near is not None and m in src["by_noise"][near]}
      incomplete |= len(chosen) < len(methods)
      entry["by_noise"][f"{noise:g}"] = chosen
  else:
    for noise in tune_noises:
      chosen: Dict[str, Dict[str, float]] = {}
      for m in methods:
        try:
          chosen[m] = tune_method(m, noise)
        except Incomplete:
          incomplete = True
      entry["by_noise"][f"{noise:g}"] = chosen

  # Training length at the highest tuning noise, with the values chosen there.
  noise = max(setting.tune_noises_of(dataset))
  chosen = entry["by_noise"].get(f"{noise:g}", {})
  length_methods = [m for m in setting.length_methods
                    if m in setting.methods_by_dataset[dataset]]
  lengths: Dict[int, float] = {}
  length_done = False
  if length and noise in tune_noises and all(m in chosen for m in length_methods):
    try:
      while True:
        # Every cell of this step is asked for before a missing one stops it: a second
        # sweep process (another core) trains the cells the first one holds claims beside.
        recs = {e: [cell(m, chosen[m], noise, e) for m in length_methods]
                for e in epoch_grid if e not in lengths}
        for epochs, rs in recs.items():
          lengths[epochs] = float(np.mean([_score(r) for r in rs]))
        scores = [lengths[e] for e in epoch_grid]
        rising = len(epoch_grid) > 1 and int(np.argmax(scores)) == len(epoch_grid) - 1
        if not rising or epoch_grid[-1] + setting.epoch_step > setting.max_epochs:
          break
        epoch_grid.append(epoch_grid[-1] + setting.epoch_step)  # still rising: longer
      length_done = True
    except Incomplete:
      incomplete = True
  else:
    incomplete = True
  entry["length_scores"] = {str(k): v for k, v in sorted(lengths.items())}
  if length_done:
    top = max(lengths.values())
    entry["num_epochs"] = min(e for e, v in lengths.items()
                              if v >= top - setting.length_tolerance)
    scores = [lengths[e] for e in epoch_grid]
    entry["length"] = {"grid": epoch_grid, "scores": scores, "chosen": entry["num_epochs"],
                       "interior": int(np.argmax(scores)) < len(epoch_grid) - 1}
  entry["complete"] = not incomplete
  return entry


# ----------------------------------------------------------------------------------------
# Stage 2: evaluation on the test split.


def stage2_hp(tuned: Dict[str, Any], dataset: str, method: str, noise: float
              ) -> Tuple[Dict[str, float], bool]:
  """The stage-1 values of (dataset, method) at the tuned noise nearest `noise`.

  Returns:
    (hyperparameters, whether they were tuned); defaults ({}, False) when stage 1 has not
    chosen them.
  """
  entry = tuned.get(dataset, {})
  by_noise = entry.get("by_noise", {})
  if not by_noise:
    return {}, False
  near = min(by_noise, key=lambda n: abs(float(n) - noise))
  hp = by_noise[near].get(method)
  return (dict(hp), True) if hp is not None else ({}, False)


def stage2_grid(setting: Setting, datasets: Sequence[str]):
  """(dataset, noise, method, seed) in the order a partial sitting answers most from.

  Per dataset: PRIMARY_NOISE first, then the endpoint's methods (PRIMARY_TARGET and its
  references) seed by seed, so every finished seed adds a paired difference, then the other
  methods seed by seed. The order changes which cells a budget reaches, not their values.
  """
  endpoint = (PRIMARY_TARGET,) + PRIMARY_REFERENCES
  for ds in datasets:
    methods = setting.methods_by_dataset[ds]
    groups = ([m for m in methods if m in endpoint], [m for m in methods if m not in endpoint])
    for noise in sorted(setting.noises, key=lambda n: n != PRIMARY_NOISE):
      for group in groups:
        for seed in setting.seeds:
          for m in group:
            yield ds, noise, m, seed


def _stage2_config(setting: Setting, ds: str, method: str, hp: Dict[str, float],
                   noise: float, seed: int, epochs: int, num_devices: Optional[int] = None):
  config = build_config(setting, ds, hp_overrides(method, hp, dataset_base_lr(setting, ds)),
                        noise, seed, num_epochs=epochs)
  if num_devices is not None:
    config.num_devices = num_devices  # an existing field: allowed on a locked config
  return config


def run_stage2(cache: _sweep.CellCache, setting: Setting, datasets: Sequence[str],
               tuned: Dict[str, Any], planned: List[str], allow_untuned: bool = False,
               noises: Optional[Sequence[float]] = None,
               methods: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """Stage-2 cells (finished ones only) as flat records with their grid coordinates.

  A cell waits until its values are final: its method's stage-1 values at the nearest
  tuning noise and the dataset's length (or the whole of stage 1, for a method stage 1
  does not tune). With `allow_untuned`, a dataset whose stage 1 cannot run (or has not
  started) uses the default hyperparameters. `noises` / `methods` restrict the grid.
  """
  cells = []
  for ds, noise, m, seed in stage2_grid(setting, datasets):
    if (noises is not None and noise not in noises) or (
        methods is not None and m not in methods):
      continue
    hp, was_tuned = stage2_hp(tuned, ds, m, noise)
    entry = tuned.get(ds, {})
    epochs = entry.get("num_epochs") or setting.num_epochs
    key = f"stage2/{ds}/noise{noise:g}/{m}/seed{seed}"
    planned.append(key)
    final = entry.get("complete") or (was_tuned and "num_epochs" in entry)
    if not final and ("by_noise" in entry or not allow_untuned):
      continue  # stage 1 is under way (its values would change this config) or not run
    config = _stage2_config(setting, ds, m, hp, noise, seed, epochs)
    rec = cache.get_or_run(key, config, cell_record)
    if rec is None:
      continue
    cells.append(dict(rec, key=key, dataset=ds, noise=noise, method=m, seed=seed,
                      hyperparameters=hp, tuned=was_tuned,
                      num_epochs=None if setting.num_steps else epochs))
  return cells


def primary_first(cache: _sweep.CellCache, setting: Setting) -> List[Dict[str, Any]]:
  """The cells of the preregistered endpoint before any other: a partial sitting answers it.

  Tunes the primary methods (and the length methods) at the highest tuning noise, chooses
  the length, then trains their stage-2 cells at PRIMARY_NOISE. Every cell is one the full
  passes need too (same keys and configs), so those read them from the cache.
  """
  primary = tuple(dict.fromkeys((PRIMARY_TARGET,) + PRIMARY_REFERENCES
                                + tuple(setting.length_methods)))
  print(f"primary endpoint first: {PRIMARY_DATASET}, noise {PRIMARY_NOISE:g}, "
        f"{list(primary)}", flush=True)
  entry = tune_dataset(cache, setting, PRIMARY_DATASET, [], methods=primary,
                       noises=(max(setting.tune_noises_of(PRIMARY_DATASET)),))
  return run_stage2(cache, setting, [PRIMARY_DATASET], {PRIMARY_DATASET: entry}, [],
                    noises=(PRIMARY_NOISE,), methods=primary)


def full_scale_first(cache: _sweep.CellCache, setting: Setting, tuned: Dict[str, Any],
                     provisional_length: Optional[int] = None) -> List[Dict[str, Any]]:
  """The protocol-2 comparison before the rest: its source's stage-1 values for its methods
  (not the source's length), its own length, then its stage-2 cells at PRIMARY_NOISE, seed
  by seed (same keys and configs as the full passes, which read them from the cache).

  With `provisional_length`, a process that finds the length step under way (its cells
  held by other processes, or not finished) trains the stage-2 cells at that length
  meanwhile. Nothing is reported from them before the length is chosen: the full passes
  read a stage-2 cell only once the length is final, and only if its config (which holds
  the length) matches, so a provisional cell at another length is trained again. The
  returned cells are those of this call (provisional ones included); `main` ignores them.
  """
  ds = FULL_SCALE_DATASET
  source = dict(setting.hp_source).get(ds)
  methods = setting.methods_by_dataset[ds]
  print(f"full-scale comparison next: {ds} (hyperparameters from {source}), noise "
        f"{PRIMARY_NOISE:g}, {list(methods)}", flush=True)
  # The source's values only: its own length is chosen in its stage-1 pass, later.
  src = tune_dataset(cache, setting, source, [], methods=methods,
                     noises=(max(setting.tune_noises_of(source)),), length=False)
  entry = tune_dataset(cache, setting, ds, [], inherited=src)
  if provisional_length is not None and "num_epochs" not in entry:
    print(f"{ds}: length step under way; stage-2 cells at a provisional "
          f"{provisional_length} epochs (trained again if the chosen length differs)",
          flush=True)
    entry = dict(entry, num_epochs=int(provisional_length))
  tuned = dict(tuned, **{ds: entry})
  return run_stage2(cache, setting, [ds], tuned, [], noises=(PRIMARY_NOISE,),
                    methods=methods)


def _rounding_plan(setting: Setting, datasets: Sequence[str], tuned: Dict[str, Any]):
  """(dataset, method, seed, original key, its config, rerun key, its 2-device config) of
  the preregistered contrasts' stage-2 cells at PRIMARY_NOISE (the endpoint methods, and
  FULL_SCALE_OTHER on FULL_SCALE_DATASET), seeds ROUNDING_SEEDS, whose values are tuned and
  whose length is chosen."""
  for ds in datasets:
    epochs = tuned.get(ds, {}).get("num_epochs")
    if epochs is None:
      continue
    methods = (PRIMARY_TARGET,) + PRIMARY_REFERENCES
    if ds == FULL_SCALE_DATASET:
      methods += (FULL_SCALE_OTHER,)
    for seed in ROUNDING_SEEDS:
      for m in methods:
        hp, was_tuned = stage2_hp(tuned, ds, m, PRIMARY_NOISE)
        if not was_tuned:
          continue
        key = f"stage2/{ds}/noise{PRIMARY_NOISE:g}/{m}/seed{seed}"
        yield (ds, m, seed, key,
               _stage2_config(setting, ds, m, hp, PRIMARY_NOISE, seed, epochs),
               f"rounding/devices2/{key}",
               _stage2_config(setting, ds, m, hp, PRIMARY_NOISE, seed, epochs, num_devices=2))


def run_rounding(cache: _sweep.CellCache, setting: Setting, datasets: Sequence[str],
                 tuned: Dict[str, Any]) -> List[Dict[str, Any]]:
  """The `_rounding_plan` cells again on 2 devices (same global batch, synchronised batch
  norm): only the rounding changes. Only cells whose original has finished are rerun."""
  cells = []
  for ds, m, seed, key, config, rerun_key, rerun_config in _rounding_plan(
      setting, datasets, tuned):
    if cache.lookup(key, config) is None:
      continue
    rec = cache.get_or_run(rerun_key, rerun_config, cell_record)
    if rec is not None:
      cells.append(dict(rec, key=rerun_key, dataset=ds, noise=PRIMARY_NOISE, method=m,
                        seed=seed))
  return cells


def rounding_values(cache: _sweep.CellCache, setting: Setting, datasets: Sequence[str],
                    tuned: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
  """"dataset|noise|method" -> {seed: primary metric} of the finished 2-device reruns."""
  out: Dict[str, Dict[str, Optional[float]]] = {}
  for ds, m, seed, _, _, rerun_key, rerun_config in _rounding_plan(setting, datasets, tuned):
    rec = cache.lookup(rerun_key, rerun_config)
    if rec is not None and rec.get("status") == "ok":
      out.setdefault(f"{ds}|{PRIMARY_NOISE:g}|{m}", {})[str(seed)] = rec.get(PRIMARY_METRIC)
  return out


# ----------------------------------------------------------------------------------------
# Statistics and verdicts.

METRICS = (("linear_probe_accuracy", "probe (noisy-label probe)"),
           ("linear_probe_acc_clean_labels", "probe (clean-label probe)"),
           ("knn_accuracy", "kNN (noisy labels)"),
           ("knn_acc_clean_labels", "kNN (clean labels)"),
           ("heldout_mi_bound", "held-out MI bound (nats)"))


def summarize(cells: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """Per "dataset|noise|method": mean/sd over seeds of every metric, and values by seed."""
  groups: Dict[str, List[Dict[str, Any]]] = {}
  for c in cells:
    groups.setdefault(f"{c['dataset']}|{c['noise']:g}|{c['method']}", []).append(c)
  out = {}
  for key, cs in groups.items():
    ok = [c for c in cs if c.get("status") == "ok"]
    out[key] = {
        "dataset": cs[0]["dataset"], "noise": cs[0]["noise"], "method": cs[0]["method"],
        "seeds": [c["seed"] for c in ok], "diverged": [c["seed"] for c in cs if c not in ok],
        "tuned": all(c.get("tuned") for c in cs),
        "by_seed": {m: {str(c["seed"]): c.get(m) for c in ok} for m, _ in METRICS},
        **{m: mean_std([c.get(m) for c in ok]) for m, _ in METRICS},
    }
  return out


def contrast_verdict(diff: Dict[str, Any], adequate: Tuple[bool, str]) -> str:
  """The verdict read from a paired interval (or why the contrast is not tested)."""
  if diff["n"] < 2 or diff["ci_low"] is None:
    return f"not tested: {diff['n']} paired seed(s), an interval needs 2"
  if not adequate[0]:
    return f"not tested at adequate scale ({adequate[1]})"
  if diff["ci_low"] > 0:
    return "better: the 95% interval lies above 0"
  if diff["ci_high"] < 0:
    return "worse: the 95% interval lies below 0"
  return "no difference resolved: the 95% interval contains 0"


def contrasts(summary: Dict[str, Dict[str, Any]], setting: Setting,
              datasets: Sequence[str], epochs_by_dataset: Dict[str, Optional[int]],
              rounding: Optional[Dict[str, Dict[str, Optional[float]]]] = None
              ) -> List[Dict[str, Any]]:
  """Paired differences per dataset, noise and metric, with their unpaired counterparts.

  PRIMARY_TARGET minus each reference on every accuracy metric (at noise 0 the training
  labels are clean, so the clean-label metrics equal the plain ones and are left out), then
  every other ProjNCE projection minus each reference on the primary metric: exploratory,
  except FULL_SCALE_OTHER on FULL_SCALE_DATASET (preregistered in protocol 2).

  Args:
    rounding: "dataset|noise|method" -> {seed: primary metric} of stage-2 cells rerun on
      2 devices; where both methods of a contrast have reruns, the rounding variance of a
      seed's difference widens the paired interval (`_sweep.widened_interval`).
  """
  rounding = rounding or {}
  out = []
  for ds in datasets:
    targets = [PRIMARY_TARGET] + [m for m in setting.methods_by_dataset[ds]
                                  if m.startswith("projnce_") and m != PRIMARY_TARGET]
    min_epochs = FULL_SCALE_MIN_EPOCHS if ds == FULL_SCALE_DATASET else MIN_EPOCHS
    for noise, target in [(n, t) for t in targets for n in setting.noises]:
      t = summary.get(f"{ds}|{noise:g}|{target}")
      exploratory = target != PRIMARY_TARGET and not (
          ds == FULL_SCALE_DATASET and target == FULL_SCALE_OTHER)
      for ref in PRIMARY_REFERENCES:
        r = summary.get(f"{ds}|{noise:g}|{ref}")
        if t is None or r is None:
          continue
        for metric, _ in METRICS[:4]:
          if (target != PRIMARY_TARGET and metric != PRIMARY_METRIC) or (
              noise == 0 and metric.endswith("_clean_labels")):
            continue
          d = _sweep.paired_difference(t["by_seed"][metric], r["by_seed"][metric])
          reasons = []
          if d["n"] < PREREGISTERED_SEEDS:
            reasons.append(f"{d['n']} of {PREREGISTERED_SEEDS} paired seeds")
          epochs = epochs_by_dataset.get(ds)
          if setting.num_steps is not None or (epochs or 0) < min_epochs:
            reasons.append(f"fewer than {min_epochs} epochs")
          if not (t["tuned"] and r["tuned"]):
            reasons.append("hyperparameters not tuned on validation")
          adequate = (not reasons, "; ".join(reasons))
          primary = (ds == PRIMARY_DATASET and noise == PRIMARY_NOISE
                     and metric == PRIMARY_METRIC and target == PRIMARY_TARGET)
          full_scale = (ds == FULL_SCALE_DATASET and noise == PRIMARY_NOISE
                        and metric == PRIMARY_METRIC and not exploratory)
          u = _sweep.unpaired_difference(t["by_seed"][metric], r["by_seed"][metric])
          row = dict(dataset=ds, noise=noise, target=target, reference=ref,
                     metric=metric, primary=primary, full_scale_primary=full_scale,
                     exploratory=exploratory, verdict=contrast_verdict(d, adequate),
                     unpaired_ci_low=u["ci_low"], unpaired_ci_high=u["ci_high"],
                     unpaired_verdict=contrast_verdict(
                         dict(n=min(u["n_a"], u["n_b"]), ci_low=u["ci_low"],
                              ci_high=u["ci_high"]), adequate), **d)
          rt = rounding.get(f"{ds}|{noise:g}|{target}")
          rr = rounding.get(f"{ds}|{noise:g}|{ref}")
          if metric == PRIMARY_METRIC and rt and rr:
            rerun = _sweep.paired_difference(rt, rr)
            rv = _sweep.rounding_variance(dict(zip(d["seeds"], d["diffs"])),
                                          dict(zip(rerun["seeds"], rerun["diffs"])))
            lo, hi = _sweep.widened_interval(d, rv["var"])
            row.update(rounding_seeds=rv["seeds"], rounding_deltas=rv["deltas"],
                       rounding_var=rv["var"], widened_ci_low=lo, widened_ci_high=hi,
                       widened_verdict=contrast_verdict(
                           dict(n=d["n"], ci_low=lo, ci_high=hi), adequate))
          out.append(row)
  return out


def compare(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
  """Unpaired: difference of means, the 2 * pooled-sd threshold and whether it is beyond it.

  Kept for experiments whose verdict rule is stated this way (experiments/beta_geometry).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  a = [x for x in a if x is not None]
  b = [x for x in b if x is not None]
  if len(a) < 2 or len(b) < 2:
    return {"diff": None, "threshold": None, "beyond_spread": None, "welch_p": None}
  diff = float(np.mean(a) - np.mean(b))
  pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
  p = None
  if not (np.std(a) == 0 and np.std(b) == 0):
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
  return {"diff": diff, "threshold": SPREAD * pooled,
          "beyond_spread": bool(abs(diff) > SPREAD * pooled), "welch_p": p}


# ----------------------------------------------------------------------------------------
# Outputs.


def _fmt(stat: Optional[Dict[str, Any]], scale: float = 100.0, digits: int = 2) -> str:
  if not stat or stat.get("mean") is None:
    return "-"
  sd = f" +- {scale * stat['std']:.{digits}f}" if stat.get("std") is not None else ""
  return f"{scale * stat['mean']:.{digits}f}{sd}"


def _signed(x: Optional[float]) -> str:
  return "-" if x is None else f"{100 * x:+.2f}"


def accuracy_rows(result: Dict[str, Any], dataset: str) -> List[Dict[str, str]]:
  """One row per (method, noise) of `dataset`: every metric as "mean +- sd" strings."""
  rows = []
  for m in result["methods_by_dataset"].get(dataset, ()):
    for noise in result["setting"]["noises"]:
      s = result["summary"].get(f"{dataset}|{noise:g}|{m}")
      row = {"method": m, "noise": f"{noise:g}",
             "seeds": "0" if s is None else str(len(s["seeds"]))}
      for metric, _ in METRICS:
        scale, digits = (1.0, 3) if metric == "heldout_mi_bound" else (100.0, 2)
        row[metric] = _fmt(None if s is None else s[metric], scale, digits)
      row["tuned"] = "-" if s is None else ("yes" if s["tuned"] else "no (defaults)")
      if s is not None and s["diverged"]:
        row["seeds"] += f" ({len(s['diverged'])} diverged)"
      rows.append(row)
  return rows


TABLE_COLUMNS = (("method", "method", "{}"), ("noise", "noise", "{}"),
                 ("seeds", "seeds", "{}"),
                 ("linear_probe_accuracy", "probe, noisy-label probe (%)", "{}"),
                 ("linear_probe_acc_clean_labels", "probe, clean-label probe (%)", "{}"),
                 ("knn_accuracy", "kNN, noisy (%)", "{}"),
                 ("knn_acc_clean_labels", "kNN, clean (%)", "{}"),
                 ("heldout_mi_bound", "held-out MI bound (nats)", "{}"),
                 ("tuned", "tuned", "{}"))
CONTRAST_COLUMNS = (("dataset", "dataset", "{}"), ("noise", "noise", "{}"),
                    ("contrast", "contrast", "{}"), ("metric", "metric", "{}"),
                    ("n", "paired seeds", "{}"), ("mean", "mean diff (points)", "{}"),
                    ("ci", "paired 95% CI (points)", "{}"),
                    ("unpaired", "unpaired 95% CI", "{}"),
                    ("widened", "paired, + rounding var.", "{}"),
                    ("verdict", "verdict (paired)", "{}"))


def _interval(lo: Optional[float], hi: Optional[float]) -> str:
  return "-" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"


def contrast_rows(result: Dict[str, Any], only_primary_metric: bool = False,
                  exploratory: bool = True) -> List[Dict[str, str]]:
  rows = []
  for c in result["contrasts"]:
    if (only_primary_metric and c["metric"] != PRIMARY_METRIC) or (
        not exploratory and c.get("exploratory")):
      continue
    rows.append({"dataset": c["dataset"], "noise": f"{c['noise']:g}",
                 "unpaired": _interval(c.get("unpaired_ci_low"), c.get("unpaired_ci_high")),
                 "widened": _interval(c.get("widened_ci_low"), c.get("widened_ci_high")),
                 "contrast": f"{c['target']} - {c['reference']}"
                 + (" **(primary)**" if c["primary"] else "")
                 + (" **(full-scale primary)**" if c.get("full_scale_primary") else "")
                 + (" (exploratory)" if c.get("exploratory") else ""),
                 "metric": c["metric"], "n": str(c["n"]), "mean": _signed(c["mean"]),
                 "ci": _interval(c["ci_low"], c["ci_high"]), "verdict": c["verdict"]})
  return rows


def readme_tables(result: Dict[str, Any]) -> str:
  """The README "Results" section of this experiment, rendered from results.json."""
  from projnce_jax import report  # pylint: disable=g-import-not-at-top
  prog = result["progress"]
  lines = [f"**Cross-entropy vs SupCon vs ProjNCE, tuned on validation, paired seeds** "
           f"(`{result['command']}`; {result['machine']['cpu_count']}-core "
           f"{result['machine']['machine']}, load average {result['machine']['load_average'][0]:.1f} "
           f"at the start, "
           f"{result['date']}; stage 2: {prog['stage2_done']} of {prog['stage2_planned']} "
           f"cells done; mean +- sd over seeds, test accuracy %):", ""]
  for ds in result["datasets"]:
    skip = result["skipped"].get(ds)
    if skip:
      lines += [f"*{ds}*: not run ({skip}).", ""]
      continue
    length = (f"{result['setting']['num_steps']} steps" if result["setting"]["num_steps"]
              else f"{result['epochs_by_dataset'].get(ds) or '-'} epochs")
    lines += [f"*{ds}* ({length}):", "",
              report.results_table(accuracy_rows(result, ds), TABLE_COLUMNS), ""]
  rows = contrast_rows(result, only_primary_metric=True, exploratory=False)
  if rows:
    lines += ["Paired contrasts (probe trained on the noisy labels):", "",
              report.results_table(rows, CONTRAST_COLUMNS), ""]
  return "\n".join(lines)


def plot_results(result: Dict[str, Any], path: str) -> None:
  """Per dataset: probe accuracy per method and noise (sd bars); then the primary contrasts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  datasets = [d for d in result["datasets"] if d not in result["skipped"]]
  fig, axes = plt.subplots(1, len(datasets) + 1, figsize=(5.5 * (len(datasets) + 1), 4),
                           squeeze=False)
  noises = result["setting"]["noises"]
  width = 0.8 / len(noises)
  for ax, ds in zip(axes[0], datasets):
    methods = result["methods_by_dataset"][ds]
    x = np.arange(len(methods))
    for i, n in enumerate(noises):
      stats = [result["summary"].get(f"{ds}|{n:g}|{m}", {}).get(PRIMARY_METRIC) or {}
               for m in methods]
      mean = [100 * s["mean"] if s.get("mean") is not None else np.nan for s in stats]
      err = [100 * (s.get("std") or 0.0) for s in stats]
      ax.bar(x + (i - (len(noises) - 1) / 2) * width, mean, width, yerr=err, capsize=3,
             label=f"label noise {n:g}")
    ax.set_xticks(x)
    ax.set_xticklabels([m.replace("projnce_", "pj ") for m in methods], rotation=30)
    ax.set_ylabel("linear-probe test accuracy (%)")
    ax.set_title(ds)
    ax.legend(fontsize=8)
  ax = axes[0][-1]
  cs = [c for c in result["contrasts"] if c["metric"] == PRIMARY_METRIC
        and c["target"] == PRIMARY_TARGET and c["mean"] is not None]
  for i, c in enumerate(cs):
    lo = c["ci_low"] if c["ci_low"] is not None else c["mean"]
    hi = c["ci_high"] if c["ci_high"] is not None else c["mean"]
    ax.errorbar(100 * c["mean"], i, xerr=[[100 * (c["mean"] - lo)], [100 * (hi - c["mean"])]],
                fmt="o", color="C3" if c["primary"] else "C0", capsize=3)
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_yticks(range(len(cs)))
  ax.set_yticklabels([f"{c['dataset']} n={c['noise']:g} - {c['reference']}" for c in cs],
                     fontsize=7)
  ax.set_xlabel(f"{PRIMARY_TARGET} minus reference (points, 95% CI)")
  ax.set_title("paired contrasts (red: primary)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


SEARCH_COLUMNS = (("dataset", "dataset", "{}"), ("noise", "noise", "{}"),
                  ("method", "method", "{}"), ("hp", "hyperparameter", "{}"),
                  ("grid", "grid: score", "{}"), ("chosen", "chosen", "{}"),
                  ("budget", "cells (method)", "{}"))


def search_table_rows(tuned: Dict[str, Any]) -> List[Dict[str, str]]:
  """One row per (dataset, noise, method, hyperparameter) searched in stage 1."""
  rows = []
  for ds, entry in tuned.items():
    for noise, by_method in entry.get("search", {}).items():
      for m, by_hp in by_method.items():
        for name, rec in by_hp.items():
          rows.append({
              "dataset": ds, "noise": noise, "method": m, "hp": name,
              "grid": ", ".join(f"{v:g}: {100 * sc:.1f}" if math.isfinite(sc) else f"{v:g}: -"
                                for v, sc in zip(rec["grid"], rec["scores"])),
              "chosen": f"{rec['chosen']:g}" + ("" if rec["interior"] else " (edge)"),
              "budget": str(entry.get("budget", {}).get(noise, {}).get(m, "-"))})
    length = entry.get("length")
    if length:
      rows.append({"dataset": ds, "noise": "-", "method": "length methods", "hp": "epochs",
                   "grid": ", ".join(f"{e}: {100 * sc:.1f}"
                                     for e, sc in zip(length["grid"], length["scores"])),
                   "chosen": f"{length['chosen']}" + ("" if length["interior"] else " (edge)"),
                   "budget": "-"})
  return rows


def write_markdown(path: str, result: Optional[Dict[str, Any]], *, command: str,
                   machine: Dict[str, Any], date: str) -> None:
  """results.md: preregistration, command and machine, progress, tables and verdicts.

  With `result=None` (before the sweep) only the preregistration and the header.
  """
  lines = ["# Cross-entropy vs SupCon vs ProjNCE under label noise (tuned, paired)", "",
           PREREGISTRATION, "## Run", "", f"Command: `{command}`  ",
           f"Machine: {machine['machine']} ({machine['node']}), {machine['cpu_count']} CPU "
           f"cores, load average {machine['load_average']} at the start; jax "
           f"{machine['jax']}, devices {machine['devices']}  ", f"Date: {date}", ""]
  if result is None:
    lines += ["No cell has finished yet: the sweep starts after this file is written.", ""]
  else:
    prog = result["progress"]
    s = result["setting"]
    lines += [
        f"Progress: stage 1 {prog['stage1_done']} of {prog['stage1_planned']} planned cells "
        f"done, stage 2 {prog['stage2_done']} of {prog['stage2_planned']} done "
        f"({result['cells_run_now']} trained by this invocation, the rest read from "
        f"cells/; wall time {result['wall_seconds']:.0f} s; mean trained-cell time "
        + (f"{result['mean_cell_seconds']:.1f} s" if result["mean_cell_seconds"] else "-")
        + "). The plan counts only the steps reachable so far: stage-1 steps after an "
        "unfinished one are planned once it is done. A stage-2 cell waits until its "
        "method's stage-1 values and the dataset's length are final (unless "
        "--allow_untuned). Each cell's record in cells/ keeps the load average at its "
        "start and its wall time.", ""]
    code = result.get("code") or {}
    lines += [f"Code: this invocation ran commit {code.get('commit') or '-'} (source hash "
              f"{code.get('sha256', '-')})."]
    for ds, pin in sorted((result.get("code_pins") or {}).items()):
      lines.append(f"- {ds}: its cells are made by source hash {pin['sha256']} (commit "
                   f"{pin.get('commit') or '-'}; {PINS_FILE})"
                   + (f": {pin['why']}" if pin.get("why") else "") + ".")
    lines.append("")
    for ds, why in result["skipped"].items():
      lines.append(f"- {ds}: skipped ({why}).")
    for ds in result["waiting_for_stage1"]:
      lines.append(f"- {ds}: stage 1 is not complete; stage-2 cells of the methods it has "
                   "not tuned yet wait (or --allow_untuned).")
    if result["skipped"] or result["waiting_for_stage1"]:
      lines.append("")
    lines += [
        f"Set-up ({s['name']}): image datasets small_cnn {tuple(s['widths'])}, extra_convs "
        f"{s['extra_convs']}; batch {s['batch_size']} x 2 views; "
        + (f"{s['num_steps']} steps" if s["num_steps"] else "epochs chosen in stage 1")
        + f"; SGD base_lr {s['base_lr']} per 256 with warm-up + cosine (spoken_digits: its "
        "config's optimizer); symmetric label noise on the training labels (seed = run "
        f"seed); stage-2 seeds {tuple(s['seeds'])}; linear probe {s['probe_epochs']} epochs "
        "(final epoch), cosine kNN k = 200, frozen encoder features. Missing keys (the "
        "trainer does not provide them yet) show as \"-\". Training examples: "
        + ", ".join(f"{ds} {n:,}" for ds, n in result.get("train_examples", {}).items())
        + ".", "",
        "## Stage 1: chosen on the validation split", "",
        "Tuned at label noise " + "; ".join(
            f"{ds} " + ", ".join(f"{n:g}" for n in Setting(**s).tune_noises_of(ds))
            for ds in result["datasets"])
        + ". A stage-2 noise level uses the values tuned at the nearest one.", ""]
    for ds, why in result["stage1_skipped"].items():
      lines.append(f"- {ds}: stage 1 not run ({why}).")
    if not result["tuned"]:
      lines += ["", "No stage-1 values exist: stage 2 uses the default hyperparameters "
                "(marked \"no (defaults)\").", ""]
    for ds, entry in result["tuned"].items():
      lines.append(f"- {ds}: {'complete' if entry.get('complete') else 'incomplete'}; "
                   f"epochs {entry.get('num_epochs', '-')} (validation probe accuracy by "
                   f"length: {entry.get('length_scores', {})}); chosen: "
                   f"{json.dumps(entry.get('by_noise', {}))}"
                   + (f"; hyperparameters from {entry['hyperparameters_from']}"
                      if entry.get("hyperparameters_from") else ""))
    search_rows = search_table_rows(result["tuned"])
    if search_rows:
      from projnce_jax import report  # pylint: disable=g-import-not-at-top
      lines += ["", "Grids searched (validation probe accuracy %; a grid grows past the "
                "end holding its best value until that value is interior; \"edge\" marks "
                "a choice at a limit), and the stage-1 cells per method (budget):", "",
                report.results_table(search_rows, SEARCH_COLUMNS)]
    lines += ["", "## Stage 2: test split", ""]
    for ds in result["datasets"]:
      if ds in result["skipped"]:
        continue
      from projnce_jax import report  # pylint: disable=g-import-not-at-top
      lines += [f"### {ds}", "", report.results_table(accuracy_rows(result, ds),
                                                      TABLE_COLUMNS), ""]
    lines += ["![results](results.png)", "", "## Verdicts (paired 95% t-intervals)", ""]
    prim = [c for c in result["contrasts"] if c["primary"]]
    if not prim:
      lines.append("Primary endpoint: not tested (no paired cells at "
                   f"{PRIMARY_DATASET}, noise {PRIMARY_NOISE:g}).")
    for c in prim + [c for c in result["contrasts"] if c.get("full_scale_primary")]:
      label = "Primary" if c["primary"] else f"Full-scale primary ({c['dataset']})"
      extra = f"; unpaired: {c['unpaired_verdict']}"
      if c.get("widened_verdict"):
        extra += (f"; widened by the rounding variance ({len(c['rounding_seeds'])} seeds "
                  f"rerun on 2 devices): {c['widened_verdict']}")
      lines.append(f"- **{label}**: {c['target']} - {c['reference']}: {c['verdict']} "
                   f"(n = {c['n']}, mean {_signed(c['mean'])} points{extra}).")
    from projnce_jax import report  # pylint: disable=g-import-not-at-top
    lines += ["", report.results_table(contrast_rows(result), CONTRAST_COLUMNS), "",
              "At noise 0 the training labels are clean, so the clean-label probe and kNN "
              "are the plain ones (\"-\" in their columns, no rows here). The exploratory "
              "rows (the other projections, probe accuracy only) were not preregistered: "
              "among that many 95% intervals about one in 20 excludes 0 by chance.", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# The sweep.


def _previous_preregistration(out: str) -> Optional[str]:
  """The preregistration stored by an earlier invocation of this version, if any."""
  try:
    with open(os.path.join(out, "results.json")) as f:
      return json.load(f).get("preregistration")
  except (OSError, ValueError, AttributeError):
    return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--stage", default="all", choices=("1", "2", "all"))
  p.add_argument("--datasets", default=None,
                 help="comma-separated subset of mnist5k, fashion_mnist_local, spoken_digits")
  p.add_argument("--max_cells", type=int, default=None, help="train at most N new cells")
  p.add_argument("--time_budget_s", type=float, default=None,
                 help="start no new cell after this many seconds")
  p.add_argument("--smallest", action="store_true",
                 help="a tiny setting (what the tests run)")
  p.add_argument("--allow_untuned", action="store_true",
                 help="run stage 2 with default hyperparameters where stage 1 is not done "
                 "(its verdicts then say not tested at adequate scale)")
  p.add_argument("--rounding", action="store_true",
                 help="rerun the preregistered contrasts' finished stage-2 cells at the primary "
                 f"noise, seeds {ROUNDING_SEEDS}, on 2 devices with the same global batch "
                 "(a change of rounding only); the normal invocation reads them")
  p.add_argument("--provisional_length", type=int, default=None, metavar="EPOCHS",
                 help=f"while {FULL_SCALE_DATASET}'s length step is under way (held by "
                 "another process), train its stage-2 cells at this length meanwhile; they "
                 "are read only if the chosen length equals it")
  p.add_argument("--readme", action="store_true",
                 help="print the README tables from OUT/results.json and exit")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  if args.provisional_length is not None and args.provisional_length < 1:
    raise ValueError(f"--provisional_length must be a positive number of epochs, got "
                     f"{args.provisional_length}")
  if args.readme:
    with open(os.path.join(args.out, "results.json")) as f:
      text = readme_tables(json.load(f))
    print(text)
    return {"readme": text}
  if args.rounding:
    # Before JAX starts: two CPU devices for the 2-device reruns.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=2").strip()
  setting = SMALLEST if args.smallest else FULL
  datasets = list(setting.datasets) if args.datasets is None else [
      d.strip() for d in args.datasets.split(",") if d.strip()]
  unknown = [d for d in datasets if d not in setting.methods_by_dataset]
  if unknown:
    raise ValueError(f"--datasets: {unknown} not in this setting's datasets "
                     f"{list(setting.datasets)}")
  stages = (1, 2) if args.stage == "all" else (int(args.stage),)
  os.makedirs(args.out, exist_ok=True)
  enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = machine_info()
  command = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1]] + sys.argv)
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  md_path = os.path.join(args.out, "results.md")
  if _previous_preregistration(args.out) != PREREGISTRATION:
    # Before any cell: the endpoint is on disk ahead of the results (a resumed sweep keeps
    # its partial tables until this invocation ends).
    write_markdown(md_path, None, command=command, machine=machine, date=date)
  t0 = time.perf_counter()
  code = _sweep.code_version(code_root())
  pins = load_pins(args.out)
  cache = _sweep.CellCache(args.out, _sweep.Budget(args.max_cells, args.time_budget_s),
                           code=code, env=_sweep.environment(), pins=cache_pins(pins))
  other = {ds: e for ds, e in pins.items() if e["sha256"] != code["sha256"]}
  if other:
    print("pinned to other code (read, not trained, by this process): "
          + ", ".join(f"{ds} ({e.get('commit') or e['sha256']})" for ds, e in other.items()),
          flush=True)

  tuned_path = os.path.join(args.out, "tuned.json")
  tuned: Dict[str, Any] = {}
  if os.path.exists(tuned_path):
    with open(tuned_path) as f:
      tuned = json.load(f)
  skipped: Dict[str, str] = {}
  planned1: List[str] = []
  if args.rounding:
    cells = run_rounding(cache, setting, datasets, tuned)
    print(f"rounding reruns: {len(cells)} finished cells "
          f"({cache.budget.cells_run} trained now)", flush=True)
    return {"rounding_cells": cells}
  runnable = [d for d in (PRIMARY_DATASET, FULL_SCALE_DATASET) if d in datasets
              and dataset_skip_reason(d, 1) is None and dataset_skip_reason(d, 2) is None]
  if stages == (1, 2) and PRIMARY_DATASET in runnable:
    primary_first(cache, setting)
  if (stages == (1, 2) and FULL_SCALE_DATASET in runnable
      and FULL_SCALE_DATASET in setting.methods_by_dataset):
    full_scale_first(cache, setting, tuned, provisional_length=args.provisional_length)
  for ds in datasets:
    why = dataset_skip_reason(ds, 1)
    if 1 in stages and why is None:
      print(f"stage 1: {ds}", flush=True)
      source = dict(setting.hp_source).get(ds)
      tuned[ds] = tune_dataset(cache, setting, ds, planned1,
                               inherited=tuned.get(source) if source else None)
    elif 1 in stages:
      skipped_1 = f"stage 1 skipped: {why}"
      print(f"{ds}: {skipped_1}", flush=True)
      tuned.setdefault(ds, {})["stage1_skipped"] = why
  with open(tuned_path + ".tmp", "w") as f:
    json.dump(tuned, f, indent=1)
  os.replace(tuned_path + ".tmp", tuned_path)

  planned2: List[str] = []
  cells: List[Dict[str, Any]] = []
  run2 = []
  for ds in datasets:
    why = dataset_skip_reason(ds, 2)
    if why is not None:
      skipped[ds] = why
    else:
      run2.append(ds)
  allow_untuned = args.allow_untuned or args.smallest
  waiting = [ds for ds in run2 if not tuned.get(ds, {}).get("complete") and (
      "by_noise" in tuned.get(ds, {}) or not allow_untuned)]
  if 2 in stages:
    print(f"stage 2: {run2}" + (f"; waiting for a complete stage 1: {waiting}"
                                 if waiting else ""), flush=True)
    cells = run_stage2(cache, setting, run2, tuned, planned2,
                       allow_untuned=allow_untuned)
  else:
    planned2 = [f"stage2/{ds}/noise{n:g}/{m}/seed{s}"
                for ds, n, m, s in stage2_grid(setting, run2)]
  epochs_by_dataset = {ds: None if setting.num_steps else
                       (tuned.get(ds, {}).get("num_epochs") or setting.num_epochs)
                       for ds in datasets}
  summary = summarize(cells)
  done1 = sum(os.path.exists(cache.cell_path(k)) for k in planned1)
  walls = [c["wall_seconds"] for c in cells if c.get("wall_seconds") and not c["reused"]]
  rounding = rounding_values(cache, setting, datasets, tuned)
  result = {
      "command": command, "date": date, "machine": machine,
      "code": code, "environment": _sweep.environment(), "code_pins": pins,
      "cells_passed_over_pinned": cache.passed_over,
      "rounding": rounding,
      "load_average_at_end": _sweep.load_average(),
      "setting": dataclasses.asdict(setting),
      "methods_by_dataset": {d: list(setting.methods_by_dataset[d]) for d in datasets},
      "datasets": datasets, "skipped": skipped, "preregistration": PREREGISTRATION,
      "waiting_for_stage1": waiting if 2 in stages else [],
      "tuned": {d: tuned[d] for d in datasets if d in tuned and "by_noise" in tuned[d]},
      "stage1_skipped": {d: tuned[d]["stage1_skipped"] for d in datasets
                         if "stage1_skipped" in tuned.get(d, {})},
      "epochs_by_dataset": epochs_by_dataset,
      "train_examples": {ds: train_examples(_stage2_config(setting, ds, "supcon", {}, 0.0, 0,
                                                           setting.num_epochs))
                         for ds in run2},
      "progress": {"stage1_done": done1, "stage1_planned": len(planned1),
                   "stage2_done": len(cells), "stage2_planned": len(planned2)},
      "wall_seconds": time.perf_counter() - t0, "cells_run_now": cache.budget.cells_run,
      "cells_reused": cache.reused,
      "mean_cell_seconds": float(np.mean(walls)) if walls else None,
      "cells": cells, "summary": summary,
      "contrasts": contrasts(summary, setting, datasets, epochs_by_dataset, rounding),
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot_results(result, os.path.join(args.out, "results.png"))
  write_markdown(md_path, result, command=command, machine=machine, date=date)
  print(f"wrote {md_path}: stage 1 {done1}/{len(planned1)}, stage 2 "
        f"{len(cells)}/{len(planned2)} cells ({result['wall_seconds']:.0f} s)", flush=True)
  return result


if __name__ == "__main__":
  main()

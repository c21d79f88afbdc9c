"""Start-up checks: the config and the workdir, before any data loading or compilation.

`validate_config(config)` rejects, naming the offending key and value: fields that are not
in `base_config()` (a typo in a config file), wrong types (`batch_size="64"`), values out
of range (`loss.temperature <= 0`, `dataset.label_noise` outside [0, 1)), unknown names
(method, projection, impl, optimizer, model, dataset, dtype) and impossible combinations
(`orthogonal` with `model.proj_dim` < the dataset's classes, `batch_size` not divisible by
the device count, `loss.impl="ring"` on one device). `check_workdir(workdir)` makes sure the
workdir can be written and has free space. `check_rerun(config, workdir)` compares a
rerun's config with the one kept beside the workdir's checkpoints: fields in
`RESUME_SAFE_KEYS` may change (logged), any other difference is refused before anything
is touched.

Why hand-written: ml_collections' `lock()` catches unknown keys and type changes only; the
ranges, names and cross-field rules above are this trainer's own, and a schema library
(pydantic, jsonschema) would need the whole config restated beside `base_config()`.

Example:
  >>> validate_config(config)          # ValueError / TypeError / KeyError on a bad field
  >>> check_workdir(workdir, min_free_mb=64)
  >>> changes = check_rerun(config, workdir)  # ConfigError listing the changed fields
"""
import difflib
import json
import math
import numbers
import os
import shutil
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from absl import logging
import jax
import ml_collections

from projnce_jax import data as pjd
from projnce_jax import losses
from projnce_jax.data.noise import NOISE_KINDS
from projnce_jax.models.factory import ENCODERS
from projnce_jax.train.config import apply_overrides
from projnce_jax.train.config import base_config
from projnce_jax.train.step import METHODS

OPTIMIZERS = ("sgd", "lars", "adamw")
DTYPES = ("float32", "bfloat16", "float16", "auto")
FREE_FORM = ("dataset.augment",)   # keyword arguments of the augmentation: any keys
# Fields a rerun may change on a workdir with checkpoints: the length of training, the
# logging and checkpoint cadence, the progress display and the start-up disk check.
# Any other change (shapes, data, objective, optimiser, seeds, evaluation) is refused.
RESUME_SAFE_KEYS = ("num_epochs", "num_steps", "log_every", "checkpoint_every",
                    "keep_checkpoints", "async_checkpoints", "progress", "min_free_disk_mb")
_ABSENT = "<absent>"


class ConfigError(ValueError):
  """A config field has a wrong type, an out-of-range value or clashes with another."""


class ConfigKeyError(ConfigError, KeyError):
  """An unknown config field (also a KeyError)."""

  def __str__(self) -> str:   # KeyError would quote the message
    return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
  """A config field of the wrong type (also a TypeError)."""


class WorkdirError(OSError):
  """The workdir cannot be used: not writable, or too little free disk."""


def nearest_keys(key: str, choices) -> str:
  """"; did you mean 'x'?" for the closest names (difflib), or the valid names."""
  choices = sorted(str(c) for c in choices)
  close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
  if close:
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
  return f"; valid: {', '.join(choices)}"


# -- field checks ------------------------------------------------------------------------


def _get(config, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(config, key: str, *, low: int, optional: bool = False) -> None:
  v = _get(config, key)
  if v is None and optional:
    return
  if not _is_int(v):
    raise ConfigTypeError(f"config field {key!r} must be an int, got {type(v).__name__} {v!r}")
  if v < low:
    raise ConfigError(f"config field {key!r} must be >= {low}, got {v}")


def _real(config, key: str, *, check: Callable[[float], bool], expect: str,
          optional: bool = False) -> None:
  v = _get(config, key)
  if v is None and optional:
    return
  if not _is_real(v):
    raise ConfigTypeError(f"config field {key!r} must be a number, got {type(v).__name__} {v!r}")
  if not math.isfinite(v) or not check(v):
    raise ConfigError(f"config field {key!r} must be {expect}, got {v}")


def _choice(config, key: str, choices: Iterable[str]) -> None:
  v = _get(config, key)
  choices = tuple(choices)
  if v not in choices:
    raise ConfigError(f"config field {key!r} is {v!r}; expected one of {list(choices)}")


def _bool(config, key: str) -> None:
  v = _get(config, key)
  if not isinstance(v, bool):
    raise ConfigTypeError(f"config field {key!r} must be a bool, got {type(v).__name__} {v!r}")


def _unknown_keys(config, schema, prefix: str = "") -> None:
  for key in config.keys():
    path = prefix + key
    if key not in schema:
      raise ConfigKeyError(f"unknown config field {path!r} (not in base_config())"
                           + nearest_keys(key, schema.keys()))
    if path in FREE_FORM:
      continue
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
        raise ConfigTypeError(f"config field {path!r} must be a block of fields, got "
                        f"{type(config[key]).__name__}")
      _unknown_keys(config[key], schema[key], path + ".")


def _check_fields(config) -> None:
  positive = lambda v: v > 0
  _choice(config, "method", METHODS)
  _real(config, "loss.temperature", check=positive, expect="> 0")
  _choice(config, "loss.positive", losses.PROJECTIONS)
  _choice(config, "loss.negative", losses.NEGATIVES)
  _real(config, "loss.beta", check=lambda v: True, expect="finite")
  _choice(config, "loss.impl", losses.IMPLS)
  _int(config, "loss.block_size", low=1, optional=True)
  _real(config, "loss.log_ratio_clip", check=lambda v: True, expect="finite", optional=True)
  _real(config, "loss.bandwidth", check=positive, expect="> 0")
  _int(config, "loss.mlp_hidden", low=1)
  _choice(config, "loss.mlp_init", losses.MLP_INITS)
  _real(config, "loss.mlp_lr", check=positive, expect="> 0", optional=True)
  _real(config, "loss.dispersion", check=lambda v: v >= 0, expect=">= 0")
  _bool(config, "heldout_mi.enabled")
  _int(config, "heldout_mi.max_examples", low=2)
  _int(config, "heldout_mi.batch_size", low=2)

  _choice(config, "dataset.name", pjd.list_datasets())
  _int(config, "dataset.num_views", low=1)
  _real(config, "dataset.label_noise", check=lambda v: 0 <= v < 1, expect="in [0, 1)")
  _choice(config, "dataset.label_noise_kind", NOISE_KINDS)
  _bool(config, "dataset.in_memory")

  _choice(config, "model.name", ENCODERS)
  _int(config, "model.proj_dim", low=1)
  _int(config, "model.proj_hidden_dim", low=1, optional=True)
  _int(config, "model.width", low=1, optional=True)
  _int(config, "model.extra_convs", low=0)
  _choice(config, "model.dtype", DTYPES)
  widths = config.model.widths
  if (not isinstance(widths, (tuple, list)) or not widths
      or not all(_is_int(w) and w > 0 for w in widths)):
    raise ConfigError(f"config field 'model.widths' must be a non-empty tuple of positive "
                      f"ints, got {widths!r}")

  _choice(config, "optimizer.name", OPTIMIZERS)
  _real(config, "optimizer.base_lr", check=positive, expect="> 0")
  _real(config, "optimizer.momentum", check=lambda v: 0 <= v < 1, expect="in [0, 1)")
  _bool(config, "optimizer.nesterov")
  _real(config, "optimizer.weight_decay", check=lambda v: v >= 0, expect=">= 0")
  _real(config, "optimizer.warmup_epochs", check=lambda v: v >= 0, expect=">= 0")
  _real(config, "optimizer.grad_clip_norm", check=positive, expect="> 0", optional=True)

  _int(config, "batch_size", low=1)
  _real(config, "num_epochs", check=positive, expect="> 0")
  _int(config, "num_steps", low=1, optional=True)
  _real(config, "online_probe.lr", check=positive, expect="> 0")
  _int(config, "linear_probe.epochs", low=1)
  _int(config, "linear_probe.batch_size", low=1)
  _real(config, "linear_probe.lr", check=positive, expect="> 0")
  _real(config, "linear_probe.weight_decay", check=lambda v: v >= 0, expect=">= 0")
  _int(config, "knn.k", low=1)
  _real(config, "knn.temperature", check=positive, expect="> 0")
  for key in ("eval_batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    _int(config, key, low=1)
  for key in ("async_checkpoints", "progress", "report.tsne", "skip_nonfinite_updates"):
    _bool(config, key)
  _int(config, "num_devices", low=1, optional=True)
  _int(config, "seed", low=0)
  _int(config, "report.tsne_points", low=1)
  _real(config, "min_free_disk_mb", check=lambda v: v >= 0, expect=">= 0")


def _check_combinations(config, num_devices: int) -> None:
  info = pjd.get_info(config.dataset.name)
  available = jax.device_count()
  if num_devices > available:
    raise ConfigError(f"config field 'num_devices' is {num_devices} but only {available} "
                      f"devices are available")
  if config.batch_size % num_devices:
    raise ConfigError(f"config field 'batch_size' ({config.batch_size}) is not divisible by "
                      f"the device count ({num_devices})")
  if config.batch_size > info.num_train:
    raise ConfigError(f"config field 'batch_size' ({config.batch_size}) exceeds the "
                      f"{info.num_train} training examples of {info.name!r}")
  if config.loss.get("dispersion", 0.0) and config.method != "supcon":
    raise ConfigError("config field 'loss.dispersion' (the dispersion control term) is "
                      f"{config.loss.dispersion}, but it is added to 'supcon' only; method "
                      f"is {config.method!r}")
  if config.method == "cross_entropy":
    return
  if config.method == "infonce" and config.dataset.num_views < 2:
    raise ConfigError(f"config field 'dataset.num_views' must be >= 2 for method "
                      f"'infonce', got {config.dataset.num_views}")
  if config.loss.impl == "ring" and num_devices < 2:
    raise ConfigError("config field 'loss.impl' is 'ring', which passes keys between "
                      f"devices, but the run uses {num_devices} device; use 'dense' or "
                      "'blockwise' on one device")
  if config.method == "projnce":
    for role in ("positive", "negative"):
      if config.loss[role] == "orthogonal" and config.model.proj_dim < info.num_classes:
        raise ConfigError(
            f"config field 'loss.{role}' is 'orthogonal', which needs 'model.proj_dim' >= "
            f"the {info.num_classes} classes of {info.name!r}, got "
            f"model.proj_dim={config.model.proj_dim}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field of a run config, and of each entry of `config.runs`.

  Nothing is loaded or compiled: the dataset's size and class count come from its static
  `DatasetInfo`, the device count from `jax.device_count()`.

  Args:
    config: a config built from `base_config()`.

  Raises:
    KeyError: a field that `base_config()` does not have (or a run overriding one).
    TypeError: a field of the wrong type, e.g. `batch_size="64"`.
    ConfigError (a ValueError): an out-of-range value, an unknown name or an impossible
      combination; the message names the key(s) and the value(s).
  """
  _unknown_keys(config, base_config())
  if config.runs:
    names = []
    for i, spec in enumerate(config.runs):
      if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"config field 'runs[{i}]' must be a dict with a 'name' string, "
                          f"got {spec!r}")
      names.append(spec["name"])
      try:
        validate_config(apply_overrides(config, spec))
      except (KeyError, TypeError, ValueError) as e:
        raise type(e)(f"run {spec['name']!r}: {e.args[0] if e.args else e}") from e
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ConfigError(f"config field 'runs' repeats the names {duplicates}")
    return
  _check_fields(config)
  _check_combinations(config, config.num_devices or jax.device_count())


def check_workdir(workdir: str, *, min_free_mb: float = 64.0) -> None:
  """Makes sure `workdir` exists, can be written and has `min_free_mb` MiB free.

  Raises:
    OSError: naming the path when it cannot be created or written, or is (nearly) full.
  """
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_probe.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok\n")
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {path} is not writable: {e}") from e
  free_mb = shutil.disk_usage(path).free / 2**20
  if free_mb < min_free_mb:
    raise WorkdirError(f"workdir {path} has only {free_mb:.1f} MiB free; at least "
                       f"{min_free_mb:g} MiB are needed (config field 'min_free_disk_mb')")


def validate_run(config: ml_collections.ConfigDict, workdir: Optional[str]) -> None:
  """`validate_config(config)`, then `check_workdir(workdir)` (when given)."""
  validate_config(config)
  if workdir is not None:
    check_workdir(workdir, min_free_mb=config.min_free_disk_mb)


# -- reruns on an existing workdir ---------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out if out or not prefix else {prefix[:-1]: {}}
  return {prefix[:-1]: tree}


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any]
                       ) -> Tuple[List[Tuple[str, Any, Any]], List[Tuple[str, Any, Any]]]:
  """(safe, unsafe) lists of (key, saved value, new value) between two JSON configs.

  Args:
    saved, new: configs as JSON-decoded dicts (`ConfigDict.to_json_best_effort`).

  Returns:
    Differences in `RESUME_SAFE_KEYS` and all others, each sorted by key; a key present
    in one config only shows "<absent>" on the other side.
  """
  a, b = _flatten(saved), _flatten(new)
  safe, unsafe = [], []
  for key in sorted(set(a) | set(b)):
    old, cur = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if old != cur:
      (safe if key in RESUME_SAFE_KEYS else unsafe).append((key, old, cur))
  return safe, unsafe


def has_checkpoints(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a (finished) checkpoint folder."""
  return latest_checkpoint_step(workdir) is not None


def latest_checkpoint_step(workdir: str) -> Optional[int]:
  """The largest step with a folder in WORKDIR/checkpoints, or None."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return None
  steps = [int(name) for name in os.listdir(folder)
           if name.isdigit() and os.path.isdir(os.path.join(folder, name))]
  return max(steps) if steps else None


def check_rerun(config: ml_collections.ConfigDict, workdir: str
                ) -> List[Tuple[str, Any, Any]]:
  """Refuses a rerun whose config differs from the one kept with the checkpoints.

  When WORKDIR/checkpoints holds a checkpoint and WORKDIR/config.json the config it was
  written with, every field is compared. Changes to `RESUME_SAFE_KEYS` are logged as
  warnings; any other change raises before anything in the workdir is touched. A workdir
  without checkpoints (a new run, or one stopped before its first checkpoint) is not
  checked.

  Args:
    config: the config of the rerun (one run; `runs` entries are checked one by one).
    workdir: its workdir.

  Returns:
    The resume-safe changes, [(key, saved value, new value)] ([] for a new run).

  Raises:
    ConfigError: naming each differing key with the saved and the new value.
  """
  path = os.path.join(workdir, "config.json")
  if not has_checkpoints(workdir):
    return []
  if not os.path.exists(path):
    logging.warning("%s has checkpoints but no config.json; cannot check that this config "
                    "matches them", workdir)
    return []
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} (the config of the checkpoints in {workdir}) cannot be read "
                      f"({type(e).__name__}: {e}); nothing was changed") from e
  new = json.loads(config.to_json_best_effort())
  safe, unsafe = config_differences(saved, new)
  if unsafe:
    listing = "; ".join(f"{k}: {old!r} (checkpoints) vs {cur!r} (now)"
                        for k, old, cur in unsafe)
    raise ConfigError(
        f"workdir {workdir} holds checkpoints of a run with a different config; refusing "
        f"to resume and nothing was changed. Differing fields: {listing}. Rerun with the "
        f"saved values ({path}) or use a new workdir. Fields that may change on resume: "
        f"{', '.join(RESUME_SAFE_KEYS)}")
  for key, old, cur in safe:
    logging.warning("resuming %s with %s changed: %r -> %r", workdir, key, old, cur)
  return safe

"""Why the `mlp` projection collapsed, and which fix keeps it trained: a measurement.

Variants of ProjNCE with g+ = mlp, g- = sample, beta = 1 on mnist5k at the training scale of
experiments/paper_comparison (small CNN, batch 128 x 2 views, 6 epochs, SGD), beside
g+ = centroid:

  uncentred       the table normalise(MLP(onehot(c))) without centring (the old projection)
  centred         normalise(centre(MLP(onehot(c)))): the class mean of the table is
                  subtracted before normalising (the projection as shipped)
  own_adam        uncentred, the MLP trained by its own Adam (loss.mlp_lr = 1e-3) through
                  optax.multi_transform instead of the encoder's SGD
  simplex_init    uncentred, initialised at the regular simplex table (loss.mlp_init)
  centred_simplex centred and initialised at the simplex

For each cell: linear probe and kNN accuracy (test split) and the mean off-diagonal cosine of
the class table after 50 steps and at the end (1.0 = every class vector the same).

Usage::

  python experiments/ablations/mlp_projection.py --out experiments/ablations/mlp_projection
  python experiments/ablations/mlp_projection.py --out /tmp/mlp --small     # seconds
  python experiments/ablations/mlp_projection.py --eval_split validation \
      --variants centroid,uncentred,centred --out experiments/ablations/mlp_projection_validation

The centring now shipped was chosen from the test-split accuracies of the first command;
`--eval_split validation` scores the same cells on the validation split held out of the
training data, which is where such a choice belongs (a confirmation).

The uncentred variants patch `mlp_table(..., center=False)` into the loss for the duration of
their cell (the library has no switch for the collapsing form). Writes OUT/results.md and
OUT/results.json; cells live in OUT/runs/<variant>/seed<s> and are reused when finished.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, Optional, Sequence
from unittest import mock

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

pc = common.pc

MLP = {"method": "projnce", "loss": {"positive": "mlp", "negative": "sample", "beta": 1.0}}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "centroid": {"overrides": {"method": "projnce", "loss": {"positive": "centroid"}},
                 "center": True},
    "uncentred": {"overrides": MLP, "center": False},
    "centred": {"overrides": MLP, "center": True},
    "own_adam": {"overrides": {**MLP, "loss": {**MLP["loss"], "mlp_lr": 1e-3}},
                 "center": False},
}
VARIANTS["simplex_init"] = {"overrides": {**MLP, "loss": {**MLP["loss"], "mlp_init": "simplex"}},
                            "center": False}
VARIANTS["centred_simplex"] = {
    "overrides": {**MLP, "loss": {**MLP["loss"], "mlp_init": "simplex"}}, "center": True}
TABLE_FILE = "table_cosine.json"
EARLY_STEP = 50

FULL = dataclasses.replace(pc.FULL, noises=(0.0,), seeds=(0, 1))
SMALL = dataclasses.replace(pc.SMALL, noises=(0.0,), seeds=(0,), num_steps=3)
SMALL_VARIANTS = ("uncentred", "centred")


@contextlib.contextmanager
def table_form(center: bool):
  """Within the block the loss builds the `mlp` table with or without centring."""
  from projnce_jax.losses import projections  # pylint: disable=g-import-not-at-top
  if center:
    yield
    return
  with mock.patch.object(projections, "mlp_table",
                         functools.partial(projections.mlp_table, center=False)):
    yield


def table_hook(workdir: str, total_steps: int, center: bool):
  """Records the class table's mean off-diagonal cosine at step 50 and at the end."""
  from projnce_jax import losses  # pylint: disable=g-import-not-at-top
  seen: Dict[str, float] = {}

  def hook(step, state, record):
    del record
    if "projection" not in state.params or step not in (EARLY_STEP, total_steps):
      return
    table = losses.mlp_table(state.params["projection"],
                             state.params["projection"]["hidden"]["kernel"].shape[0],
                             center=center)
    seen[f"step{step}" if step == EARLY_STEP else "final"] = float(
        losses.mean_offdiagonal_cosine(table))
    if step == total_steps:
      with open(os.path.join(workdir, TABLE_FILE), "w") as f:
        json.dump(seen, f)

  return hook


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--small", action="store_true")
  p.add_argument("--eval_split", default="test", choices=("test", "validation"),
                 help="split the probe and kNN are scored on")
  p.add_argument("--variants", default=None,
                 help=f"comma-separated subset of {', '.join(VARIANTS)}")
  args = p.parse_args(argv)
  setting = SMALL if args.small else FULL
  names = SMALL_VARIANTS if args.small else tuple(VARIANTS)
  if args.variants:
    names = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
      p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
  os.makedirs(args.out, exist_ok=True)
  pc.enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = pc.machine_info()
  t0 = time.perf_counter()
  cells = []
  for seed in setting.seeds:
    for name in names:
      v = VARIANTS[name]
      workdir = os.path.join(args.out, "runs", name, f"seed{seed}")
      config = pc.build_config(setting, "mnist5k", v["overrides"], 0.0, seed,
                               eval_split=args.eval_split)
      from projnce_jax import train  # pylint: disable=g-import-not-at-top
      total = train.Experiment(config).total_steps
      hook = table_hook(workdir, total, v["center"])
      needs_table = name != "centroid"
      done = (lambda w: os.path.exists(os.path.join(w, TABLE_FILE))) if needs_table else None
      with table_form(v["center"]):
        res, now = pc.run_cell(config, workdir, hooks=[hook], done=done)
      cos = {}
      if needs_table and os.path.exists(os.path.join(workdir, TABLE_FILE)):
        with open(os.path.join(workdir, TABLE_FILE)) as f:
          cos = json.load(f)
      cell = dict(variant=name, seed=seed, status=res.get("status", "ok"),
                  wall_seconds=res.get("wall_seconds"), ran_now=now,
                  linear_probe_accuracy=res.get("linear_probe_accuracy"),
                  knn_accuracy=res.get("knn_accuracy"),
                  cosine_step50=cos.get(f"step{EARLY_STEP}"), cosine_final=cos.get("final"))
      cells.append(cell)
      print(json.dumps(cell), flush=True)
  summary = {}
  for name in names:
    cs = [c for c in cells if c["variant"] == name and c["status"] == "ok"]
    summary[name] = {k: pc.mean_std([c[k] for c in cs]) for k in (
        "linear_probe_accuracy", "knn_accuracy", "cosine_step50", "cosine_final")}
  result = dict(command=" ".join(shlex.quote(a) for a in ["python"] + sys.argv),
                date=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine,
                setting=dataclasses.asdict(setting), eval_split=args.eval_split,
                cells=cells, summary=summary,
                wall_seconds=time.perf_counter() - t0)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  m = machine
  s = result["setting"]
  lines = ["# The `mlp` projection: collapse and its fixes", "",
           f"Command: `{result['command']}`  ",
           f"Machine: {m['machine']}, {m['cpu_count']} CPU cores (load average at start "
           f"{m['load_average'][0]:.1f}), jax {m['jax']}; {result['date']}; wall "
           f"{result['wall_seconds']:.0f} s.", "",
           f"mnist5k, clean labels, small_cnn {tuple(s['widths'])}, batch {s['batch_size']} x 2 "
           "views, " + (f"{s['num_steps']} steps" if s["num_steps"] else
                        f"{s['num_epochs']} epochs") +
           f", SGD base_lr {s['base_lr']}, temperature 0.1, g- = sample, beta = 1; seeds "
           f"{tuple(s['seeds'])}. {args.eval_split.capitalize()}-split linear probe "
           f"({s['probe_epochs']} epochs) and "
           "kNN; table cosine = mean off-diagonal cosine of the class vectors g(c).", "",
           "| variant | probe (%) | kNN (%) | table cosine, step 50 | table cosine, final |",
           "|---|---|---|---|---|"]
  for name in names:
    r = summary[name]
    lines.append(f"| {name} | {common.fmt_ms(r['linear_probe_accuracy'], 100, 2)} | "
                 f"{common.fmt_ms(r['knn_accuracy'], 100, 2)} | "
                 f"{common.fmt_ms(r['cosine_step50'], 1, 3)} | "
                 f"{common.fmt_ms(r['cosine_final'], 1, 3)} |")
  lines += ["", "Values: mean +- sd over seeds (ddof = 1)."]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {args.out}/results.md ({result['wall_seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()

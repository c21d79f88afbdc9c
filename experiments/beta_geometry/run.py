"""Does a larger beta spread the clusters? ProjNCE beta in {0, 1, 5, 10} at label noise 0.3.

Runs ProjNCE with g+ = centroid, g- = sample and beta in {0, 1, 5, 10} (beta = 0 is
SupCon's loss, beta = 1 is ProjNCE) on mnist5k with 30% symmetric label noise, seeds 0-4,
under experiments/paper_comparison's protocol 2 and with its cell runner and trainer:

- the temperature, the learning rate and the training length are the ones its stage 1
  chose on the validation split for ProjNCE-centroid on mnist5k (read from its tuned.json,
  at the tuning noise nearest 0.3); beta is the variable studied here, not tuned;
- cells are evaluated on the test split; each cell's record holds the code version and the
  environment, and its cache key covers the code version;
- contrasts are paired over seeds (seed s shares initialisation, data order and label-noise
  draw) with 95% t-intervals, and the unpaired (Welch) interval beside them.

For every cell a trainer hook keeps the test-set embeddings, and the script measures on the
L2-normalised projection-head outputs z (and, second, on the normalised encoder features h),
with the true test labels and m_c the normalised mean of class c:

  intra = mean_i (1 - cos(z_i, m_{y_i}))          spread of each class around its mean
  inter = mean_{c != c'} (1 - cos(m_c, m_c'))    distance between class means
  ratio = intra / inter                          (lower: tighter, better separated)

Figure (like the paper's Figure 1): t-SNE of the seed-0 test embeddings z, coloured by
true class, for beta = 0 (SupCon's loss) | beta = 1 (ProjNCE) | beta = 5 | beta = 10.

Usage::

  python experiments/beta_geometry/run.py --out experiments/beta_geometry
  python experiments/beta_geometry/run.py --out /tmp/bg --small          # seconds

Writes OUT/results.md (tables and the verdict computed here), OUT/results.json and
OUT/tsne.png; finished cells are kept in OUT/cells/ (trainer folders in OUT/runs/) and
reused, so an interrupted run resumes (`--max_cells`, `--time_budget_s` stop it early).

Verdict: a difference is resolved when its paired 95% interval excludes 0. "Larger beta
spreads the clusters" is read as intra on z larger at the largest beta than at beta = 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from projnce_jax import report

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_paper_comparison():
  """experiments/paper_comparison/run.py as a module (its cell runner and statistics)."""
  path = os.path.join(_HERE, "..", "paper_comparison", "run.py")
  spec = importlib.util.spec_from_file_location("paper_comparison_run", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up by name
  spec.loader.exec_module(module)
  return module


pc = _load_paper_comparison()
_sweep = pc._sweep  # pylint: disable=protected-access

BETAS = (0.0, 1.0, 5.0, 10.0)
NOISE = 0.3
DATASET = "mnist5k"
METHOD = "projnce_centroid"  # whose stage-1 values the cells use
TUNED = os.path.join(_HERE, "..", "paper_comparison", "tuned.json")
EMBEDDINGS = "embeddings.npz"
METRICS = ("intra", "inter", "ratio")
ACCURACY = (("linear_probe_accuracy", "probe", 100.0), ("knn_accuracy", "kNN", 100.0))
PANELS = (("beta0", "beta=0 (SupCon's loss)"), ("beta1", "ProjNCE (beta=1)"),
          ("beta5", "beta=5"), ("beta10", "beta=10"))

FULL = dataclasses.replace(pc.FULL, noises=(NOISE,))
SMALL = dataclasses.replace(pc.SMALL, noises=(NOISE,), seeds=(0,))
SMALL_BETAS = (0.0, 5.0)
# --small has no stage 1: the defaults of the configs.
SMALL_VALUES = {"hyperparameters": {"temperature": 0.1, "lr_factor": 1.0},
                "num_epochs": None, "tuned_at_noise": None, "source": "defaults (--small)"}


def run_name(beta: float) -> str:
  return f"beta{beta:g}"


def protocol_values(tuned_path: str = TUNED) -> Dict[str, Any]:
  """ProjNCE-centroid's stage-1 values on mnist5k at the tuning noise nearest NOISE.

  Raises:
    ValueError: tuned.json lacks them (paper_comparison's stage 1 has not chosen them).
  """
  try:
    with open(tuned_path) as f:
      entry = json.load(f)[DATASET]
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{tuned_path}: no stage-1 values for {DATASET} ({e}); run "
                     "experiments/paper_comparison/run.py first") from None
  by_noise = {n: m for n, m in entry.get("by_noise", {}).items() if METHOD in m}
  if not by_noise or entry.get("num_epochs") is None:
    raise ValueError(f"{tuned_path}: stage 1 has not chosen {METHOD}'s values and the "
                     f"length on {DATASET} yet")
  near = min(by_noise, key=lambda n: abs(float(n) - NOISE))
  hp = {k: v for k, v in by_noise[near][METHOD].items() if k != "beta"}
  return {"hyperparameters": hp, "num_epochs": int(entry["num_epochs"]),
          "tuned_at_noise": float(near), "source": os.path.relpath(tuned_path, _HERE)}


# ----------------------------------------------------------------------------------------
# Geometry.


def unit(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_spread(x: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
  """Intra-class and inter-class cosine distances of normalised embeddings.

  Args:
    x: [n, d] embeddings (normalised here).
    labels: [n] true classes.

  Returns:
    {"intra": mean cosine distance of a point to its class mean direction,
     "inter": mean cosine distance between two class mean directions,
     "ratio": intra / inter}.
  """
  x = unit(x)
  classes = np.unique(labels)
  means = unit(np.stack([x[labels == c].mean(0) for c in classes]))     # [M, d]
  pos = np.searchsorted(classes, labels)
  intra = float(np.mean(1.0 - np.sum(x * means[pos], axis=1)))
  cos = means @ means.T
  off = ~np.eye(len(classes), dtype=bool)
  inter = float(np.mean(1.0 - cos[off]))
  return {"intra": intra, "inter": inter, "ratio": intra / inter}


def embedding_hook(config, workdir: str):
  """A trainer hook that saves the test-set z, features and labels after the last step."""
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  eval_lib = importlib.import_module("projnce_jax.train.evaluate")
  exp = train.Experiment(config)
  feature_fn = eval_lib.make_feature_fn(exp.model, exp.eval_inputs)

  def hook(step, state, record):
    del record
    if step != exp.total_steps:
      return
    test = train.extract_features(feature_fn, state.params["model"], state.batch_stats,
                                  exp.eval_loader(exp.test_source))
    np.savez(os.path.join(workdir, EMBEDDINGS), z=test["z"], features=test["features"],
             label=test["label"])

  return hook


def has_embeddings(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, EMBEDDINGS))


def geometry(workdir: str) -> Dict[str, Dict[str, float]]:
  """Cluster spread of the saved z and encoder features of one cell."""
  d = np.load(os.path.join(workdir, EMBEDDINGS))
  return {"z": cluster_spread(d["z"], d["label"]),
          "features": cluster_spread(d["features"], d["label"])}


# ----------------------------------------------------------------------------------------
# Statistics and verdict.

MEASURES = (("linear_probe_accuracy", "knn_accuracy", "heldout_mi_bound")
            + tuple(f"{sp}/{m}" for sp in ("z", "features") for m in METRICS))


def value(cell: Dict[str, Any], measure: str) -> Optional[float]:
  """A cell's value of `measure` (an accuracy key, or "z/intra" and the like)."""
  if cell.get("status") != "ok":
    return None
  if "/" in measure:
    space, m = measure.split("/")
    return (cell.get("geometry") or {}).get(space, {}).get(m)
  return cell.get(measure)


def by_seed(cells: List[Dict[str, Any]], run: str, measure: str) -> Dict[int, float]:
  return {c["seed"]: value(c, measure) for c in cells
          if c["run"] == run and value(c, measure) is not None}


def spearman(x: Sequence[float], y: Sequence[float]) -> Dict[str, Optional[float]]:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(set(x)) < 2 or len(set(y)) < 2 or len(y) < 3:
    return {"rho": None, "p": None}  # undefined for a constant input
  r = stats.spearmanr(x, y)
  return {"rho": float(r.statistic), "p": float(r.pvalue)}


def summarize(cells: List[Dict[str, Any]], runs: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """Per run: the seeds, the diverged seeds and mean/sd over seeds of every measure."""
  out = {}
  for name in runs:
    mine = [c for c in cells if c["run"] == name]
    s = {"seeds": [c["seed"] for c in mine if c["status"] == "ok"],
         "diverged": [c["seed"] for c in mine if c["status"] != "ok"]}
    for key in MEASURES + ("adjustment",):
      s[key] = pc.mean_std([value(c, key) for c in mine])
    out[name] = s
  return out


def reading(diff: Dict[str, Any]) -> Optional[str]:
  """"above 0" / "below 0" / "not resolved" from a paired interval (None: < 2 seeds)."""
  if diff.get("ci_low") is None:
    return None
  if diff["ci_low"] > 0:
    return "above 0"
  if diff["ci_high"] < 0:
    return "below 0"
  return "not resolved"


def verdict(cells: List[Dict[str, Any]], betas: Sequence[float]) -> Dict[str, Any]:
  """Each beta against beta = 0 per measure (paired and unpaired), and the beta trend."""
  base = run_name(0.0)
  out: Dict[str, Any] = {
      "rule": "paired 95% t-interval over seeds of (beta = b) - (beta = 0); resolved when "
              "it excludes 0", "measures": {}}
  for measure in MEASURES:
    ok = [c for c in cells if value(c, measure) is not None]
    entry = {"spearman": spearman([c["beta"] for c in ok], [value(c, measure) for c in ok]),
             "vs_beta0": {}}
    b0 = by_seed(cells, base, measure)
    for b in betas:
      if b == 0 or not b0:
        continue
      bb = by_seed(cells, run_name(b), measure)
      paired = _sweep.paired_difference(bb, b0)
      paired["reading"] = reading(paired)
      paired["unpaired"] = _sweep.unpaired_difference(bb, b0)
      entry["vs_beta0"][f"{b:g}"] = paired
    out["measures"][measure] = entry
  top = f"{max(betas):g}"
  out["spread_claim"] = {m: dict(out["measures"][f"z/{m}"]["vs_beta0"].get(top, {}),
                                 beta=top) for m in METRICS}
  return out


def claim_sentences(v: Dict[str, Any], betas: Sequence[float]) -> List[str]:
  """Plain-language verdict on 'larger beta spreads the clusters', from the numbers."""
  words = {"intra": "the spread of each class around its mean (intra)",
           "inter": "the distance between class means (inter)",
           "ratio": "intra / inter"}
  claim = v["spread_claim"]
  intra = claim["intra"]
  if intra.get("reading") is None:
    head = "Not enough paired seeds for a verdict."
  elif intra["reading"] == "above 0":
    head = (f"**Holds** in the intra-class sense: beta = {intra['beta']} spreads the "
            "classes of z more than beta = 0 (paired interval above 0)")
    ratio = claim["ratio"]
    if ratio.get("reading") == "above 0":
      head += (", but into each other, not apart: intra / inter rises too, so the classes "
               "overlap more.")
    else:
      head += "; intra / inter does not rise resolvably."
  elif intra["reading"] == "below 0":
    head = (f"**Does not hold** here: beta = {intra['beta']} makes the classes of z "
            "tighter than beta = 0 (paired interval below 0).")
  else:
    head = (f"**Not resolved**: the paired interval of intra (z) at beta = {intra['beta']} "
            "minus beta = 0 contains 0.")
  out = [head, ""]
  for m, c in claim.items():
    if c.get("mean") is None:
      continue
    out.append(f"- {words[m]} at beta = {c['beta']} minus beta = 0: {c['mean']:+.4f}, "
               f"paired interval {_interval(c)} ({c['reading'] or 'one seed'}).")
  for b in betas:
    if b == 0:
      continue
    parts = []
    for key, label, scale in ACCURACY:
      c = v["measures"][key]["vs_beta0"].get(f"{b:g}", {})
      if c.get("mean") is None:
        continue
      parts.append(f"{label} {scale * c['mean']:+.2f} points, paired interval "
                   f"{_interval(c, scale, 2)} ({c['reading'] or 'one seed'})")
    if parts:
      out.append(f"- Accuracy at beta = {b:g} minus beta = 0: " + "; ".join(parts) + ".")
  return out


# ----------------------------------------------------------------------------------------
# Outputs.


def _ms(stat: Dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
  if stat["mean"] is None:
    return "-"
  sd = f" +- {scale * stat['std']:.{digits}f}" if stat["std"] is not None else ""
  return f"{scale * stat['mean']:.{digits}f}{sd}"


def _interval(c: Dict[str, Any], scale: float = 1.0, digits: int = 4) -> str:
  if c.get("ci_low") is None:
    return "-"
  return f"[{scale * c['ci_low']:+.{digits}f}, {scale * c['ci_high']:+.{digits}f}]"


def plot_tsne(cell_dirs: Dict[str, str], spreads: Dict[str, Dict[str, float]],
              path: str, points: int = 1000) -> None:
  """1 x 4 panel figure: t-SNE of the test z per run, coloured by true class."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [(n, t) for n, t in PANELS if n in cell_dirs]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 4.0), squeeze=False)
  for ax, (name, title) in zip(axes[0], panels):
    d = np.load(os.path.join(cell_dirs[name], EMBEDDINGS))
    emb, idx = report.tsne_2d(unit(d["z"]), max_points=points)
    y = d["label"][idx]
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10", s=4, vmin=0, vmax=9)
    g = spreads[name]
    ax.set_title(f"{title}\nintra {g['intra']:.3f}, inter {g['inter']:.3f}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(sc, ax=axes[0].tolist(), fraction=0.02, label="true class")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def write_markdown(path: str, result: Dict[str, Any], runs: Sequence[str]) -> None:
  """results.md: command, machine, code, set-up, tables and the verdict."""
  mach, s, v, pv = result["machine"], result["setting"], result["verdict"], result["values"]
  code = result["code"]
  hp = ", ".join(f"{k} {x:g}" for k, x in sorted(pv["hyperparameters"].items()))
  length = (f"{s['num_steps']} steps" if s["num_steps"] else
            f"{pv['num_epochs'] or s['num_epochs']} epochs")
  tuned = ("from paper_comparison's stage 1 (validation split) for ProjNCE-centroid on "
           f"mnist5k at noise {pv['tuned_at_noise']:g}, the tuning noise nearest "
           f"{NOISE:g} ({pv['source']})" if pv["tuned_at_noise"] is not None
           else pv["source"])
  lines = [
      "# Does a larger beta spread the clusters? (label noise 0.3)", "",
      f"Command: `{result['command']}`  ",
      f"Machine: {mach['machine']}, {mach['cpu_count']} CPU cores (load average at the start "
      f"of this invocation {mach['load_average'][0]:.1f}), jax {mach['jax']}  ",
      f"Code: commit {code.get('commit') or '-'}"
      + (" (with uncommitted changes)" if code.get("dirty") else "")
      + f", source hash {code.get('sha256', '-')[:12]}  ",
      f"Date: {result['date']}; wall time of this invocation {result['wall_seconds']:.0f} s "
      f"({result['cells_run_now']} cells trained by it; {result['cells_done']} of "
      f"{result['cells_planned']} cells finished); sum of the finished cells' wall times "
      f"{result['sum_cell_seconds']:.0f} s.", "",
      f"Set-up (protocol 2 of paper_comparison): mnist5k, symmetric label noise {NOISE:g} "
      f"on the training labels, small_cnn widths {tuple(s['widths'])} (extra_convs "
      f"{s['extra_convs']}), batch {s['batch_size']} x 2 views, {length}, seeds "
      f"{tuple(s['seeds'])}, evaluated on the test split; ProjNCE with g+ = centroid, "
      f"g- = sample, {hp}: values (and the length) {tuned}. Beta is the variable studied "
      "and is not tuned. Spread measures on the test set (true labels), on the normalised "
      "projection-head outputs z and on the normalised encoder features h: intra = mean "
      "cosine distance of a point to its class-mean direction, inter = mean cosine distance "
      "between class-mean directions, ratio = intra / inter.", "",
      "Values: mean +- sd over seeds; accuracy in %; the held-out MI bound is "
      "log(N - 1) - InfoNCE term - R on test batches (nats); mean R is the last training "
      "batch's adjustment.", "",
      "| run | seeds | probe | kNN | held-out MI bound (nats) | mean R (train batch) | "
      "intra (z) | inter (z) | ratio (z) | intra (h) | inter (h) | ratio (h) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name in runs:
    r = result["summary"][name]
    bad = f" ({len(r['diverged'])} diverged)" if r["diverged"] else ""
    lines.append(
        f"| {name}{bad} | {len(r['seeds'])} | {_ms(r['linear_probe_accuracy'], 100, 2)} | "
        f"{_ms(r['knn_accuracy'], 100, 2)} | {_ms(r['heldout_mi_bound'])} | "
        f"{_ms(r['adjustment'])} | "
        + " | ".join(_ms(r[f"{sp}/{m}"], 1, 4) for sp in ("z", "features") for m in METRICS)
        + " |")
  if result.get("tsne_points"):
    lines += ["", "![t-SNE](tsne.png)", "",
              f"t-SNE of the seed-0 test embeddings z ({result['tsne_points']:,} points, "
              "coloured by true class); titles give that run's intra / inter."]
  lines += ["", "## Verdict", "", f"Rule: {v['rule']}; trend = Spearman correlation of the "
            "per-seed value with beta (all seeds and betas).", ""]
  lines += claim_sentences(v, result["betas"]) + [""]
  others = [b for b in result["betas_vs0"]]
  lines += ["Each cell: mean difference (beta = b) - (beta = 0), paired 95% interval; "
            "unpaired (Welch) interval below it. Accuracy in points.", "",
            "| measure | Spearman rho (p) | " + " | ".join(
                f"beta={b} - beta=0" for b in others) + " |",
            "|---|---|" + "---|" * len(others)]
  for key, mv in v["measures"].items():
    sp = mv["spearman"]
    rho = "-" if sp["rho"] is None else f"{sp['rho']:+.2f} ({sp['p']:.3f})"
    scale, digits = (100.0, 2) if key.endswith("accuracy") else (1.0, 4)
    cols = []
    for b in others:
      c = mv["vs_beta0"].get(b, {})
      if c.get("mean") is None:
        cols.append("-")
        continue
      mark = " **" + c["reading"] + "**" if c["reading"] in ("above 0", "below 0") else ""
      cols.append(f"{scale * c['mean']:+.{digits}f} {_interval(c, scale, digits)}{mark}"
                  f"<br>({_interval(c['unpaired'], scale, digits)})")
    lines.append(f"| {key} | {rho} | " + " | ".join(cols) + " |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# The sweep.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder (cells go to OUT/cells/)")
  p.add_argument("--small", action="store_true", help="2 cells at a tiny scale (a test)")
  p.add_argument("--tuned", default=TUNED,
                 help="paper_comparison's tuned.json (the stage-1 values used)")
  p.add_argument("--max_cells", type=int, default=None, help="train at most N new cells")
  p.add_argument("--time_budget_s", type=float, default=None,
                 help="start no new cell after this many seconds")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  setting, betas = (SMALL, SMALL_BETAS) if args.small else (FULL, BETAS)
  values = SMALL_VALUES if args.small else protocol_values(args.tuned)
  runs = [run_name(b) for b in betas]
  os.makedirs(args.out, exist_ok=True)
  pc.enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = pc.machine_info()
  code = _sweep.code_version(pc.code_root())
  cache = _sweep.CellCache(args.out, _sweep.Budget(args.max_cells, args.time_budget_s),
                           code=code, env=_sweep.environment())
  base_lr = pc.dataset_base_lr(setting, DATASET)
  t0 = time.perf_counter()
  cells, dirs = [], {}
  grid = [(b, seed) for seed in setting.seeds for b in betas]  # seed by seed: paired
  for i, (b, seed) in enumerate(grid):
    name = run_name(b)
    key = f"noise{NOISE:g}/{name}/seed{seed}"
    config = pc.build_config(
        setting, DATASET,
        pc.hp_overrides(METHOD, dict(values["hyperparameters"], beta=b), base_lr), NOISE,
        seed, num_epochs=values["num_epochs"])
    workdir = cache.workdir(key, cache.hash(config, key))

    def extract(res, workdir=workdir):
      rec = dict(pc.cell_record(res), adjustment=res.get("adjustment"))
      if res.get("status", "ok") == "ok":
        rec["geometry"] = geometry(workdir)
      return rec

    rec = cache.get_or_run(key, config, extract, hooks=[embedding_hook(config, workdir)],
                           done=has_embeddings)
    if rec is None:
      print(f"[{i + 1}/{len(grid)}] {name} seed={seed}: not run (budget)", flush=True)
      continue
    cell = dict(rec, run=name, seed=seed, beta=b)
    if cell["status"] == "ok" and seed == setting.seeds[0] and has_embeddings(workdir):
      dirs[name] = workdir
    cells.append(cell)
    print(f"[{i + 1}/{len(grid)}] {name} seed={seed}: "
          f"{'reused' if rec['reused'] else 'ran'} {cell['status']} "
          f"probe={cell['linear_probe_accuracy']} knn={cell['knn_accuracy']} "
          f"z={cell.get('geometry', {}).get('z')} ({cell['wall_seconds'] or 0:.1f} s)",
          flush=True)
  result = {
      "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1]] + sys.argv),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine, "code": code, "environment": _sweep.environment(),
      "setting": dataclasses.asdict(setting), "noise": NOISE, "values": values,
      "betas": list(betas), "betas_vs0": [f"{b:g}" for b in betas if b != 0],
      "cells_planned": len(grid), "cells_done": len(cells),
      "cells_run_now": cache.budget.cells_run, "cells": cells,
      "summary": summarize(cells, runs), "verdict": verdict(cells, betas),
      "sum_cell_seconds": float(sum(c.get("wall_seconds") or 0.0 for c in cells)),
  }
  # The figure needs every panel's seed-0 embeddings (trainer folders are not tracked: a
  # checkout without them keeps the committed figure).
  t_tsne = time.perf_counter()
  panels = [n for n, _ in PANELS if n in runs]
  if panels and all(n in dirs for n in panels):
    spreads = {n: next(c["geometry"]["z"] for c in cells
                       if c["run"] == n and c["seed"] == setting.seeds[0]) for n in panels}
    result["tsne_points"] = 200 if args.small else 1000
    plot_tsne(dirs, spreads, os.path.join(args.out, "tsne.png"), points=result["tsne_points"])
  elif os.path.exists(os.path.join(args.out, "tsne.png")) and len(cells) == len(grid):
    result["tsne_points"] = 1000  # drawn by an earlier invocation from these cells
  result["tsne_seconds"] = time.perf_counter() - t_tsne
  result["wall_seconds"] = time.perf_counter() - t0
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  write_markdown(os.path.join(args.out, "results.md"), result, runs)
  print(f"wrote {args.out}/results.md: {len(cells)}/{len(grid)} cells "
        f"({result['wall_seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()

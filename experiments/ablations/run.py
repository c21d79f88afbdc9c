"""Ablations: beta x temperature, kernel bandwidth, and a matched dispersion control.

Grid (mnist5k, small CNN at the training scale of experiments/paper_comparison, 20 epochs):

  centroid   ProjNCE g+ = centroid, g- = sample, beta in {0, 0.25, 0.5, 1, 2, 5} x tau in
             {0.1, 0.2, 0.5} (beta = 0 is SupCon's loss)
  kernel     ProjNCE g+ = kernel (beta = 1, tau = 0.1), bandwidth h in {0.25, 0.5, 1, 2}
  control    SupCon + beta * T at tau, for every (beta > 0, tau) of the centroid grid: T is
             `losses.dispersion_control`, R with each class's score distribution replaced by
             a Gaussian of the same mean and variance (a pure intra-class dispersion term
             with R's range, temperature and class weights; loss.dispersion = beta).

Every cell runs for each seed (paired: a seed fixes the initialisation, the data order and
the augmentations, so two cells with the same seed differ only in the loss). The trainer
evaluates on `eval_split` = "validation" when this build has that field (the sweep is a
tuning sweep: nothing is selected on the test split), else on "test", and results.md says
which. Paired differences: per seed d_s = a_s - b_s, mean +- the 95% t-interval
t_{0.975, n-1} * sd(d) / sqrt(n) over the n common seeds.

Comparisons: centroid(beta, tau) - centroid(0, tau) (what R adds to SupCon's loss),
centroid(beta, tau) - control(beta, tau) (R against the dispersion term at matched
strength: a difference means R does more than spread the classes), control(beta, tau) -
centroid(0, tau), kernel(h) - centroid(1, 0.1). Metrics: linear probe and kNN accuracy, and
the intra-class spread of the test embeddings z (experiments/beta_geometry's measure).

Usage::

  python experiments/ablations/run.py --out experiments/ablations
  python experiments/ablations/run.py --out /tmp/abl --smallest          # seconds
  python experiments/ablations/run.py --out DIR --max_cells 10           # partial
  python experiments/ablations/run.py --out DIR --time_budget 3600       # partial

Each finished cell-seed is stored as OUT/cells/noise<n>/<group>/<cell>/seed<s>.json (small,
committed: its metrics, config and config hash) and reused while its config is unchanged; the
trainer folder OUT/runs/... (checkpoints, test embeddings; ignored by git) lets a half-trained
cell resume from its last checkpoint. results.md and results.json always say how many
cells are done out of how many planned; tables show "-" for missing cells.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

pc, bg = common.pc, common.bg


@dataclasses.dataclass(frozen=True)
class Grid:
  """The ablation grid.

  Attributes:
    betas: beta values of the centroid grid (0 is SupCon's loss).
    temperatures: tau values.
    bandwidths: kernel bandwidths (beta = 1, tau = kernel_tau).
    kernel_tau: temperature of the kernel cells.
    control: whether to run the dispersion control cells.
    noise: symmetric label-noise rate of the training labels.
  """
  betas: Tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)
  temperatures: Tuple[float, ...] = (0.1, 0.2, 0.5)
  bandwidths: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
  kernel_tau: float = 0.1
  control: bool = True
  noise: float = 0.0


FULL_SETTING = dataclasses.replace(pc.FULL, num_epochs=20, noises=(0.0,), seeds=(0, 1, 2))
FULL_GRID = Grid()
SMALLEST_SETTING = dataclasses.replace(pc.SMALL, num_steps=2, probe_epochs=1, noises=(0.0,),
                                       seeds=(0,))
SMALLEST_GRID = Grid(betas=(0.0, 1.0), temperatures=(0.1,), bandwidths=(0.5,))
METRICS = (("linear_probe_accuracy", "probe", 100.0), ("knn_accuracy", "kNN", 100.0),
           ("intra_z", "intra (z)", 1.0))


@dataclasses.dataclass(frozen=True)
class Cell:
  """One grid point (run for every seed)."""
  group: str
  name: str
  overrides: Dict[str, Any]
  beta: Optional[float] = None
  tau: Optional[float] = None
  bandwidth: Optional[float] = None


def cells_for(grid: Grid) -> List[Cell]:
  """Every cell of the grid, in run order.

  Per temperature: centroid at beta = 0 (SupCon's loss), then for each beta > 0 the
  centroid cell and its matched control; the kernel cells right after the block of their
  reference temperature (`kernel_tau`). So a partial sweep holds complete comparisons, one
  temperature after the other.
  """

  def centroid(b, t):
    return Cell("centroid", f"beta{b:g}_tau{t:g}", {
        "method": "projnce", "loss": {"positive": "centroid", "negative": "sample",
                                      "beta": b, "temperature": t}}, beta=b, tau=t)

  def control(b, t):
    return Cell("control", f"beta{b:g}_tau{t:g}", {
        "method": "supcon", "loss": {"temperature": t, "dispersion": b}}, beta=b, tau=t)

  def kernel(h):
    return Cell("kernel", f"h{h:g}", {
        "method": "projnce", "loss": {"positive": "kernel", "negative": "sample", "beta": 1.0,
                                      "temperature": grid.kernel_tau, "bandwidth": h}},
                beta=1.0, tau=grid.kernel_tau, bandwidth=h)

  out = []
  for t in grid.temperatures:
    for b in grid.betas:
      out.append(centroid(b, t))
      if grid.control and b > 0:
        out.append(control(b, t))
    if t == grid.kernel_tau:
      out.extend(kernel(h) for h in grid.bandwidths)
  if grid.kernel_tau not in grid.temperatures:  # no block at kernel_tau: kernel cells last
    out.extend(kernel(h) for h in grid.bandwidths)
  return out


def eval_split_overrides() -> Dict[str, Any]:
  """{"eval_split": "validation"} when the trainer has that field, else {}."""
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  return {"eval_split": "validation"} if "eval_split" in train.base_config() else {}


def cell_key(grid: Grid, cell: Cell, seed: int) -> str:
  """The cell-seed's name in the cache: OUT/cells/<key>.json, OUT/runs/<key>-<hash>/."""
  return f"noise{grid.noise:g}/{cell.group}/{cell.name}/seed{seed}"


RECORD_FIELDS = ("linear_probe_accuracy", "knn_accuracy", "heldout_mi_bound",
                 "train_batch_mi_estimate", "adjustment", "epochs")


def run_cell_seed(cache, config, grid: Grid, cell: Cell, seed: int) -> Optional[Dict[str, Any]]:
  """The cell-seed's record (stored, or trained now if the budget allows), else None.

  The record keeps the trainer's metrics and the intra-class spread of the test
  embeddings, which an embedding hook saves in the trainer folder after the last step.
  """
  workdir = cache.workdir(cell_key(grid, cell, seed), common.sweep.config_hash(config))
  hook = []

  def embedding_hook(step, state, record):  # built on first use: cached cells never need it
    if not hook:
      hook.append(bg.embedding_hook(config, workdir))
    hook[0](step, state, record)

  def extract(res):
    rec = {k: res.get(k) for k in RECORD_FIELDS}
    if res.get("status", "ok") == "ok":
      rec["intra_z"] = bg.geometry(workdir)["z"]["intra"]
    return rec

  return cache.get_or_run(cell_key(grid, cell, seed), config, extract,
                          hooks=[embedding_hook], done=bg.has_embeddings)


# ----------------------------------------------------------------------------------------
# Statistics.


def t_interval(diffs: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
  """Mean of paired differences and its t-interval (None with fewer than 2 pairs).

  Equal differences (common on a small evaluation split, whose accuracies move in steps of
  1/n) give a zero-width interval; it is marked `degenerate` and never counted as
  excluding 0, since no spread was observed from which to judge it.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], np.float64)
  if d.size < 2:
    return {"mean": float(d.mean()) if d.size else None, "lo": None, "hi": None,
            "n": int(d.size), "excludes_zero": None, "degenerate": False}
  if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
    m = float(d.mean())
    return {"mean": m, "lo": m, "hi": m, "n": int(d.size), "excludes_zero": False,
            "degenerate": True}
  half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
  m = float(d.mean())
  return {"mean": m, "lo": m - half, "hi": m + half, "n": int(d.size),
          "excludes_zero": bool(m - half > 0 or m + half < 0), "degenerate": False}


def paired(records: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]], a: Tuple[str, str],
           b: Tuple[str, str], metric: str) -> Dict[str, Any]:
  """a - b over the seeds both have finished (status ok)."""
  ra, rb = records.get(a, {}), records.get(b, {})
  seeds = sorted(set(ra) & set(rb))
  return dict(t_interval([ra[s][metric] - rb[s][metric] for s in seeds
                          if ra[s].get(metric) is not None and rb[s].get(metric) is not None]),
              seeds=seeds)


def comparisons(grid: Grid, records) -> List[Dict[str, Any]]:
  """Every planned paired comparison with its t-interval per metric."""
  out = []

  def add(kind, a, b, label):
    out.append({"kind": kind, "a": list(a), "b": list(b), "label": label,
                **{m: paired(records, a, b, m) for m, _, _ in METRICS}})

  for t in grid.temperatures:
    for b in grid.betas:
      if b == 0:
        continue
      cen, base = ("centroid", f"beta{b:g}_tau{t:g}"), ("centroid", f"beta0_tau{t:g}")
      add("R_vs_supcon", cen, base, f"centroid beta={b:g} - beta=0, tau={t:g}")
      if grid.control:
        ctl = ("control", f"beta{b:g}_tau{t:g}")
        add("R_vs_control", cen, ctl, f"centroid - control, beta={b:g}, tau={t:g}")
        add("control_vs_supcon", ctl, base, f"control beta={b:g} - beta=0, tau={t:g}")
  ref = ("centroid", f"beta1_tau{grid.kernel_tau:g}")
  for h in grid.bandwidths:
    add("kernel", ("kernel", f"h{h:g}"), ref, f"kernel h={h:g} - centroid (beta=1, "
        f"tau={grid.kernel_tau:g})")
  return out


def summarize(records) -> Dict[str, Dict[str, Any]]:
  """Per cell: mean/sd over the finished seeds of every metric."""
  return {f"{g}/{n}": {m: pc.mean_std([r.get(m) for r in seeds.values()])
                       for m, _, _ in METRICS}
          for (g, n), seeds in records.items()}


# ----------------------------------------------------------------------------------------
# Outputs.


def _ci(c: Dict[str, Any], scale: float) -> str:
  if c["mean"] is None:
    return "-"
  if c["lo"] is None:
    return f"{scale * c['mean']:+.{2 if scale > 1 else 4}f} (n={c['n']})"
  d = 2 if scale > 1 else 4
  if c.get("degenerate"):
    return f"{scale * c['mean']:+.{d}f} (all {c['n']} seeds equal, no interval)"
  mark = "**" if c["excludes_zero"] else ""
  return (f"{mark}{scale * c['mean']:+.{d}f} [{scale * c['lo']:+.{d}f}, "
          f"{scale * c['hi']:+.{d}f}]{mark}")


def grid_table(summary, grid: Grid, group: str, metric: str, scale: float) -> List[str]:
  """beta (rows) x tau (columns) table of one metric's mean +- sd."""
  betas = [b for b in grid.betas if group == "centroid" or b > 0]
  lines = ["| beta \\ tau | " + " | ".join(f"{t:g}" for t in grid.temperatures) + " |",
           "|---|" + "---|" * len(grid.temperatures)]
  for b in betas:
    row = []
    for t in grid.temperatures:
      s = summary.get(f"{group}/beta{b:g}_tau{t:g}")
      row.append(common.fmt_ms(s[metric], scale, 2 if scale > 1 else 4) if s else "-")
    lines.append(f"| {b:g} | " + " | ".join(row) + " |")
  return lines


def comparison_table(comps: List[Dict[str, Any]], kind: str) -> List[str]:
  lines = ["| comparison | " + " | ".join(f"{lbl} (95% CI)" for _, lbl, _ in METRICS) +
           " | seeds |", "|---|" + "---|" * (len(METRICS) + 1)]
  for c in comps:
    if c["kind"] != kind:
      continue
    lines.append(f"| {c['label']} | " + " | ".join(_ci(c[m], s) for m, _, s in METRICS) +
                 f" | {len(c[METRICS[0][0]]['seeds'])} |")
  return lines


def selection(summary, grid: Grid, split: str) -> List[str]:
  """The best centroid (beta, tau) by mean probe accuracy, on the validation split only."""
  if split != "validation":
    return ["No selection is made: this build has no validation split, and nothing is "
            "selected on the test split."]
  best = None
  for t in grid.temperatures:
    for b in grid.betas:
      s = summary.get(f"centroid/beta{b:g}_tau{t:g}")
      if s and s["linear_probe_accuracy"]["mean"] is not None:
        if best is None or s["linear_probe_accuracy"]["mean"] > best[2]:
          best = (b, t, s["linear_probe_accuracy"]["mean"])
  if best is None:
    return ["No centroid cell finished yet."]
  return [f"Best centroid cell on the validation split (mean linear probe over seeds): "
          f"beta = {best[0]:g}, tau = {best[1]:g} ({100 * best[2]:.2f} %)."]


def plot(path: str, grid: Grid, summary, comps) -> None:
  """Probe accuracy over beta per tau (centroid solid, control dashed); paired R - control
  differences with 95% CIs; kernel bandwidth."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  ax = axes[0]
  for i, t in enumerate(grid.temperatures):
    color = f"C{i}"
    for group, ls in (("centroid", "-"), ("control", "--")):
      pts = [(b, summary.get(f"{group}/beta{b:g}_tau{t:g}")) for b in grid.betas]
      pts = [(b, s["linear_probe_accuracy"]) for b, s in pts
             if s and s["linear_probe_accuracy"]["mean"] is not None]
      if pts:
        xs = [b for b, _ in pts]
        ax.errorbar(xs, [100 * s["mean"] for _, s in pts],
                    yerr=[100 * (s["std"] or 0) for _, s in pts], color=color, ls=ls,
                    marker="o", capsize=2, label=f"{group}, tau={t:g}")
  ax.set_xscale("symlog", linthresh=0.25)
  ax.set_xticks(list(grid.betas))
  ax.set_xticklabels([f"{b:g}" for b in grid.betas])
  ax.minorticks_off()
  ax.set_xlabel("beta")
  ax.set_ylabel("linear probe accuracy (%)")
  ax.set_title("centroid (solid) vs dispersion control (dashed)", fontsize=10)
  ax.legend(fontsize=7)
  for ax, kind, title in ((axes[1], "R_vs_control", "centroid - control (paired, 95% CI)"),
                          (axes[2], "kernel", "kernel - centroid (paired, 95% CI)")):
    rows = [c for c in comps if c["kind"] == kind and c["linear_probe_accuracy"]["lo"] is not None]
    for j, c in enumerate(rows):
      m = c["linear_probe_accuracy"]
      ax.errorbar([j], [100 * m["mean"]], yerr=[[100 * (m["mean"] - m["lo"])],
                                               [100 * (m["hi"] - m["mean"])]],
                  marker="o", capsize=3, color="C3" if m["excludes_zero"] else "C0")
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([c["label"].split(", ", 1)[-1] if kind == "R_vs_control"
                        else c["label"].split(" - ")[0] for c in rows], rotation=45,
                       ha="right", fontsize=7)
    ax.set_ylabel("probe accuracy difference (points)")
    ax.set_title(title, fontsize=10)
    if not rows:
      ax.text(0.5, 0.5, "no finished pairs yet", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _load_range(cells: List[Dict[str, Any]]) -> str:
  loads = [c["load_average_at_start"][0] for c in cells if c.get("load_average_at_start")]
  return (f"1-minute load average at the starts of the trained cells: {min(loads):.1f} to "
          f"{max(loads):.1f} (stored per cell in cells/)." if loads else "")


def write_markdown(path: str, result: Dict[str, Any], grid: Grid) -> None:
  mach, s, summary, comps = (result["machine"], result["setting"], result["summary"],
                             result["comparisons"])
  done, planned = result["cells_done"], result["cells_planned"]
  status = ("complete" if done == planned else
            f"**PARTIAL: {done} of {planned} cell-seeds done**; tables show only those")
  lines = [
      "# Ablations: beta x temperature, kernel bandwidth, dispersion control", "",
      f"Command: `{result['command']}`  ",
      f"Machine: {mach['machine']}, {mach['cpu_count']} CPU cores (load average at start "
      f"{mach['load_average'][0]:.1f}), jax {mach['jax']}; {result['date']}.  ",
      f"Cells (one cell = one grid point x one seed): {done} / {planned} done ({status}); "
      f"{result['cells_run_now']} run by this invocation in {result['wall_seconds']:.0f} s"
      + (f", {result['mean_cell_seconds']:.0f} s per cell on average"
         if result["cells_run_now"] else "") + ". " + _load_range(result["cells"]), "",
      f"Set-up: mnist5k, label noise {grid.noise:g}, small_cnn {tuple(s['widths'])} "
      f"(extra_convs {s['extra_convs']}), batch {s['batch_size']} x 2 views, "
      + (f"{s['num_steps']} steps" if s["num_steps"] else f"{s['num_epochs']} epochs")
      + f", SGD base_lr {s['base_lr']}, seeds {tuple(s['seeds'])} (paired). Accuracy: "
      f"linear probe ({s['probe_epochs']} epochs) and kNN on the **{result['eval_split']}** "
      "split. intra (z) = mean cosine distance of a test embedding to its class-mean "
      "direction (descriptive, not used for selection). Control = SupCon + beta * T, T the "
      "Gaussian (second-cumulant) form of R: an intra-class dispersion term of matched "
      "strength.", "",
      "Values: mean +- sd over seeds; paired differences: mean [95% t-interval] over "
      "seeds, in points (accuracy) or cosine distance (intra); ** marks an interval that "
      "excludes 0.", ""]
  for group in ("centroid", "control"):
    if group == "control" and not grid.control:
      continue
    for m, label, scale in METRICS:
      lines += [f"## {group}: {label}", ""] + grid_table(summary, grid, group, m, scale) + [""]
  lines += ["## Kernel bandwidth", "", "| bandwidth | " +
            " | ".join(lbl for _, lbl, _ in METRICS) + " |",
            "|---|" + "---|" * len(METRICS)]
  for h in grid.bandwidths:
    st = summary.get(f"kernel/h{h:g}")
    lines.append(f"| {h:g} | " + " | ".join(
        common.fmt_ms(st[m], sc, 2 if sc > 1 else 4) if st else "-" for m, _, sc in METRICS)
                 + " |")
  lines += [""]
  for kind, title in (("R_vs_supcon", "What R adds: centroid(beta) - centroid(0)"),
                      ("R_vs_control", "R against the matched dispersion control"),
                      ("control_vs_supcon", "Dispersion control - SupCon"),
                      ("kernel", "Kernel bandwidth against centroid")):
    if any(c["kind"] == kind for c in comps):
      lines += [f"## {title}", ""] + comparison_table(comps, kind) + [""]
  rc = [c for c in comps if c["kind"] == "R_vs_control" and
        c["linear_probe_accuracy"]["excludes_zero"] is not None]
  sig = [c for c in rc if c["linear_probe_accuracy"]["excludes_zero"]]
  lines += ["## Verdict (computed)", ""]
  if not rc:
    lines.append("R against the dispersion control: no comparison has 2 paired seeds yet.")
  else:
    lines.append(f"R against the matched dispersion control (linear probe): {len(sig)} of "
                 f"{len(rc)} paired comparisons have a 95% interval that excludes 0" +
                 (": " + "; ".join(f"{c['label']} {_ci(c['linear_probe_accuracy'], 100)}"
                                  for c in sig) if sig else "") + ". " +
                 ("Where none does, this sweep cannot tell R from a dispersion regulariser."
                  if not sig else ""))
  lines += [""] + selection(summary, grid, result["eval_split"]) + ["", "![ablations](ablations.png)", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# The sweep.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True,
                 help="output folder (finished cells: OUT/cells/, trainer folders: OUT/runs/)")
  p.add_argument("--smallest", action="store_true",
                 help="4 grid points x 1 seed at a tiny scale (the test)")
  p.add_argument("--max_cells", type=int, default=None,
                 help="train at most this many new cell-seeds, then write partial results")
  p.add_argument("--time_budget", type=float, default=None,
                 help="seconds: start no new cell-seed after this much wall time")
  p.add_argument("--noise", type=float, default=None, help="label-noise rate (default 0)")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  setting, grid = ((SMALLEST_SETTING, SMALLEST_GRID) if args.smallest
                   else (FULL_SETTING, FULL_GRID))
  if args.noise is not None:
    grid = dataclasses.replace(grid, noise=args.noise)
  os.makedirs(args.out, exist_ok=True)
  pc.enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = pc.machine_info()
  extra = eval_split_overrides()
  split = extra.get("eval_split", "test")
  t0 = time.perf_counter()
  cells = cells_for(grid)
  plan = [(c, s) for c in cells for s in setting.seeds]
  records: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
  cache = common.sweep.CellCache(args.out, budget=common.sweep.Budget(
      max_cells=args.max_cells, time_budget_s=args.time_budget))
  ran, walls, flat = 0, [], []
  for i, (cell, seed) in enumerate(plan):
    config = pc.build_config(setting, "mnist5k", {**cell.overrides, **extra}, grid.noise,
                             seed)
    res = run_cell_seed(cache, config, grid, cell, seed)
    if res is None:  # not finished, and the budget allows no new cell
      continue
    now = not res["reused"]
    ran += now
    if now:
      walls.append(res.get("wall_seconds") or 0.0)
    rec = {"group": cell.group, "cell": cell.name, "seed": seed, "beta": cell.beta,
           "tau": cell.tau, "bandwidth": cell.bandwidth, "status": res.get("status", "ok"),
           "wall_seconds": res.get("wall_seconds"), "ran_now": now,
           "load_average_at_start": res.get("load_average_at_start"),
           **{k: res.get(k) for k in RECORD_FIELDS + ("intra_z",)}}
    if rec["status"] == "ok":
      records.setdefault((cell.group, cell.name), {})[seed] = rec
    flat.append(rec)
    print(f"[{i + 1}/{len(plan)}] {cell.group}/{cell.name} seed={seed}: "
          f"{'ran' if now else 'reused'} {rec['status']} probe={rec['linear_probe_accuracy']}"
          f" ({rec['wall_seconds'] or 0:.1f} s)", flush=True)
  summary = summarize(records)
  comps = comparisons(grid, records)
  result = {
      "command": " ".join(shlex.quote(a) for a in ["python"] + sys.argv),
      "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine,
      "setting": dataclasses.asdict(setting), "grid": dataclasses.asdict(grid),
      "eval_split": split, "cells_planned": len(plan),
      "cells_done": sum(len(v) for v in records.values()), "cells_run_now": ran,
      "mean_cell_seconds": float(np.mean(walls)) if walls else 0.0,
      "wall_seconds": time.perf_counter() - t0, "cells": flat, "summary": summary,
      "comparisons": comps,
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(os.path.join(args.out, "ablations.png"), grid, summary, comps)
  write_markdown(os.path.join(args.out, "results.md"), result, grid)
  print(f"wrote {args.out}/results.md: {result['cells_done']}/{len(plan)} cells "
        f"({result['wall_seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()

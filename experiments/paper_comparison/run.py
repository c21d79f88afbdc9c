"""Cross-entropy vs SupCon vs ProjNCE projections under label noise, several seeds.

Grid: method in {cross_entropy, supcon, projnce with g+ in {centroid, median, kernel,
orthogonal, mlp} (g- = sample, beta = 1)} x label noise {0, 0.3} (symmetric) x seeds
{0, 1, 2}, on mnist5k with a small CNN trained for a few epochs (a CPU-sized version of the
paper's comparison). Every cell is one call of the trainer (`projnce_jax.train`): pretrain,
then linear probe and cosine kNN on the frozen encoder features (test split).

Usage::

  python experiments/paper_comparison/run.py --out experiments/paper_comparison
  python experiments/paper_comparison/run.py --out /tmp/pc --small        # seconds
  python experiments/paper_comparison/run.py --out DIR --datasets mnist5k,fashion_mnist_local

Each cell trains in OUT/runs/<dataset>/noise<rate>/<method>/seed<s>; a cell whose
results.json exists is not run again, so an interrupted sweep resumes where it stopped (a
half-trained cell resumes from its last checkpoint). Writes OUT/results.md (tables and the
verdict computed here), OUT/results.json and OUT/accuracy.png.

Verdict rule: two cells differ beyond the seed spread when |mean difference| > 2 * pooled
standard deviation, pooled sd = sqrt((s_a^2 + s_b^2) / 2) over the seeds of each. The
Welch t-test p-value is listed beside it (with 3 seeds it has little power).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

METHODS: Dict[str, Dict[str, Any]] = {
    "cross_entropy": {"method": "cross_entropy"},
    "supcon": {"method": "supcon"},
    **{f"projnce_{p}": {"method": "projnce",
                        "loss": {"positive": p, "negative": "sample", "beta": 1.0}}
       for p in ("centroid", "median", "kernel", "orthogonal", "mlp")},
}
SPREAD = 2.0  # pooled standard deviations for "beyond the seed spread"


@dataclasses.dataclass(frozen=True)
class Setting:
  """The training scale and the grid.

  Attributes:
    widths: small_cnn channels per stage.
    extra_convs: stride-1 convolutions per stage after the first.
    batch_size: examples per step (two views each).
    num_epochs: pretraining epochs (ignored when num_steps is set).
    num_steps: pretraining steps, or None.
    base_lr: SGD learning rate per 256 examples.
    crop_scale: random-resized-crop area range.
    probe_epochs: linear-probe epochs.
    methods: keys of METHODS.
    noises: symmetric label-noise rates.
    seeds: training seeds (also the label-noise seed).
    checkpoint_every: steps between checkpoints.
  """
  widths: Tuple[int, ...] = (16, 32, 64)
  extra_convs: int = 1
  batch_size: int = 128
  num_epochs: int = 6
  num_steps: Optional[int] = None
  base_lr: float = 0.2
  crop_scale: Tuple[float, float] = (0.5, 1.0)
  probe_epochs: int = 30
  methods: Tuple[str, ...] = tuple(METHODS)
  noises: Tuple[float, ...] = (0.0, 0.3)
  seeds: Tuple[int, ...] = (0, 1, 2)
  checkpoint_every: int = 100


FULL = Setting()
SMALL = dataclasses.replace(
    FULL, widths=(8, 16), extra_convs=0, batch_size=64, num_steps=3, probe_epochs=2,
    methods=("supcon", "projnce_centroid"), noises=(0.3,), seeds=(0,), checkpoint_every=3)


# ----------------------------------------------------------------------------------------
# Machine and JAX set-up.


def machine_info() -> Dict[str, Any]:
  """Architecture, CPU count, load average and JAX devices of this machine."""
  import jax  # pylint: disable=g-import-not-at-top
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return {"machine": platform.machine(), "cpu_count": os.cpu_count(),
          "load_average": [round(x, 2) for x in load], "python": platform.python_version(),
          "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}


def enable_compilation_cache(path: str) -> None:
  """Caches compiled XLA programs on disk: the cells share shapes, so most load, not compile."""
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ----------------------------------------------------------------------------------------
# One cell.


def build_config(setting: Setting, dataset: str, overrides: Dict[str, Any], noise: float,
                 seed: int):
  """The trainer config of one cell: base_config + this setting + the method overrides."""
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  c = train.base_config()
  c.dataset.augment.crop_scale = tuple(setting.crop_scale)
  common = {
      "dataset": {"name": dataset, "in_memory": True, "label_noise": float(noise)},
      "model": {"name": "small_cnn", "widths": tuple(setting.widths),
                "extra_convs": setting.extra_convs},
      "optimizer": {"base_lr": setting.base_lr},
      "batch_size": setting.batch_size, "num_epochs": setting.num_epochs,
      "num_steps": setting.num_steps, "linear_probe": {"epochs": setting.probe_epochs},
      "log_every": 10, "checkpoint_every": setting.checkpoint_every,
      "report": {"tsne": False}, "progress": False, "seed": int(seed),
  }
  c = train.apply_overrides(c, common)
  c = train.apply_overrides(c, overrides)
  c.lock()
  return c


def cell_dir(out: str, dataset: str, noise: float, name: str, seed: int) -> str:
  return os.path.join(out, "runs", dataset, f"noise{noise:g}", name, f"seed{seed}")


def _cell_record(res: Dict[str, Any], **keys) -> Dict[str, Any]:
  fields = ("linear_probe_accuracy", "knn_accuracy", "heldout_mi_bound",
            "train_batch_mi_estimate", "final_loss",
            "infonce_term", "adjustment", "online_probe_accuracy", "steps", "epochs",
            "train_seconds")
  return dict(keys, **{k: res.get(k) for k in fields})


def run_cell(config, workdir: str, *, hooks: Sequence[Callable] = (),
             done: Optional[Callable[[str], bool]] = None) -> Tuple[Dict[str, Any], bool]:
  """Trains and evaluates one cell unless it has finished before.

  Args:
    config: the cell's config.
    workdir: its folder.
    hooks: trainer hooks (hook(step, state, record)).
    done: extra completion test on the folder (besides results.json).

  Returns:
    (the trainer's results dict plus "status" and "wall_seconds", whether it ran now).
  """
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    if done is None or done(workdir):
      with open(path) as f:
        return json.load(f), False
    shutil.rmtree(workdir)  # finished training but not the extra outputs: start over
  t0 = time.perf_counter()
  try:
    res = train.train_and_evaluate(config, workdir, hooks=hooks)
    res["status"] = "ok"
  except FloatingPointError as e:  # a diverged cell is a result, not a crash of the sweep
    res = {"status": "diverged", "error": str(e)}
  res["wall_seconds"] = time.perf_counter() - t0
  with open(path + ".tmp", "w") as f:
    json.dump(res, f, indent=2)
  os.replace(path + ".tmp", path)
  return res, True


# ----------------------------------------------------------------------------------------
# Statistics and the verdict.


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Any]:
  """Mean and sample standard deviation (ddof=1) of the finite values."""
  v = np.array([x for x in values if x is not None and math.isfinite(x)], np.float64)
  if v.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
          "n": int(v.size)}


def welch_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
  """Two-sided Welch t-test p-value (None with fewer than 2 values or zero variance)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
    return None
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
  """Difference of means of a and b, the 2 * pooled-sd threshold and the verdict."""
  a = [x for x in a if x is not None]
  b = [x for x in b if x is not None]
  if len(a) < 2 or len(b) < 2:
    return {"diff": None, "threshold": None, "beyond_spread": None, "welch_p": None}
  diff = float(np.mean(a) - np.mean(b))
  pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
  return {"diff": diff, "threshold": SPREAD * pooled,
          "beyond_spread": bool(abs(diff) > SPREAD * pooled), "welch_p": welch_p(a, b)}


def summarize(cells: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """Per (dataset, noise, method): mean/std of probe, kNN and the MI figures over seeds."""
  groups: Dict[str, List[Dict[str, Any]]] = {}
  for c in cells:
    groups.setdefault(f"{c['dataset']}|{c['noise']:g}|{c['method']}", []).append(c)
  out = {}
  for key, cs in groups.items():
    ok = [c for c in cs if c.get("status") == "ok"]
    out[key] = {
        "dataset": cs[0]["dataset"], "noise": cs[0]["noise"], "method": cs[0]["method"],
        "seeds": [c["seed"] for c in ok], "diverged": [c["seed"] for c in cs if c not in ok],
        "linear_probe": mean_std([c["linear_probe_accuracy"] for c in ok]),
        "knn": mean_std([c["knn_accuracy"] for c in ok]),
        "heldout_mi_bound": mean_std([c.get("heldout_mi_bound") for c in ok]),
        "train_batch_mi_estimate": mean_std([c.get("train_batch_mi_estimate") for c in ok]),
        "values": {m: [c[k] for c in ok] for m, k in (("linear_probe", "linear_probe_accuracy"),
                                                       ("knn", "knn_accuracy"))},
    }
  return out


def verdict(summary: Dict[str, Dict[str, Any]], setting: Setting,
            datasets: Sequence[str]) -> Dict[str, Any]:
  """Every method against SupCon and cross-entropy, and each method's noise drop."""
  pairs, drops = [], []
  for ds in datasets:
    for noise in setting.noises:
      for ref in ("supcon", "cross_entropy"):
        r = summary.get(f"{ds}|{noise:g}|{ref}")
        if r is None:
          continue
        for m in setting.methods:
          s = summary.get(f"{ds}|{noise:g}|{m}")
          if s is None or m == ref:
            continue
          for metric in ("linear_probe", "knn"):
            pairs.append(dict(dataset=ds, noise=noise, method=m, reference=ref,
                              metric=metric,
                              **compare(s["values"][metric], r["values"][metric])))
    if len(setting.noises) > 1:
      lo, hi = min(setting.noises), max(setting.noises)
      for m in setting.methods:
        a, b = summary.get(f"{ds}|{lo:g}|{m}"), summary.get(f"{ds}|{hi:g}|{m}")
        if a is None or b is None:
          continue
        for metric in ("linear_probe", "knn"):
          drops.append(dict(dataset=ds, method=m, metric=metric, clean=lo, noisy=hi,
                            **compare(a["values"][metric], b["values"][metric])))
  return {"rule": f"|mean difference| > {SPREAD:g} * pooled sd (sd over seeds, ddof=1)",
          "pairs": pairs, "noise_drops": drops, "widest_spread": widest_spread(summary)}


# ----------------------------------------------------------------------------------------
# Outputs.


def _pct(stat: Dict[str, Any]) -> str:
  if stat["mean"] is None:
    return "-"
  sd = f" +- {100 * stat['std']:.2f}" if stat["std"] is not None else ""
  return f"{100 * stat['mean']:.2f}{sd}"


def _nats(stat: Dict[str, Any]) -> str:
  if stat["mean"] is None:
    return "-"
  sd = f" +- {stat['std']:.3f}" if stat["std"] is not None else ""
  return f"{stat['mean']:.3f}{sd}"


def accuracy_table(summary: Dict[str, Dict[str, Any]], setting: Setting, dataset: str) -> List[str]:
  """Markdown rows: method x noise, probe and kNN (%), held-out MI bound (nats)."""
  head = "| method |" + "".join(
      f" probe, noise {n:g} | kNN, noise {n:g} | held-out MI bound, noise {n:g} |" for n in setting.noises)
  lines = [head, "|---|" + "---|---|---|" * len(setting.noises)]
  for m in setting.methods:
    row = f"| {m} |"
    for n in setting.noises:
      s = summary.get(f"{dataset}|{n:g}|{m}")
      if s is None:
        row += " - | - | - |"
        continue
      bad = f" ({len(s['diverged'])} diverged)" if s["diverged"] else ""
      row += f" {_pct(s['linear_probe'])}{bad} | {_pct(s['knn'])} | {_nats(s['heldout_mi_bound'])} |"
    lines.append(row)
  return lines


def _signed(x: Optional[float], scale: float = 100.0) -> str:
  return "-" if x is None else f"{scale * x:+.2f}"


def widest_spread(summary: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
  """The (dataset, noise, method) cell with the largest seed sd of the probe accuracy."""
  cells = [s for s in summary.values() if s["linear_probe"]["std"] is not None]
  if not cells:
    return None
  s = max(cells, key=lambda c: c["linear_probe"]["std"])
  return {"dataset": s["dataset"], "noise": s["noise"], "method": s["method"],
          "std": s["linear_probe"]["std"], "values": s["values"]["linear_probe"]}


def verdict_lines(v: Dict[str, Any]) -> List[str]:
  """The verdict as Markdown: beyond-spread differences first, then the rest in a table."""
  lines = [f"Rule: a difference is beyond the seed spread when {v['rule']}. "
           "Differences in accuracy points (method minus reference); the Welch p-value is "
           "shown for reference only.", ""]
  w = v.get("widest_spread")
  if w is not None:
    vals = ", ".join(f"{100 * x:.1f}" for x in w["values"])
    lines += [f"Widest seed spread: {w['method']} at noise {w['noise']:g} ({w['dataset']}), "
              f"linear probe sd {100 * w['std']:.2f} points (seeds: {vals}); comparisons "
              "with it need a large difference to pass the rule.", ""]
  for ref in ("supcon", "cross_entropy"):
    rows = [p for p in v["pairs"] if p["reference"] == ref]
    if not rows:
      continue
    sig = [p for p in rows if p["beyond_spread"]]
    n_def = sum(p["beyond_spread"] is not None for p in rows)
    short = (f" (the other {len(rows) - n_def} have fewer than 2 seeds)"
             if n_def < len(rows) else "")
    lines.append(f"**Against {ref}**: {len(sig)} of {n_def} comparisons{short} are beyond "
                 "the seed spread" + (":" if sig else "."))
    for p in sig:
      word = "better" if p["diff"] > 0 else "worse"
      lines.append(f"- {p['method']} is {word} than {ref} ({p['metric']}, noise "
                   f"{p['noise']:g}, {p['dataset']}): {_signed(p['diff'])} points "
                   f"(threshold {100 * p['threshold']:.2f})")
    lines.append("")
  if v["noise_drops"]:
    sig = [d for d in v["noise_drops"] if d["beyond_spread"]]
    n_def = sum(d["beyond_spread"] is not None for d in v["noise_drops"])
    lines.append(f"**Label noise**: {len(sig)} of {n_def} clean-minus-noisy "
                 "differences are beyond the seed spread.")
    lines.append("")
  lines += ["| dataset | noise | method | reference | metric | diff (points) | 2 x pooled sd | "
            "beyond spread | Welch p |", "|---|---|---|---|---|---|---|---|---|"]
  for p in v["pairs"]:
    thr = "-" if p["threshold"] is None else f"{100 * p['threshold']:.2f}"
    wp = "-" if p["welch_p"] is None else f"{p['welch_p']:.3f}"
    beyond = {True: "**yes**", False: "no", None: "-"}[p["beyond_spread"]]
    lines.append(f"| {p['dataset']} | {p['noise']:g} | {p['method']} | {p['reference']} | "
                 f"{p['metric']} | {_signed(p['diff'])} | {thr} | {beyond} | {wp} |")
  if v["noise_drops"]:
    lines += ["", "Clean minus noisy accuracy (points):", "",
              "| dataset | method | metric | drop | 2 x pooled sd | beyond spread |",
              "|---|---|---|---|---|---|"]
    for d in v["noise_drops"]:
      thr = "-" if d["threshold"] is None else f"{100 * d['threshold']:.2f}"
      beyond = {True: "**yes**", False: "no", None: "-"}[d["beyond_spread"]]
      lines.append(f"| {d['dataset']} | {d['method']} | {d['metric']} | "
                   f"{_signed(d['diff'])} | {thr} | {beyond} |")
  return lines


def plot_accuracy(summary: Dict[str, Dict[str, Any]], setting: Setting,
                  datasets: Sequence[str], path: str) -> None:
  """Bar chart: probe and kNN accuracy per method and noise, error bars = sd over seeds."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [(ds, metric) for ds in datasets for metric in ("linear_probe", "knn")]
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  width = 0.8 / len(setting.noises)
  x = np.arange(len(setting.methods))
  for ax, (ds, metric) in zip(axes[0], panels):
    lows = []
    for i, n in enumerate(setting.noises):
      stats = [summary.get(f"{ds}|{n:g}|{m}", {}).get(metric, {"mean": None, "std": None})
               for m in setting.methods]
      mean = [100 * (s["mean"] or np.nan) for s in stats]
      err = [100 * (s["std"] or 0.0) for s in stats]
      lows += [v for v in mean if np.isfinite(v)]
      ax.bar(x + (i - (len(setting.noises) - 1) / 2) * width, mean, width, yerr=err,
             capsize=3, label=f"label noise {n:g}")
    ax.set_ylim(max(0.0, min(lows, default=10.0) - 10.0), 100.0)
    ax.set_xticks(x)
    ax.set_xticklabels([m.replace("projnce_", "pj ") for m in setting.methods], rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{ds}: {'linear probe' if metric == 'linear_probe' else 'kNN'}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_markdown(path: str, result: Dict[str, Any], setting: Setting,
                   datasets: Sequence[str]) -> None:
  """results.md: set-up, command and machine, the tables and the verdict."""
  mach = result["machine"]
  s = result["setting"]
  lines = [
      "# Cross-entropy vs SupCon vs ProjNCE projections under label noise", "",
      f"Command: `{result['command']}`  ",
      f"Machine: {mach['machine']}, {mach['cpu_count']} CPU cores (load average at the start "
      "of this invocation "
      f"{mach['load_average'][0]:.1f}), jax {mach['jax']}, devices {mach['devices']}  ",
      f"Date: {result['date']}; sweep wall time {result['wall_seconds']:.0f} s "
      f"({result['cells_run_now']} cells run by this invocation, "
      f"{result['cells_total'] - result['cells_run_now']} reused from earlier "
      f"invocations); cell wall times (when each cell ran): mean "
      f"{result['mean_cell_seconds']:.1f} s, sum {result['sum_cell_seconds']:.0f} s.", "",
      f"Set-up: small_cnn widths {tuple(s['widths'])}, extra_convs {s['extra_convs']}, batch "
      f"{s['batch_size']} x 2 views, "
      + (f"{s['num_steps']} steps" if s["num_steps"] else f"{s['num_epochs']} epochs")
      + f", SGD base_lr {s['base_lr']} (per 256) with warm-up + cosine, crop scale "
      f"{tuple(s['crop_scale'])}, temperature 0.1; ProjNCE with g- = sample, beta = 1; "
      f"symmetric label noise on the training labels only (seed = run seed); "
      f"seeds {tuple(s['seeds'])}. Evaluation: linear probe ({s['probe_epochs']} epochs, "
      "final epoch) and cosine kNN (k = 200) on frozen encoder features, clean test labels. "
      "Held-out MI bound (nats): log(N-1) - infonce_term - adjustment of the trained critic "
      "on the test split, clean labels, one unaugmented view per example "
      "(`heldout_mi_bound` of results.json; the last training batch's figure, an estimate "
      "and not a bound, is kept in results.json as `train_batch_mi_estimate`).", "",
      "Values: mean +- sd over seeds (sd with ddof = 1), accuracy in %.", ""]
  for ds in datasets:
    lines += [f"## {ds}", ""] + accuracy_table(result["summary"], setting, ds) + [""]
  lines += ["![accuracy](accuracy.png)", "", "## Verdict", ""]
  lines += verdict_lines(result["verdict"])
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# The sweep.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder (cells go to OUT/runs/)")
  p.add_argument("--small", action="store_true", help="2 cells at a tiny scale (a test)")
  p.add_argument("--datasets", default="mnist5k",
                 help="comma-separated: mnist5k, fashion_mnist_local")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  args = parse_args(argv)
  setting = SMALL if args.small else FULL
  datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
  os.makedirs(args.out, exist_ok=True)
  enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = machine_info()
  t0 = time.perf_counter()
  cells, ran = [], 0
  grid = [(ds, n, m, s) for ds in datasets for n in setting.noises
          for m in setting.methods for s in setting.seeds]
  for i, (ds, noise, name, seed) in enumerate(grid):
    workdir = cell_dir(args.out, ds, noise, name, seed)
    config = build_config(setting, ds, METHODS[name], noise, seed)
    res, now = run_cell(config, workdir)
    ran += now
    rec = _cell_record(res, dataset=ds, noise=noise, method=name, seed=seed,
                       status=res.get("status", "ok"), wall_seconds=res.get("wall_seconds"))
    cells.append(rec)
    print(f"[{i + 1}/{len(grid)}] {ds} noise={noise:g} {name} seed={seed}: "
          f"{'ran' if now else 'reused'} {rec['status']} probe={rec['linear_probe_accuracy']} "
          f"knn={rec['knn_accuracy']} ({rec['wall_seconds'] or 0:.1f} s)", flush=True)
  summary = summarize(cells)
  walls = [c["wall_seconds"] for c in cells if c["wall_seconds"]]
  result = {
      "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1]] + sys.argv),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": machine, "setting": dataclasses.asdict(setting), "datasets": datasets,
      "methods": {m: METHODS[m] for m in setting.methods},
      "wall_seconds": time.perf_counter() - t0, "cells_total": len(cells),
      "cells_run_now": ran, "mean_cell_seconds": float(np.mean(walls)) if walls else 0.0,
      "sum_cell_seconds": float(np.sum(walls)) if walls else 0.0,
      "cells": cells, "summary": summary,
      "verdict": verdict(summary, setting, datasets),
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot_accuracy(summary, setting, datasets, os.path.join(args.out, "accuracy.png"))
  write_markdown(os.path.join(args.out, "results.md"), result, setting, datasets)
  print(f"wrote {args.out}/results.md ({result['wall_seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()

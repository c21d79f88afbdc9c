"""Does a larger beta spread the clusters? ProjNCE beta in {0, 1, 5, 10} at label noise 0.3.

Runs (each over seeds 0, 1, 2): SupCon, and ProjNCE with g+ = centroid, g- = sample and
beta in {0, 1, 5, 10} (beta = 0 is SupCon's loss; beta = 1 is ProjNCE), on mnist5k with
30% symmetric label noise, at the training scale of experiments/paper_comparison (the same
cell runner and trainer). For every run the script keeps the test-set embeddings and
measures on the L2-normalised projection-head outputs z (and, second, on the normalised
encoder features h), with the true test labels and m_c the normalised mean of class c:

  intra = mean_i (1 - cos(z_i, m_{y_i}))          spread of each class around its mean
  inter = mean_{c != c'} (1 - cos(m_c, m_c'))    distance between class means
  ratio = intra / inter                          (lower: tighter, better separated)

Figure (like the paper's Figure 1): t-SNE of the seed-0 test embeddings z, coloured by
true class, for SupCon | ProjNCE (beta = 1) | beta = 5 | beta = 10.

Usage::

  python experiments/beta_geometry/run.py --out experiments/beta_geometry
  python experiments/beta_geometry/run.py --out /tmp/bg --small          # seconds

Writes OUT/results.md (tables and the verdict computed here), OUT/results.json and
OUT/tsne.png; cells live in OUT/runs/ and are reused when finished.

Verdict rule (as in paper_comparison): beta = b differs from beta = 0 when |mean
difference| > 2 * pooled sd over seeds; the trend is the Spearman correlation of the
per-seed values with beta.
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


def _load_paper_comparison():
  """experiments/paper_comparison/run.py as a module (its cell runner and statistics)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "paper_comparison",
                      "run.py")
  spec = importlib.util.spec_from_file_location("paper_comparison_run", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up by name
  spec.loader.exec_module(module)
  return module


pc = _load_paper_comparison()

BETAS = (0.0, 1.0, 5.0, 10.0)
NOISE = 0.3
EMBEDDINGS = "embeddings.npz"
METRICS = ("intra", "inter", "ratio")
PANELS = (("supcon", "SupCon"), ("beta1", "ProjNCE (beta=1)"), ("beta5", "beta=5"),
          ("beta10", "beta=10"))


def runs_for(betas: Sequence[float]) -> Dict[str, Dict[str, Any]]:
  """Run name -> config overrides: SupCon and ProjNCE (centroid/sample) at each beta."""
  runs = {"supcon": {"method": "supcon"}}
  for b in betas:
    runs[f"beta{b:g}"] = {"method": "projnce",
                          "loss": {"positive": "centroid", "negative": "sample", "beta": b}}
  return runs


FULL = dataclasses.replace(pc.FULL, noises=(NOISE,))
SMALL = dataclasses.replace(pc.SMALL, noises=(NOISE,), seeds=(0,))
SMALL_BETAS = (5.0,)


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
# Statistics, verdict and outputs.


def spearman(x: Sequence[float], y: Sequence[float]) -> Dict[str, Optional[float]]:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(set(x)) < 2 or len(y) < 3:
    return {"rho": None, "p": None}
  r = stats.spearmanr(x, y)
  return {"rho": float(r.statistic), "p": float(r.pvalue)}


def summarize(cells: List[Dict[str, Any]], runs: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  """Per run: mean/sd over seeds of accuracy, held-out MI bound and the spread measures."""
  out = {}
  for name in runs:
    cs = [c for c in cells if c["run"] == name and c["status"] == "ok"]
    s = {"seeds": [c["seed"] for c in cs],
         "diverged": [c["seed"] for c in cells if c["run"] == name and c["status"] != "ok"]}
    for key in ("linear_probe_accuracy", "knn_accuracy", "heldout_mi_bound", "adjustment"):
      s[key] = pc.mean_std([c.get(key) for c in cs])
    for space in ("z", "features"):
      for m in METRICS:
        vals = [c["geometry"][space][m] for c in cs]
        s[f"{space}/{m}"] = dict(pc.mean_std(vals), values=vals)
    out[name] = s
  return out


def verdict(cells: List[Dict[str, Any]], summary: Dict[str, Dict[str, Any]],
            betas: Sequence[float]) -> Dict[str, Any]:
  """Each beta against beta = 0 and the Spearman trend in beta, per measure."""
  ok = [c for c in cells if c["status"] == "ok" and c["beta"] is not None]
  out: Dict[str, Any] = {"rule": f"|mean difference| > {pc.SPREAD:g} * pooled sd over seeds",
                         "measures": {}}
  base = summary.get("beta0")
  for space in ("z", "features"):
    for m in METRICS:
      key = f"{space}/{m}"
      trend = spearman([c["beta"] for c in ok], [c["geometry"][space][m] for c in ok])
      vs0 = {}
      if base is not None:
        for b in betas:
          if b != 0 and f"beta{b:g}" in summary:
            vs0[f"{b:g}"] = pc.compare(summary[f"beta{b:g}"][key]["values"], base[key]["values"])
      out["measures"][key] = {"spearman": trend, "vs_beta0": vs0}
  for acc in ("linear_probe_accuracy", "knn_accuracy"):
    vals = {c["run"]: [] for c in ok}
    for c in ok:
      vals[c["run"]].append(c[acc])
    out[acc] = {f"{b:g}": pc.compare(vals.get(f"beta{b:g}", []), vals.get("beta0", []))
                for b in betas if b != 0}
  sup, b0 = summary.get("supcon"), summary.get("beta0")
  if sup and b0:
    out["supcon_minus_beta0"] = {k: pc.compare(
        [c[k] for c in cells if c["run"] == "supcon" and c["status"] == "ok"],
        [c[k] for c in cells if c["run"] == "beta0" and c["status"] == "ok"])
                                 for k in ("linear_probe_accuracy", "knn_accuracy")}
    out["supcon_minus_beta0"]["identical"] = _same_cells(cells, "supcon", "beta0")
  out["spread_claim"] = _claim(out["measures"], betas)
  return out


def _same_cells(cells: List[Dict[str, Any]], a: str, b: str) -> bool:
  """Whether runs a and b have equal accuracy and geometry in every seed."""
  def key(c):
    return (c["linear_probe_accuracy"], c["knn_accuracy"], json.dumps(c.get("geometry")))
  ca = {c["seed"]: key(c) for c in cells if c["run"] == a}
  cb = {c["seed"]: key(c) for c in cells if c["run"] == b}
  return bool(ca) and ca == cb


def _claim(measures: Dict[str, Any], betas: Sequence[float]) -> Dict[str, Any]:
  """Does the largest beta raise intra (z) beyond the seed spread, with a positive trend?"""
  top = f"{max(betas):g}"
  res = {}
  for m in METRICS:
    c = measures[f"z/{m}"]["vs_beta0"].get(top, {})
    rho = measures[f"z/{m}"]["spearman"]["rho"]
    res[m] = {"beta": top, "diff": c.get("diff"), "beyond_spread": c.get("beyond_spread"),
              "rho": rho}
  return res


def _ms(stat: Dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
  if stat["mean"] is None:
    return "-"
  sd = f" +- {scale * stat['std']:.{digits}f}" if stat["std"] is not None else ""
  return f"{scale * stat['mean']:.{digits}f}{sd}"


def _fmt(x: Optional[float], digits: int = 3) -> str:
  return "-" if x is None else f"{x:+.{digits}f}"


def accuracy_sentence(v: Dict[str, Any], beta: str) -> Optional[str]:
  """How the probe and kNN accuracy at `beta` compare with beta = 0 (None: no data)."""
  parts = []
  for key, label in (("linear_probe_accuracy", "linear probe"), ("knn_accuracy", "kNN")):
    c = v[key].get(beta, {})
    if c.get("diff") is None:
      return None
    sig = "beyond" if c["beyond_spread"] else "within"
    parts.append(f"{label} {100 * c['diff']:+.2f} points ({sig} the seed spread)")
  return f"Accuracy at beta = {beta} against beta = 0: " + ", ".join(parts) + "."


def claim_sentence(claim: Dict[str, Any], v: Optional[Dict[str, Any]] = None) -> List[str]:
  """Plain-language verdict on 'larger beta spreads the clusters', from the numbers."""
  out = []
  words = {"intra": "the spread of each class around its mean (intra)",
           "inter": "the distance between class means (inter)",
           "ratio": "intra / inter"}
  for m, c in claim.items():
    if c["diff"] is None:
      out.append(f"- {words[m]}: not enough seeds to judge.")
      continue
    direction = "larger" if c["diff"] > 0 else "smaller"
    sig = "beyond" if c["beyond_spread"] else "within"
    rho = "-" if c["rho"] is None else f"{c['rho']:+.2f}"
    out.append(f"- {words[m]} is {direction} at beta = {c['beta']} than at beta = 0 by "
               f"{abs(c['diff']):.4f}, {sig} the seed spread (Spearman rho over beta "
               f"{rho}).")
  intra = claim["intra"]
  if intra["diff"] is None:
    head = "Not enough seeds for a verdict."
  elif intra["diff"] > 0 and intra["beyond_spread"]:
    head = ("**Holds** in the intra-class sense: the largest beta spreads the classes of z "
            "beyond the seed spread")
    ratio = claim["ratio"]
    if ratio["diff"] is not None and ratio["diff"] > 0 and ratio["beyond_spread"]:
      head += (", but into each other, not apart: intra / inter rises beyond the seed "
               "spread too, so the classes overlap more.")
    else:
      head += "; intra / inter does not rise beyond the seed spread."
  elif intra["diff"] > 0:
    head = ("**Not shown**: intra-class spread rises with the largest beta, but within the "
            "seed spread.")
  else:
    head = ("**Does not hold** here: the largest beta does not spread the classes of z "
            "(intra-class spread is not larger than at beta = 0).")
  acc = accuracy_sentence(v, intra["beta"]) if v is not None else None
  return [head, ""] + out + ([f"- {acc}"] if acc else [])


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
  """results.md: command, machine, set-up, tables and the verdict."""
  mach, s, v = result["machine"], result["setting"], result["verdict"]
  lines = [
      "# Does a larger beta spread the clusters? (label noise 0.3)", "",
      f"Command: `{result['command']}`  ",
      f"Machine: {mach['machine']}, {mach['cpu_count']} CPU cores (load average at the start "
      "of this invocation "
      f"{mach['load_average'][0]:.1f}), jax {mach['jax']}  ",
      f"Date: {result['date']}; wall time of this invocation {result['wall_seconds']:.0f} s "
      f"({result['cells_run_now']} of {result['cells_total']} cells run by it, t-SNE "
      f"{result['tsne_seconds']:.0f} s); cell wall times (when each cell ran): sum "
      f"{result['sum_cell_seconds']:.0f} s.",
      "",
      f"Set-up: mnist5k, symmetric label noise {NOISE:g} on the training labels, small_cnn "
      f"widths {tuple(s['widths'])} (extra_convs {s['extra_convs']}), batch "
      f"{s['batch_size']} x 2 views, "
      + (f"{s['num_steps']} steps" if s["num_steps"] else f"{s['num_epochs']} epochs")
      + f", seeds {tuple(s['seeds'])}; ProjNCE with g+ = centroid, g- = sample, "
      "temperature 0.1. Spread measures on the test set (true labels), on the normalised "
      "projection-head outputs z and on the normalised encoder features h: intra = mean "
      "cosine distance of a point to its class-mean direction, inter = mean cosine distance "
      "between class-mean directions, ratio = intra / inter.", "",
      "Values: mean +- sd over seeds; accuracy in %.", "",
      "| run | probe | kNN | held-out MI bound (nats) | mean R (train batch) | intra (z) | inter (z) | ratio (z) | "
      "intra (h) | inter (h) | ratio (h) |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name in runs:
    r = result["summary"][name]
    bad = f" ({len(r['diverged'])} diverged)" if r["diverged"] else ""
    lines.append(
        f"| {name}{bad} | {_ms(r['linear_probe_accuracy'], 100, 2)} | "
        f"{_ms(r['knn_accuracy'], 100, 2)} | {_ms(r['heldout_mi_bound'])} | "
        f"{_ms(r['adjustment'])} | "
        + " | ".join(_ms(r[f"{sp}/{m}"], 1, 4) for sp in ("z", "features") for m in METRICS)
        + " |")
  lines += ["", "![t-SNE](tsne.png)", "",
            f"t-SNE of the seed-0 test embeddings z ({result['tsne_points']:,} points, "
            "coloured by true class); titles give that run's intra / inter.", "", "## Verdict", "",
            f"Rule: {v['rule']}; trend = Spearman correlation of the per-seed value with beta "
            "(all seeds and betas).", ""]
  lines += claim_sentence(v["spread_claim"], v) + [""]
  lines += ["| measure | Spearman rho (p) | " + " | ".join(
      f"beta={b} - beta=0 (2 x pooled sd)" for b in result["betas_vs0"]) + " |",
      "|---|---|" + "---|" * len(result["betas_vs0"])]
  for key, mv in v["measures"].items():
    sp = mv["spearman"]
    rho = "-" if sp["rho"] is None else f"{sp['rho']:+.2f} ({sp['p']:.3f})"
    cols = []
    for b in result["betas_vs0"]:
      c = mv["vs_beta0"].get(b, {})
      if c.get("diff") is None:
        cols.append("-")
        continue
      mark = " **beyond**" if c["beyond_spread"] else ""
      cols.append(f"{_fmt(c['diff'], 4)} ({c['threshold']:.4f}){mark}")
    lines.append(f"| {key} | {rho} | " + " | ".join(cols) + " |")
  for acc, label in (("linear_probe_accuracy", "probe"), ("knn_accuracy", "kNN")):
    cols = []
    for b in result["betas_vs0"]:
      c = v[acc].get(b, {})
      if c.get("diff") is None:
        cols.append("-")
        continue
      mark = " **beyond**" if c["beyond_spread"] else ""
      cols.append(f"{100 * c['diff']:+.2f} pts ({100 * c['threshold']:.2f}){mark}")
    lines.append(f"| {label} accuracy | - | " + " | ".join(cols) + " |")
  if "supcon_minus_beta0" in v:
    d = v["supcon_minus_beta0"]
    txt = ", ".join(
        f"{k.split('_accuracy')[0]} {_fmt(None if c['diff'] is None else 100 * c['diff'], 2)}"
        " pts" for k, c in d.items() if k != "identical")
    same = "yes" if d["identical"] else "no"
    lines += ["", f"SupCon minus ProjNCE beta = 0 (the same loss): {txt}; identical accuracy "
              f"and spread measures in every seed: {same}."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------
# The sweep.


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder (cells go to OUT/runs/)")
  p.add_argument("--small", action="store_true", help="2 cells at a tiny scale (a test)")
  args = p.parse_args(argv)
  setting, betas = (SMALL, SMALL_BETAS) if args.small else (FULL, BETAS)
  runs = runs_for(betas)
  os.makedirs(args.out, exist_ok=True)
  pc.enable_compilation_cache(os.path.join(args.out, "runs", ".jax_cache"))
  machine = pc.machine_info()
  t0 = time.perf_counter()
  cells, ran, dirs = [], 0, {}
  grid = [(name, seed) for seed in setting.seeds for name in runs]
  for i, (name, seed) in enumerate(grid):
    workdir = os.path.join(args.out, "runs", name, f"seed{seed}")
    config = pc.build_config(setting, "mnist5k", runs[name], NOISE, seed)
    hook = embedding_hook(config, workdir)
    res, now = pc.run_cell(config, workdir, hooks=[hook], done=has_embeddings)
    ran += now
    status = res.get("status", "ok")
    beta = runs[name].get("loss", {}).get("beta")
    cell = dict(run=name, seed=seed, beta=beta, status=status,
                wall_seconds=res.get("wall_seconds"),
                **{k: res.get(k) for k in ("linear_probe_accuracy", "knn_accuracy",
                                           "heldout_mi_bound", "adjustment", "final_loss")})
    if status == "ok":
      cell["geometry"] = geometry(workdir)
      if seed == setting.seeds[0]:
        dirs[name] = workdir
    cells.append(cell)
    print(f"[{i + 1}/{len(grid)}] {name} seed={seed}: {'ran' if now else 'reused'} {status} "
          f"probe={cell['linear_probe_accuracy']} knn={cell['knn_accuracy']} "
          f"z={cell.get('geometry', {}).get('z')} ({cell['wall_seconds'] or 0:.1f} s)",
          flush=True)
  summary = summarize(cells, list(runs))
  result = {
      "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1]] + sys.argv),
      "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine,
      "setting": dataclasses.asdict(setting), "noise": NOISE, "runs": runs,
      "betas_vs0": [f"{b:g}" for b in betas if b != 0],
      "cells_total": len(cells), "cells_run_now": ran,
      "tsne_points": 200 if args.small else 1000, "cells": cells, "summary": summary,
      "verdict": verdict(cells, summary, betas),
  }
  spreads = {n: next(c["geometry"]["z"] for c in cells if c["run"] == n and c["status"] == "ok"
                     and c["seed"] == setting.seeds[0]) for n in dirs}
  t_tsne = time.perf_counter()
  plot_tsne(dirs, spreads, os.path.join(args.out, "tsne.png"),
            points=result["tsne_points"])
  result["tsne_seconds"] = time.perf_counter() - t_tsne
  result["sum_cell_seconds"] = float(sum(c["wall_seconds"] or 0.0 for c in cells))
  result["wall_seconds"] = time.perf_counter() - t0
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  write_markdown(os.path.join(args.out, "results.md"), result, list(runs))
  print(f"wrote {args.out}/results.md ({result['wall_seconds']:.0f} s)")
  return result


if __name__ == "__main__":
  main()

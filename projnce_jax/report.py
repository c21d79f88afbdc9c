"""Results tables (markdown/JSON) and plots: loss and accuracy curves, t-SNE, MI figures.

MI columns: "held-out MI bound" is the bound evaluated after training on the eval split
(clean labels, one view per example; `train/mi_eval.py`); "train-batch MI estimate" is the
last training batch's log(N-1) - infonce_term - adjustment, an estimate that can exceed
I(X;C), never called a bound.

Per run (WORKDIR):      report.md, curves.png, tsne.png, tsne.npz
Comparison (WORKDIR):   report.md (table of all runs), curves.png, tsne.png

Example:
  >>> table = results_table([{"name": "supcon", "linear_probe_accuracy": 0.97}])
  >>> "| supcon |" in table
  True
"""
from projnce_jax._extras import require as _require

_require("projnce_jax.report", "matplotlib", "sklearn")
import os
from typing import Any, Dict, List, Optional, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from projnce_jax.train.writers import read_metrics  # noqa: E402

COLUMNS = (
    ("name", "run", "{}"),
    ("method", "method", "{}"),
    ("linear_probe_accuracy", "linear probe (%)", "{:.2f}", 100.0),
    ("knn_accuracy", "kNN (%)", "{:.2f}", 100.0),
    ("online_probe_accuracy", "online probe (%)", "{:.2f}", 100.0),
    ("final_loss", "final loss", "{:.4f}"),
    ("heldout_mi_bound", "held-out MI bound (nats)", "{:.3f}"),
    ("train_batch_mi_estimate", "train-batch MI estimate (nats)", "{:.3f}"),
    ("train_seconds", "train time (s)", "{:.0f}"),
)


def _cell(value: Any, fmt: str, scale: float = 1.0) -> str:
  if value is None:
    return "-"
  if isinstance(value, (int, float)):
    return fmt.format(value * scale)
  return str(value)


def results_table(rows: Sequence[Dict[str, Any]], columns=COLUMNS) -> str:
  """A markdown table with one row per result dict (missing values as "-")."""
  head = "| " + " | ".join(c[1] for c in columns) + " |"
  sep = "|" + "|".join("---" for _ in columns) + "|"
  lines = [head, sep]
  for r in rows:
    lines.append("| " + " | ".join(
        _cell(r.get(c[0]), c[2], *(c[3:] or (1.0,))) for c in columns) + " |")
  return "\n".join(lines)


def tsne_2d(x: np.ndarray, *, max_points: int = 1000, seed: int = 0):
  """t-SNE (sklearn) of up to `max_points` rows of x: [n, f] -> ([m, 2], chosen row ids).

  Runs on one OpenMP thread: Barnes-Hut's threads busy-wait when the cores are taken (by
  XLA's pool, other runs, test workers). On the 2-core CPU at load average 3 one thread
  took 0.6 s instead of 28 s for 100 points and 10 s instead of 33 s for 1000; idle (load
  0.9) it costs 9.9 s against 7.0 s for 1000 points (0.64 s either way for 100).
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  idx = np.sort(rng.permutation(len(x))[:max_points])
  pts = x[idx].astype(np.float64)
  perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3)))
  with threadpool_limits(limits=1, user_api="openmp"):
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
               ).fit_transform(pts)
  return emb.astype(np.float32), idx


def _scatter(ax, emb, labels, title, legend=True):
  """A t-SNE panel, one colour per class, with a class legend beside it."""
  labels = np.asarray(labels)
  classes = np.unique(labels)
  cmap = plt.get_cmap("tab10" if classes.max() < 10 else "tab20")
  for c in classes:
    rows = labels == c
    ax.scatter(emb[rows, 0], emb[rows, 1], color=cmap(int(c) % cmap.N), s=4, alpha=0.8,
               label=str(int(c)))
  if legend:
    ax.legend(title="class", fontsize=6, title_fontsize=7, markerscale=2.5, frameon=False,
              loc="center left", bbox_to_anchor=(1.0, 0.5))
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_curves(runs: Dict[str, List[Dict[str, Any]]], path: str) -> None:
  """Loss, online-probe accuracy and the train-batch MI estimate against step, per run.

  The logged `mi_lower_bound` of a training batch is plotted as an estimate (it is not a
  bound on data the critic was fitted to).
  """
  keys = [("loss", "training loss"), ("probe_accuracy", "online probe accuracy"),
          ("mi_lower_bound", "train-batch MI estimate (nats)")]
  keys = [k for k in keys if any(k[0] in r for recs in runs.values() for r in recs)]
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
  for ax, (key, title) in zip(axes[0], keys):
    for name, recs in runs.items():
      pts = [(r["step"], r[key]) for r in recs if key in r and r[key] is not None]
      if pts:
        s, v = zip(*pts)
        ax.plot(s, v, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _mi_note(results: Dict[str, Any]) -> str:
  """One sentence on what the two MI columns are (and the held-out set's size)."""
  if results.get("heldout_mi_bound") is None:
    return ("MI: no held-out bound for this method; the train-batch estimate (if any) is "
            "not a bound.")
  se = results.get("heldout_mi_bound_se")
  se_txt = f" +- {se:.3f} (s.e.)" if se is not None else ""
  return (f"Held-out MI bound: {results['heldout_mi_bound']:.3f}{se_txt} nats on the "
          f"{results.get('heldout_mi_split', 'test')} split, clean labels, one view per "
          f"example, {results.get('heldout_mi_num_batches')} batches of "
          f"{results.get('heldout_mi_batch_size')} rows. The train-batch estimate comes from "
          "the last training batch (fitted parameters, training labels, two views) and is "
          "not a bound.")


def write_run_report(workdir: str, results: Dict[str, Any],
                     test_features: Optional[Dict[str, np.ndarray]] = None, *,
                     config: Any = None) -> str:
  """report.md for one run: table, curves, t-SNE of test features. Returns its path."""
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  name = results.get("name", "run")
  plot_curves({name: records}, os.path.join(workdir, "curves.png"))
  tsne_cfg = getattr(config, "report", None)
  has_tsne = False
  if test_features is not None and (tsne_cfg is None or tsne_cfg.tsne):
    max_points = tsne_cfg.tsne_points if tsne_cfg is not None else 1000
    emb, idx = tsne_2d(test_features["features"], max_points=max_points)
    labels = test_features["label"][idx]
    np.savez(os.path.join(workdir, "tsne.npz"), embedding=emb, label=labels)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    _scatter(ax, emb, labels, f"{name}: test features (t-SNE)")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "tsne.png"), dpi=110)
    plt.close(fig)
    has_tsne = True
  lines = [f"# {name}: {results.get('method', '')} on {results.get('dataset', '')}", "",
           results_table([results]), "",
           f"{results.get('steps')} steps ({results.get('epochs', 0):.1f} epochs), batch "
           f"{results.get('batch_size')}, {results.get('num_devices')} device(s), model "
           f"{results.get('model')}, label noise {results.get('label_noise')}.",
           "Linear probe: frozen encoder features, test accuracy after the final epoch. "
           "kNN: cosine, k=200, temperature-weighted votes.",
           _mi_note(results), "",
           "![curves](curves.png)", ""]
  if has_tsne:
    lines += ["![t-SNE](tsne.png)", ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def write_comparison_report(workdir: str, results: Sequence[Dict[str, Any]]) -> str:
  """report.md comparing runs stored in WORKDIR/<name>/; prints nothing. Returns its path."""
  names = [r["name"] for r in results]
  records = {n: read_metrics(os.path.join(workdir, n, "metrics.jsonl")) for n in names}
  plot_curves(records, os.path.join(workdir, "curves.png"))
  tsnes = [(n, os.path.join(workdir, n, "tsne.npz")) for n in names]
  tsnes = [(n, p) for n, p in tsnes if os.path.exists(p)]
  if tsnes:
    fig, axes = plt.subplots(1, len(tsnes), figsize=(3.6 * len(tsnes) + 0.8, 3.6),
                             squeeze=False)
    for i, (ax, (n, p)) in enumerate(zip(axes[0], tsnes)):
      d = np.load(p)
      _scatter(ax, d["embedding"], d["label"], n, legend=i == len(tsnes) - 1)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "tsne.png"), dpi=110)
    plt.close(fig)
  first = results[0] if results else {}
  lines = [f"# Comparison on {first.get('dataset', '')} ({first.get('model', '')})", "",
           results_table(results), "",
           f"Each run: {first.get('steps')} steps ({first.get('epochs', 0):.1f} epochs), "
           f"batch {first.get('batch_size')}, same encoder and augmentations. Linear probe "
           "on frozen features, final-epoch test accuracy; kNN cosine k=200.", "",
           "![curves](curves.png)", ""]
  if tsnes:
    lines += ["![t-SNE of test features](tsne.png)", ""]
  lines += ["Per-run reports: " + ", ".join(f"[{n}]({n}/report.md)" for n in names), ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path

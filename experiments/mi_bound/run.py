"""MI estimates of ProjNCE, its no-adjustment view and SupCon on a Gaussian mixture.

Data: M classes with uniform prior, class means mu_c = sep * e_c in R^d and isotropic
noise, x = mu_c + sigma * eps. I(X;C) = H(C) - E[H(C|X)] is computed by Monte Carlo from
the exact posterior p(c|x) = softmax_c(-||x - mu_c||^2 / (2 sigma^2)), with its standard
error. Batches of N rows (x_i, y_i) are drawn i.i.d.; the embeddings are the raw samples.

Estimates per batch (spec section 4):
  * ProjNCE bound (with R): aux["mi_lower_bound"] = log(N-1) - infonce_term - adjustment,
    for g+ in {centroid, median, kernel, orthogonal, mlp} and g- = sample.
  * no R (beta = 0 view): log(N-1) - aux["infonce_term"], same projections.
  * SupCon: log(N-1) - infonce_term of `pj.losses.supcon`.
  * scaled g+: a [M, d] table alpha * (unit class-mean directions) as `positive=`, both
    without R and with it.
  * raw critic: the centroid rows again with normalize=False (the dot product of the raw
    samples as critic).
  * oracle critic: g+ = g- = mu_c / sigma^2 on the raw samples (R = 0); at tau = 1 its
    score is log p(c|x) up to a constant, the critic that makes the bound tight as N grows.
    A check that the Monte Carlo truth is reachable.

Trained critics (section "Trained critics" of results.md, trained_critics.png): a small MLP
encoder trained with ProjNCE (g+ = centroid, g- = sample, beta = 1, Adam) on n samples of
the mixture, for several n, temperatures and seeds. Then the same quantity
log(N-1) - infonce_term - adjustment is evaluated on training batches (rows the critic was
fitted to: the figure a trainer logs; an estimate, not a bound) and on fresh held-out
batches of N = 256 (the bound). The table says, per (tau, n), whether the training-batch
estimate passes I(X;C) and whether the held-out bound stays below it.

Usage::

  python experiments/mi_bound/run.py --out experiments/mi_bound          # full setting
  python experiments/mi_bound/run.py --out /tmp/mi --small               # seconds

Writes results.md (table and computed verdict), results.json and mi_bound.png to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import projnce_jax as pj

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

PROJECTIONS = ("centroid", "median", "kernel", "orthogonal", "mlp")
SIGNIFICANCE = 2.0  # combined standard errors for a "significant" excess


@dataclasses.dataclass(frozen=True)
class Setting:
  """One experiment configuration.

  Attributes:
    num_classes: M.
    dim: d (d >= M, so that the 'orthogonal' projection exists).
    sep: norm of each class mean (mu_c = sep * e_c).
    sigma: noise standard deviation.
    batch_sizes: the N values.
    temperatures: the tau values.
    num_batches: independent batches per (N, tau) cell.
    alphas: scales of the scaled-up g+ table.
    mc_samples: Monte Carlo samples for I(X;C).
    chunk: batches evaluated together under vmap (memory bound).
    seed: base seed of the data and the mlp parameters.
    train_sizes: training-set sizes n of the trained critics.
    critic_temperatures: tau of the trained critics.
    critic_seeds: seeds (initialisation and training set) per (n, tau).
    critic_steps: Adam steps per critic (batches of min(n, critic_batch) rows).
    critic_batch: rows per training step and per training-batch estimate.
    critic_width: hidden width of the two-layer MLP encoder.
    heldout_batches: fresh batches of N = critic_batch rows for the held-out bound.
  """
  num_classes: int = 8
  dim: int = 16
  sep: float = 2.0
  sigma: float = 1.0
  batch_sizes: Tuple[int, ...] = (64, 256, 1024)
  temperatures: Tuple[float, ...] = (0.1, 0.5, 1.0)
  num_batches: int = 100
  alphas: Tuple[float, ...] = (1.0, 5.0, 20.0)
  mc_samples: int = 200_000
  chunk: int = 10
  seed: int = 0
  train_sizes: Tuple[int, ...] = (64, 512, 4096, 32768)
  critic_temperatures: Tuple[float, ...] = (0.1, 0.5)
  critic_seeds: Tuple[int, ...] = (0, 1)
  critic_steps: int = 600
  critic_batch: int = 256
  critic_width: int = 128
  heldout_batches: int = 20


FULL = Setting()
SMALL = dataclasses.replace(FULL, batch_sizes=(64, 256), temperatures=(0.1, 1.0),
                            num_batches=4, mc_samples=20_000, chunk=4, train_sizes=(64, 1024),
                            critic_temperatures=(0.5,), critic_steps=300, heldout_batches=8)


@dataclasses.dataclass(frozen=True)
class Row:
  """One estimator (a row of the table).

  Attributes:
    key: short identifier used in results.json.
    label: the row name in results.md and the plot.
    call: name of the loss call whose aux it reads.
    kind: 'bound' (includes the adjustment R) or 'no_r' (log(N-1) - infonce_term).
    plot: whether it is drawn in mi_bound.png.
    negatives: 'sample' (g- = sample, the rows the bound claim is about) or 'class'.
  """
  key: str
  label: str
  call: str
  kind: str
  plot: bool = True
  negatives: str = "sample"


# ----------------------------------------------------------------------------------------
# The Gaussian mixture and its mutual information.


def class_means(s: Setting) -> np.ndarray:
  """[M, d] class means sep * e_c."""
  return s.sep * np.eye(s.num_classes, s.dim)


def sample_mixture(rng: np.random.Generator, means: np.ndarray, sigma: float,
                   shape: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
  """Draws labels uniformly and x = mu_y + sigma * eps; returns ([..., d], [...])."""
  y = rng.integers(0, means.shape[0], shape)
  x = means[y] + sigma * rng.standard_normal(shape + (means.shape[1],))
  return x, y


def log_posterior(x: np.ndarray, means: np.ndarray, sigma: float) -> np.ndarray:
  """[n, M] exact log p(c | x) under the uniform prior."""
  logits = -np.sum((x[:, None, :] - means[None]) ** 2, axis=2) / (2.0 * sigma**2)
  mx = logits.max(axis=1, keepdims=True)
  return logits - mx - np.log(np.exp(logits - mx).sum(axis=1, keepdims=True))


def true_mi(means: np.ndarray, sigma: float, num: int, seed: int,
            chunk: int = 50_000) -> Tuple[float, float, float]:
  """I(X;C) = log M - E[H(C|X)] by Monte Carlo, in nats.

  Returns:
    (estimate, its standard error, kappa = E[M sum_c p(c|x)^2] - 1). kappa sets the
    delta-method size kappa / (2 (N - 1)) of the upward bias that batch label counts
    n_c / (N - 1), used in place of p(c) = 1/M, give the oracle critic's estimate.
  """
  rng = np.random.default_rng(seed)
  neg_h, sq = [], []
  for start in range(0, num, chunk):
    x, _ = sample_mixture(rng, means, sigma, (min(chunk, num - start),))
    lp = log_posterior(x, means, sigma)
    neg_h.append(np.sum(np.exp(lp) * lp, axis=1))  # -H(C | x)
    sq.append(np.sum(np.exp(2 * lp), axis=1))
  v = np.log(means.shape[0]) + np.concatenate(neg_h)
  kappa = means.shape[0] * np.concatenate(sq).mean() - 1.0
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)), float(kappa)


# ----------------------------------------------------------------------------------------
# Estimators.


def scaled_table(means: np.ndarray, alpha: float) -> np.ndarray:
  """alpha * the unit class-mean directions, a [M, d] positive projection."""
  return alpha * means / np.linalg.norm(means, axis=1, keepdims=True)


def loss_calls(s: Setting, means: np.ndarray, params) -> Dict[str, Callable]:
  """Loss calls by name; each maps (x [N, d], y [N], tau) to the aux dict."""
  m = s.num_classes

  def proj(positive, **kw):
    return lambda x, y, t: pj.losses.projnce(x, y, temperature=t, positive=positive,
                                             negative="sample", num_classes=m, **kw)[1]

  calls = {p: proj(p, params=params) for p in PROJECTIONS}
  calls["supcon"] = lambda x, y, t: pj.losses.supcon(x, y, temperature=t, num_classes=m)[1]
  for a in s.alphas:
    # A jax array: a NumPy table trips the name check in projnce's validation.
    calls[f"scaled{a:g}"] = proj(jnp.asarray(scaled_table(means, a)), beta=0.0)
  calls["raw_centroid"] = proj("centroid", normalize=False)
  oracle = jnp.asarray(means / s.sigma**2)  # tau * log p(c|x) + const at tau = 1
  calls["oracle"] = lambda x, y, t: pj.losses.projnce(
      x, y, temperature=t, positive=oracle, negative=oracle, num_classes=m,
      normalize=False)[1]
  return calls


def estimator_rows(s: Setting) -> List[Row]:
  """The rows of the table, in order."""
  rows = [Row(f"bound/{p}", f"ProjNCE bound (R), g+={p}", p, "bound") for p in PROJECTIONS]
  rows += [Row(f"no_r/{p}", f"no R (beta=0), g+={p}", p, "no_r") for p in PROJECTIONS]
  rows.append(Row("supcon", "SupCon (no R)", "supcon", "no_r"))
  for a in s.alphas:
    rows.append(Row(f"scaled{a:g}/no_r", f"scaled g+ x{a:g}, no R", f"scaled{a:g}", "no_r"))
    rows.append(Row(f"scaled{a:g}/bound", f"scaled g+ x{a:g}, ProjNCE bound (R)",
                    f"scaled{a:g}", "bound"))
  rows.append(Row("raw/bound/centroid", "ProjNCE bound (R), g+=centroid, raw x",
                  "raw_centroid", "bound", plot=False))
  rows.append(Row("raw/no_r/centroid", "no R (beta=0), g+=centroid, raw x",
                  "raw_centroid", "no_r", plot=False))
  rows.append(Row("oracle", "oracle critic g+=g-=mu_c/sigma^2, raw x (R=0)", "oracle",
                  "bound", negatives="class"))
  return rows


def row_value(aux: dict, row: Row, log_n1):
  """The row's MI estimate from the aux dict of its call."""
  if row.kind == "bound":
    return aux["mi_lower_bound"]
  return log_n1 - aux["infonce_term"]


def make_evaluator(calls: Dict[str, Callable], rows: Sequence[Row], chunk: int):
  """A jitted fn (xs [B, N, d], ys [B, N], tau) -> {row key: [B] estimates}.

  Batches are vmapped in groups of `chunk` (jax.lax.map with batch_size).
  """

  def one_batch(x, y, tau):
    log_n1 = jnp.log(x.shape[0] - 1.0)
    auxes = {name: fn(x, y, tau) for name, fn in calls.items()}
    out = {r.key: row_value(auxes[r.call], r, log_n1) for r in rows}
    out["num_anchors_min"] = jnp.min(jnp.stack([a["num_anchors"] for a in auxes.values()]))
    return out

  @jax.jit
  def evaluate(xs, ys, tau):
    return jax.lax.map(lambda xy: one_batch(xy[0], xy[1], tau), (xs, ys), batch_size=chunk)

  return evaluate


# ----------------------------------------------------------------------------------------
# The experiment.


def cell_key(n: int, tau: float) -> str:
  return f"N={n},tau={tau:g}"


def run_cells(s: Setting, means: np.ndarray, rows: Sequence[Row], evaluator
              ) -> Dict[str, dict]:
  """Per (N, tau) cell: per-batch estimates of every row (same batches for all rows)."""
  cells = {}
  for n in s.batch_sizes:
    rng = np.random.default_rng([s.seed, n])
    xs, ys = sample_mixture(rng, means, s.sigma, (s.num_batches, n))
    xs, ys = jnp.asarray(xs), jnp.asarray(ys, jnp.int32)
    for tau in s.temperatures:
      t0 = time.perf_counter()
      out = {k: np.asarray(v) for k, v in evaluator(xs, ys, tau).items()}
      cells[cell_key(n, tau)] = dict(
          N=n, tau=tau, log_n1=float(np.log(n - 1)), seconds=time.perf_counter() - t0,
          min_anchors=int(out.pop("num_anchors_min").min()),
          values={r.key: out[r.key].tolist() for r in rows})
  return cells


def summarize(values: Sequence[float]) -> dict:
  """Mean, std and standard error over batches."""
  v = np.asarray(values, np.float64)
  std = float(v.std(ddof=1)) if v.size > 1 else 0.0
  return dict(mean=float(v.mean()), std=std, se=std / np.sqrt(v.size))


@dataclasses.dataclass(frozen=True)
class Truth:
  """The reference values.

  Attributes:
    mi: I(X;C) by Monte Carlo (nats).
    se: its Monte Carlo standard error.
    kappa: E[M sum_c p(c|x)^2] - 1 (see `true_mi`).
    log_m: log M = H(C), the largest possible I(X;C).
  """
  mi: float
  se: float
  kappa: float
  log_m: float

  def label_bias(self, n: int) -> float:
    """Delta-method upward bias kappa / (2 (N - 1)) of the oracle critic's estimate."""
    return self.kappa / (2.0 * (n - 1))


def cell_status(stat: dict, t: Truth, log_n1: float) -> dict:
  """Where a cell's mean lies relative to I(X;C), log M and log(N-1)."""
  excess = stat["mean"] - t.mi
  return dict(excess=excess, above_mi=excess > 0,
              significant=excess > SIGNIFICANCE * np.hypot(stat["se"], t.se),
              above_log_m=stat["mean"] > t.log_m, above_log_n1=stat["mean"] > log_n1)


def verdict(rows: Sequence[Row], cells: Dict[str, dict], t: Truth) -> dict:
  """Which rows stayed below I(X;C) in every cell and which exceeded it (and where)."""
  below, above = [], {}
  for r in rows:
    status = {ck: cell_status(c["stats"][r.key], t, c["log_n1"]) for ck, c in cells.items()}
    hits = {ck: st for ck, st in status.items() if st["above_mi"]}
    if hits:
      above[r.key] = hits
    else:
      below.append(r.key)
  bound_rows = [r.key for r in rows if r.kind == "bound" and r.negatives == "sample"]
  tightest = {}
  for ck, c in cells.items():
    key = max(bound_rows, key=lambda k: c["stats"][k]["mean"])
    tightest[ck] = dict(row=key, mean=c["stats"][key]["mean"], gap=t.mi - c["stats"][key]["mean"])
  supcon_diff = max(
      float(np.max(np.abs(np.subtract(c["values"]["supcon"], c["values"]["no_r/centroid"]))))
      for c in cells.values())
  return dict(below_everywhere=below, exceeded=above, sample_bound_rows=bound_rows,
              all_bounds_below=all(k in below for k in bound_rows),
              tightest_bound=tightest, supcon_vs_no_r_centroid_max_abs_diff=supcon_diff)


# ----------------------------------------------------------------------------------------
# Trained critics.


class CriticEncoder(nn.Module):
  """x [b, d] -> embedding [b, d]: Dense(width) - relu - Dense(width) - relu - Dense(d)."""
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.width)(x))
    h = nn.relu(nn.Dense(self.width)(h))
    return nn.Dense(x.shape[-1])(h)


def train_critic(s: Setting, means: np.ndarray, n: int, tau: float, seed: int) -> dict:
  """Trains one encoder with ProjNCE (beta = 1) on n samples; returns both MI figures.

  Returns:
    {"n", "tau", "seed", "train_estimate": mean over 8 training batches (rows of the
    training set, without replacement within a batch), "train_rows": rows per training
    batch, "heldout": mean over s.heldout_batches fresh batches, "heldout_se": its standard
    error, "seconds"}.
  """
  t0 = time.perf_counter()
  m = s.num_classes
  rng = np.random.default_rng([s.seed, 7, n, seed])
  x_np, y_np = sample_mixture(rng, means, s.sigma, (n,))
  x, y = jnp.asarray(x_np), jnp.asarray(y_np, jnp.int32)
  enc = CriticEncoder(s.critic_width)
  params = enc.init(jax.random.key(seed), x[:2])
  tx = optax.adam(1e-3)
  rows = min(n, s.critic_batch)

  def bound(p, xb, yb):
    _, aux = pj.losses.projnce(enc.apply(p, xb), yb, temperature=tau, positive="centroid",
                               negative="sample", beta=1.0, num_classes=m)
    return aux["mi_lower_bound"]

  @jax.jit
  def step(p, st, key, x, y):
    idx = jax.random.permutation(key, x.shape[0])[:rows]
    # ProjNCE's loss is log(N-1) - mi_lower_bound at beta = 1: maximise the bound.
    g = jax.grad(lambda p: -bound(p, x[idx], y[idx]))(p)
    u, st = tx.update(g, st, p)
    return optax.apply_updates(p, u), st

  bound_jit = jax.jit(bound)
  opt_state = tx.init(params)
  key = jax.random.key(1000 + seed)
  for i in range(s.critic_steps):
    params, opt_state = step(params, opt_state, jax.random.fold_in(key, i), x, y)
  train = [float(bound_jit(params, x[idx], y[idx])) for idx in
           (rng.permutation(n)[:rows] for _ in range(8))]
  xh, yh = sample_mixture(np.random.default_rng([s.seed, 8, n, seed]), means, s.sigma,
                          (s.heldout_batches, s.critic_batch))
  held = np.array([float(bound_jit(params, jnp.asarray(a), jnp.asarray(b, jnp.int32)))
                   for a, b in zip(xh, yh)])
  return dict(n=n, tau=tau, seed=seed, train_estimate=float(np.mean(train)),
              train_rows=rows, heldout=float(held.mean()),
              heldout_se=float(held.std(ddof=1) / np.sqrt(held.size)),
              seconds=time.perf_counter() - t0)


def trained_critics(s: Setting, means: np.ndarray, t: Truth) -> dict:
  """Every (tau, n, seed) critic, the per-(tau, n) summary and where the estimate passes."""
  runs = [train_critic(s, means, n, tau, seed) for tau in s.critic_temperatures
          for n in s.train_sizes for seed in s.critic_seeds]
  summary = {}
  for tau in s.critic_temperatures:
    for n in s.train_sizes:
      rs = [r for r in runs if r["tau"] == tau and r["n"] == n]
      tr = np.array([r["train_estimate"] for r in rs])
      ho = np.array([r["heldout"] for r in rs])
      # s.e. of the held-out mean: the batch s.e. of each critic, combined over critics,
      # and the Monte Carlo s.e. of the truth.
      se = float(np.sqrt(np.sum([r["heldout_se"] ** 2 for r in rs])) / len(rs))
      summary[f"tau={tau:g},n={n}"] = dict(
          tau=tau, n=n, train_estimate=float(tr.mean()), heldout=float(ho.mean()),
          heldout_se=se, train_above_mi=bool(tr.mean() > t.mi),
          train_above_mi_every_seed=bool(np.all(tr > t.mi)),
          heldout_below_mi_3se=bool(ho.mean() < t.mi + 3 * np.hypot(se, t.se)))
  passes = {}
  for tau in s.critic_temperatures:
    above = [n for n in s.train_sizes if summary[f"tau={tau:g},n={n}"]["train_above_mi"]]
    below = [n for n in s.train_sizes if n not in above]
    passes[f"{tau:g}"] = dict(above=above, below=below,
                              largest_n_above=max(above) if above else None)
  return dict(runs=runs, summary=summary, passes=passes,
              all_heldout_below=all(v["heldout_below_mi_3se"] for v in summary.values()))


def trained_md(s: Setting, tc: dict, t: Truth) -> List[str]:
  """The 'Trained critics' section of results.md."""
  out = ["## Trained critics", "",
         f"A two-layer MLP encoder (width {s.critic_width}) trained with ProjNCE (g+ = "
         f"centroid, g- = sample, beta = 1, Adam 1e-3, {s.critic_steps} steps of min(n, "
         f"{s.critic_batch}) rows) on n samples of the mixture; seeds "
         f"{tuple(s.critic_seeds)} (the seed draws the training set and the initialisation). "
         "Training-batch estimate: log(N-1) - infonce_term - adjustment on 8 batches of the "
         "training rows (what a trainer logs; not a bound). Held-out bound: the same on "
         f"{s.heldout_batches} fresh batches of N = {s.critic_batch}. Mean over seeds; "
         "s.e. of the held-out mean from the batch spread.", "",
         "| tau | n | training-batch estimate | held-out bound (+- s.e.) | estimate > I(X;C) | "
         "held-out < I(X;C) + 3 s.e. |", "|---|---|---|---|---|---|"]
  for v in tc["summary"].values():
    out.append(f"| {v['tau']:g} | {v['n']} | {v['train_estimate']:.3f} | "
               f"{v['heldout']:.3f} +- {v['heldout_se']:.3f} | "
               f"{'**yes**' if v['train_above_mi'] else 'no'} | "
               f"{'yes' if v['heldout_below_mi_3se'] else '**NO**'} |")
  out += ["", f"True I(X;C) = {t.mi:.4f} +- {t.se:.4f}.", ""]
  for tau, p in tc["passes"].items():
    if p["largest_n_above"] is None:
      out.append(f"- tau = {tau}: the training-batch estimate stays below I(X;C) at every n.")
    else:
      rest = (f"; at n = {', '.join(map(str, p['below']))} it is below" if p["below"]
              else "; it is above at every n tried")
      out.append(f"- tau = {tau}: the training-batch estimate passes I(X;C) at n = "
                 f"{', '.join(map(str, p['above']))}{rest}.")
  out.append(f"- Every held-out bound below I(X;C) + 3 s.e.: "
             f"**{'yes' if tc['all_heldout_below'] else 'NO'}**.")
  return out


def plot_trained(path: str, s: Setting, tc: dict, t: Truth) -> None:
  """Training-batch estimate and held-out bound against n, one panel per temperature."""
  fig, axes = plt.subplots(1, len(s.critic_temperatures),
                           figsize=(5.2 * len(s.critic_temperatures), 4), squeeze=False)
  ns = np.array(s.train_sizes)
  for ax, tau in zip(axes[0], s.critic_temperatures):
    rows = [tc["summary"][f"tau={tau:g},n={n}"] for n in ns]
    ax.plot(ns, [r["train_estimate"] for r in rows], "o-", color="#d62728",
            label="training-batch estimate")
    ax.errorbar(ns, [r["heldout"] for r in rows], yerr=[2 * r["heldout_se"] for r in rows],
                fmt="s-", color="#1f77b4", capsize=3, label="held-out bound (+- 2 s.e.)")
    for r in tc["runs"]:
      if r["tau"] == tau:
        ax.plot([r["n"]], [r["train_estimate"]], ".", color="#d62728", alpha=0.4)
        ax.plot([r["n"]], [r["heldout"]], ".", color="#1f77b4", alpha=0.4)
    ax.axhline(t.mi, color="k", lw=2, label=f"true I(X;C) = {t.mi:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training-set size n")
    ax.set_ylabel("nats")
    ax.set_title(f"trained critic, tau = {tau:g}", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------------------
# Reports.


def fmt(x: float) -> str:
  """Compact number: fixed point when moderate, scientific otherwise."""
  if not np.isfinite(x):
    return str(x)
  return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.2e}"


def cell_order(s: Setting) -> List[str]:
  return [cell_key(n, tau) for tau in s.temperatures for n in s.batch_sizes]


def table_md(s: Setting, rows: Sequence[Row], cells: Dict[str, dict], t: Truth) -> List[str]:
  """The markdown table: rows = method, columns = (N, tau), mean +- std over batches."""
  order = cell_order(s)
  head = "| method | " + " | ".join(f"N={cells[k]['N']}, tau={cells[k]['tau']:g}"
                                     for k in order) + " |"
  lines = [head, "|---" * (len(order) + 1) + "|"]
  for r in rows:
    vals = [cells[k]["stats"][r.key] for k in order]
    lines.append(f"| {r.label} | " + " | ".join(
        f"{fmt(v['mean'])} +- {fmt(v['std'])}" for v in vals) + " |")
  lines.append("| **true I(X;C)** (+- MC s.e.) | " + " | ".join(
      f"**{t.mi:.4f} +- {t.se:.4f}**" for _ in order) + " |")
  lines.append("| log(N-1) | " + " | ".join(f"{cells[k]['log_n1']:.3f}" for k in order) + " |")
  return lines


def exceeded_md(rows: Sequence[Row], v: dict, cells: Dict[str, dict], t: Truth) -> List[str]:
  """One line per row that exceeded I(X;C) somewhere."""
  labels = {r.key: r.label for r in rows}
  out = []
  for k, hits in v["exceeded"].items():
    sig = [ck for ck, h in hits.items() if h["significant"]]
    lm = sum(h["above_log_m"] for h in hits.values())
    ln = sum(h["above_log_n1"] for h in hits.values())
    out.append(f"- {labels[k]}: {len(hits)}/{len(cells)} cells, {len(sig)} significant; above "
               f"log M = {t.log_m:.3f} in {lm}, above log(N-1) in {ln}; cells (excess): "
               + ", ".join(f"{ck} ({fmt(h['excess'])})" for ck, h in hits.items()))
  return out or ["- none"]


def oracle_md(s: Setting, cells: Dict[str, dict], t: Truth) -> List[str]:
  """Oracle critic: excess over I(X;C) per cell beside the predicted label-count bias."""
  out = ["", "Oracle critic (class negatives, R = 0) at each cell: mean - I(X;C) +- s.e. of "
         "the batch mean, beside the delta-method label-count bias kappa / (2 (N-1)), "
         f"kappa = {t.kappa:.3f}:"]
  for ck in cell_order(s):
    st = cells[ck]["stats"]["oracle"]
    out.append(f"- {ck}: {fmt(st['mean'] - t.mi)} +- {fmt(st['se'])} "
               f"(predicted bias {t.label_bias(cells[ck]['N']):.4f})")
  return out


def verdict_md(s: Setting, rows: Sequence[Row], v: dict, cells: Dict[str, dict],
               t: Truth) -> List[str]:
  """The verdict section, generated from `verdict`."""
  labels = {r.key: r.label for r in rows}
  out = ["## Verdict (computed by run.py)", "",
         f"A row exceeds I(X;C) = {t.mi:.4f} in a cell when its mean over batches is above "
         f"it; 'significant' when the excess is more than {SIGNIFICANCE:g} combined standard "
         "errors (s.e. of the batch mean and the Monte Carlo s.e.).", "",
         f"Every ProjNCE bound row with g- = sample (R included; "
         f"{len(v['sample_bound_rows'])} rows) below I(X;C) in every cell: "
         f"**{'yes' if v['all_bounds_below'] else 'NO'}**.", "",
         f"Stayed below I(X;C) in every cell ({len(v['below_everywhere'])} rows):"]
  out += [f"- {labels[k]}" for k in v["below_everywhere"]]
  out += ["", f"Exceeded I(X;C) in at least one cell ({len(v['exceeded'])} rows):"]
  out += exceeded_md(rows, v, cells, t)
  out += oracle_md(s, cells, t)
  out += ["", "Tightest ProjNCE bound with g- = sample per cell (largest mean):"]
  out += [f"- {ck}: {labels[v['tightest_bound'][ck]['row']]} = "
          f"{fmt(v['tightest_bound'][ck]['mean'])} (gap to I(X;C) "
          f"{v['tightest_bound'][ck]['gap']:.3f})" for ck in cell_order(s)]
  out += ["", "SupCon vs the no-R centroid row (the same loss by definition): max |difference| "
          f"over all batches = {v['supcon_vs_no_r_centroid_max_abs_diff']:.2e}."]
  return out


def markdown(s: Setting, rows, cells, t: Truth, v, meta, tc=None) -> str:
  """The full results.md text."""
  lines = [
      "# MI estimates vs the true I(X;C) on a Gaussian mixture", "",
      f"Command: `{meta['command']}`  ",
      f"Machine: {meta['machine']}, {meta['cpus']} CPUs (os.cpu_count), "
      f"jax {meta['jax']} on {meta['backend']}, float64; run time {meta['seconds']:.1f} s, of which trained critics {meta['critic_seconds']:.1f} s "
      f"(load average at start {meta['loadavg']}); {meta['date']}.", "",
      f"Mixture: M = {s.num_classes} classes (uniform), d = {s.dim}, means {s.sep:g} * e_c, "
      f"noise sigma = {s.sigma:g}. I(X;C) = {t.mi:.4f} +- {t.se:.4f} nats "
      f"({s.mc_samples} Monte Carlo samples of the exact posterior); log M = {t.log_m:.4f}.  ",
      f"{s.num_batches} independent batches per N (the same batches for every row and "
      f"temperature); g- = sample except the oracle row; embeddings = the raw samples, "
      f"L2-normalised inside the loss except the 'raw x' and oracle rows (normalize=False); "
      f"scaled g+ = alpha * e_c, alpha in {{{', '.join(f'{a:g}' for a in s.alphas)}}}. "
      f"Entries: mean +- std over batches, in nats. Fewest anchors in any batch: "
      f"{min(c['min_anchors'] for c in cells.values())}.", ""]
  lines += table_md(s, rows, cells, t)
  lines += [""] + verdict_md(s, rows, v, cells, t) + [""]
  if tc is not None:
    lines += trained_md(s, tc, t) + ["", "![trained critics](trained_critics.png)", ""]
  return "\n".join(lines)


def plot(path: str, s: Setting, rows: Sequence[Row], cells: Dict[str, dict],
         t: Truth) -> None:
  """Estimate vs N per method; one column per temperature, with R (top) / without (bottom)."""
  matplotlib.use("Agg")

  ns = np.array(s.batch_sizes)
  lo, hi = -5.0, float(np.log(ns.max() - 1)) + 1.5
  colors = dict(zip(PROJECTIONS, ("#1f77b4", "#9467bd", "#2ca02c", "#8c564b", "#e377c2")))
  scaled_colors = dict(zip(s.alphas, ("#fc9272", "#de2d26", "#67000d")))
  fig, axes = plt.subplots(2, len(s.temperatures), figsize=(5.2 * len(s.temperatures), 9),
                           sharex=True, sharey=True, squeeze=False)
  for col, tau in enumerate(s.temperatures):
    for row_i, kind in enumerate(("bound", "no_r")):
      ax, stack = axes[row_i, col], {}
      for r in (r for r in rows if r.plot and r.kind == kind):
        means_ = np.array([cells[cell_key(n, tau)]["stats"][r.key]["mean"] for n in ns])
        stds = np.array([cells[cell_key(n, tau)]["stats"][r.key]["std"] for n in ns])
        style = _style(r, colors, scaled_colors)
        _plot_clipped(ax, ns, means_, stds, lo, hi, r.label, style,
                      r.call.replace("scaled", "x"), stack)
      ax.axhspan(t.mi - 2 * t.se, t.mi + 2 * t.se, color="k", alpha=0.15)
      ax.axhline(t.mi, color="k", lw=2.2, label=f"true I(X;C) = {t.mi:.3f}")
      ax.axhline(np.log(s.num_classes), color="gray", ls="--", lw=1, label="log M")
      ax.plot(ns, np.log(ns - 1), color="gray", ls=":", lw=1.5, label="log(N-1)")
      ax.set_xscale("log", base=2)
      ax.set_xticks(ns, [str(n) for n in ns])
      ax.set_ylim(lo, hi)
      ax.grid(alpha=0.3)
      title = "with R: ProjNCE bound" if kind == "bound" else "without R (beta=0), SupCon"
      ax.set_title(f"tau = {tau:g}; {title}", fontsize=10)
      if row_i == 1:
        ax.set_xlabel("batch size N")
      if col == 0:
        ax.set_ylabel("MI estimate (nats)")
  for row_i in range(2):
    axes[row_i, -1].legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
  fig.suptitle(f"MI estimates, mean \u00b1 std over {s.num_batches} batches, vs the true "
               "I(X;C) (band: \u00b12 MC s.e.); triangles at the frame mark off-scale means, "
               "value beside", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _style(r: Row, colors: dict, scaled_colors: dict) -> dict:
  if r.call.startswith("scaled"):
    return dict(color=scaled_colors[float(r.call[len("scaled"):])], marker="s", ls="-.")
  if r.call == "oracle":
    return dict(color="#17becf", marker="*", ls="--", ms=9)
  if r.call == "supcon":
    return dict(color="k", marker="x", ls="--", ms=9)
  return dict(color=colors[r.call], marker="o", ls="-")


def _plot_clipped(ax, ns, means_, stds, lo, hi, label, style, tag, stack) -> None:
  """Plots a line with error bars; means outside [lo, hi] become edge triangles + text.

  `stack` counts the texts already written at each (N, edge) of this axis, so that texts of
  several off-scale rows at one point are stacked instead of overlapping.
  """
  inside = (means_ >= lo) & (means_ <= hi)
  y = np.where(inside, means_, np.nan)
  ax.errorbar(ns, y, yerr=np.where(inside, stds, np.nan), label=label, capsize=2, lw=1.3,
              ms=style.pop("ms", 4.5), **style)
  for n, m in zip(ns[~inside], means_[~inside]):
    top = m > hi
    edge = hi if top else lo
    ax.plot([n], [edge - 0.15 if top else edge + 0.15], marker="^" if top else "v",
            color=style["color"], ms=8, clip_on=False)
    k = stack.get((n, top), 0)
    stack[(n, top)] = k + 1
    last = n == ns.max()
    text = f"{tag}: " + (fmt(m) if abs(m) < 1e4 else f"{m:.0e}")
    ax.annotate(text, (n, edge), textcoords="offset points",
                xytext=(-7 if last else 7, (-12 - 9 * k) if top else (4 + 9 * k)),
                fontsize=7, color=style["color"], ha="right" if last else "left",
                va="top" if top else "bottom")


# ----------------------------------------------------------------------------------------


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                 help="output directory for results.md, results.json, mi_bound.png")
  p.add_argument("--small", action="store_true", help="a seconds-long setting")
  p.add_argument("--num-batches", type=int, default=None, help="override batches per cell")
  return p.parse_args(argv)


def machine_meta(argv) -> dict:
  return dict(command=shlex.join(["python", sys.argv[0]] + list(argv)),
              machine=platform.machine(), cpus=os.cpu_count(), jax=jax.__version__,
              backend=jax.default_backend(), python=platform.python_version(),
              loadavg=" ".join(f"{x:.1f}" for x in os.getloadavg()),
              date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))


def experiment(s: Setting) -> Tuple[List[Row], Dict[str, dict], Truth]:
  """Computes the truth and every row's per-batch estimates in every cell."""
  means = class_means(s)
  mi, se, kappa = true_mi(means, s.sigma, s.mc_samples, seed=s.seed + 12345)
  truth = Truth(mi=mi, se=se, kappa=kappa, log_m=float(np.log(s.num_classes)))
  params = pj.losses.init_mlp_params(jax.random.key(s.seed), num_classes=s.num_classes,
                                     dim=s.dim)
  rows = estimator_rows(s)
  evaluator = make_evaluator(loss_calls(s, means, params), rows, s.chunk)
  cells = run_cells(s, means, rows, evaluator)
  for c in cells.values():
    c["stats"] = {r.key: summarize(c["values"][r.key]) for r in rows}
  return rows, cells, truth


def main(argv=None) -> dict:
  """Runs the experiment and writes the three result files; returns the JSON payload."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  jax.config.update("jax_enable_x64", True)  # scaled-up g+ makes R ~ exp(200): float64

  t0 = time.perf_counter()
  s = SMALL if args.small else FULL
  if args.num_batches:
    s = dataclasses.replace(s, num_batches=args.num_batches)
  meta = machine_meta(argv)
  rows, cells, truth = experiment(s)
  v = verdict(rows, cells, truth)
  t_critics = time.perf_counter()
  tc = trained_critics(s, class_means(s), truth)
  meta["critic_seconds"] = time.perf_counter() - t_critics
  os.makedirs(args.out, exist_ok=True)
  plot(os.path.join(args.out, "mi_bound.png"), s, rows, cells, truth)
  plot_trained(os.path.join(args.out, "trained_critics.png"), s, tc, truth)
  meta["seconds"] = time.perf_counter() - t0

  payload = dict(setting=dataclasses.asdict(s), meta=meta, truth=dataclasses.asdict(truth),
                 rows=[dataclasses.asdict(r) for r in rows], cells=_rounded(cells), verdict=v,
                 trained_critics=tc)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(payload, f, indent=1, default=_json_default)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(markdown(s, rows, cells, truth, v, meta, tc))
  print(f"I(X;C) = {truth.mi:.4f} +- {truth.se:.4f}; every ProjNCE bound (g- = sample) "
        f"below: {v['all_bounds_below']}; trained critics' held-out bounds below: "
        f"{tc['all_heldout_below']}; {meta['seconds']:.1f} s -> {args.out}")
  return payload


def _rounded(cells: Dict[str, dict]) -> Dict[str, dict]:
  """The cells with per-batch values cut to 7 significant digits (stats stay exact)."""
  return {ck: dict(c, values={k: [float(f"{x:.7g}") for x in xs]
                              for k, xs in c["values"].items()})
          for ck, c in cells.items()}


def _json_default(o):
  if isinstance(o, (np.bool_,)):
    return bool(o)
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(type(o))


if __name__ == "__main__":
  main()

"""An explicit intra-class dispersion term matched to ProjNCE's adjustment R (a control).

For g+ = centroid and g- = sample, R_i = exp(LSE+_i - LSE-_i) - 1 compares, class by class,
the mean score of anchor i against the keys of class c (z_i . m_c / tau, m_c the
leave-one-out centroid) with the log-mean-exp of those scores. By Jensen, R_i <= 0, with
equality when every class is collapsed to a point; minimising beta * R rewards spreading the
classes. Whether R does anything beyond that is the question this control answers.

The control keeps only the second cumulant of each class's scores: with s_ij = z_i . z_j / tau,
n_ic = |S_c \\ {i}|, mu_ic = mean_{j in S_c \\ {i}} s_ij and V_ic = var_{j in S_c \\ {i}} s_ij,

    gap_i = LSE_c [log n_ic + mu_ic + V_ic / 2] - LSE_c [log n_ic + mu_ic]
    T_i   = exp(-gap_i) - 1                    in (-1, 0]

which is R_i with each class's score distribution replaced by a Gaussian of the same mean
and variance (log mean exp s = mu + V / 2 for a Gaussian). It depends on the embeddings only
through the class means and the within-class variance of the scores: an intra-class
dispersion regulariser with R's range, temperature scaling and class weighting. T = R
exactly when V = 0 (collapsed classes), and T = R + O(third cumulants) for tight classes.
"SupCon plus the control at weight beta" is the matched-strength comparison for ProjNCE
(centroid/sample) at that beta.

Computed from class moments, never from the [n, N] scores: with Sum_c = sum_{j in S_c} z_j
and C_c = sum_{j in S_c} z_j z_j^T, mu_ic = z_i . (Sum_c - [c = y_i] z_i) / (tau n_ic) and
mean_j s_ij^2 = z_i^T (C_c - [c = y_i] z_i z_i^T) z_i / (tau^2 n_ic), so V_ic = that - mu_ic^2.
Memory O(n M + M d^2), flops O(n M d^2); used when the [n, N] block would exceed 2**22
entries (below that the block is cheaper and is used).

Example:
  >>> term, aux = dispersion_control(z, labels, temperature=0.1, num_classes=10)
  >>> loss = supcon_loss + beta * term
"""
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from projnce_jax.losses._common import compute_dtype
from projnce_jax.losses._common import normalize as l2_normalize


# Up to n * N = 2**22 score entries (16 MiB in float32) the [n, N] block is cheapest
# (training batches); above, the class moments (O(n M d^2) flops, no [n, N] buffer): at
# N = 16,384 the block formulation planned 6 GiB for forward + backward.
_BLOCK_ENTRIES = 1 << 22


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def dispersion_control(z: jax.Array, labels: jax.Array, *, temperature: float = 0.1,
                       num_classes: int, mask: Optional[jax.Array] = None,
                       axis_name: Optional[str] = None, normalize: bool = True
                       ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Mean over anchors of T_i (module docstring), and the mean gap.

  Args:
    z: [n, d] local embeddings (L2-normalised here when `normalize`).
    labels: [n] int labels in [0, num_classes).
    temperature: tau > 0.
    num_classes: M (static: the class slots).
    mask: [n] bool rows that take part (default all).
    axis_name: data-parallel axis (inside shard_map), or None. Anchors are local; the
      class moments (counts, sums, second moments) are psum'd over the global batch.
    normalize: L2-normalise z first.

  Returns:
    (term, aux): term = mean_i T_i over anchors with a positive (0 when none), a float32
    (or wider) scalar; aux = {"dispersion_gap": mean gap_i, "dispersion_anchors": count}.

  Raises:
    ValueError: z not [n, d], labels not [n], temperature <= 0.
  """
  if z.ndim != 2 or labels.shape != (z.shape[0],):
    raise ValueError(f"dispersion_control needs z [n, d] and labels [n]; got z {z.shape}, "
                     f"labels {labels.shape}")
  if not isinstance(temperature, jax.Array) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  dtype = compute_dtype(z.dtype)
  z = z.astype(dtype)
  if normalize:
    z = l2_normalize(z)
  n = z.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  labels = labels.astype(jnp.int32)
  n_total = n * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  stats = _block_stats if n * n_total <= _BLOCK_ENTRIES else _moment_stats
  cnt, mu, var = stats(z, labels, valid, temperature, num_classes, axis_name)
  present = cnt > 0
  safe = jnp.maximum(cnt, 1.0)
  log_n = jnp.where(present, jnp.log(safe), -jnp.inf)
  base = log_n + mu
  gap = (jax.nn.logsumexp(jnp.where(present, base + 0.5 * var, -jnp.inf), axis=1) -
         jax.nn.logsumexp(jnp.where(present, base, -jnp.inf), axis=1))           # [n]
  own_count = jnp.take_along_axis(cnt, labels[:, None], axis=1)[:, 0]
  anchor = valid & (own_count > 0)
  gap = jnp.where(anchor, gap, 0.0)
  count = _psum(jnp.sum(anchor.astype(dtype)), axis_name)
  denom = jnp.maximum(count, 1.0)
  term = _psum(jnp.sum(jnp.where(anchor, jnp.expm1(-gap), 0.0)), axis_name) / denom
  mean_gap = _psum(jnp.sum(gap), axis_name) / denom
  return term, {"dispersion_gap": mean_gap, "dispersion_anchors": count}


def _moment_stats(z, labels, valid, temperature, num_classes, axis_name):
  """(n_ic, mu_ic, V_ic) [n, M] from the class moments of the global batch: counts [M],
  sums [M, d], second moments [M, d, d], psum'd across devices. Memory O(n M + M d^2)."""
  dtype = z.dtype
  w = valid.astype(dtype)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype) * w[:, None]       # [n, M]
  counts = _psum(jnp.sum(onehot, axis=0), axis_name)                            # [M]
  sums = _psum(onehot.T @ z, axis_name)                                         # [M, d]
  # One class at a time, rematerialised in the backward pass, so that no per-class [n, d]
  # residual is kept: O(n d + M d^2) memory.
  per_class = lambda f: jax.checkpoint(f, prevent_cse=False)
  second = _psum(jax.lax.map(per_class(lambda col: (z * col[:, None]).T @ z), onehot.T),
                 axis_name)                                                     # [M, d, d]
  # Leave the anchor out of its own class: n_ic, and the anchor's own terms.
  own = jax.nn.one_hot(labels, num_classes, dtype=dtype) * w[:, None]           # [n, M]
  cnt = jnp.where(valid[:, None], counts[None, :] - own, 0.0)                   # [n, M]
  safe = jnp.maximum(cnt, 1.0)
  zz = jnp.sum(z * z, axis=1)                                                   # [n]
  first = (z @ sums.T - own * zz[:, None]) / temperature                        # [n, M]
  quad = jax.lax.map(per_class(lambda s2: jnp.sum((z @ s2) * z, axis=1)), second).T
  quad = (quad - own * jnp.square(zz)[:, None]) / temperature**2
  mu = first / safe                                 # mean of s_ij over S_c \ {i}
  var = jnp.maximum(quad / safe - jnp.square(mu), 0.0)  # its (population) variance
  return cnt, mu, var


def _block_stats(z, labels, valid, temperature, num_classes, axis_name):
  """(n_ic, mu_ic, V_ic) [n, M] from the [n, N] scores against the gathered batch."""
  dtype, n = z.dtype, z.shape[0]
  gather = lambda x: x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)
  z_all, y_all, v_all = gather(z), gather(labels), gather(valid)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  row = offset + jnp.arange(n)
  keep = (v_all[None, :] & valid[:, None] &
          (jnp.arange(z_all.shape[0])[None, :] != row[:, None])).astype(dtype)  # [n, N]
  onehot = jax.nn.one_hot(y_all, num_classes, dtype=dtype)                       # [N, M]
  s = (z @ z_all.T) / temperature                                  # [n, d] x [d, N] -> [n, N]
  cnt = keep @ onehot                                              # [n, N] x [N, M] -> [n, M]
  safe = jnp.maximum(cnt, 1.0)
  mu = ((s * keep) @ onehot) / safe                                # [n, M]
  dev = (s - jnp.take_along_axis(mu, jnp.broadcast_to(y_all[None, :], s.shape), axis=1))
  var = ((jnp.square(dev) * keep) @ onehot) / safe                 # [n, M]
  return cnt, mu, var

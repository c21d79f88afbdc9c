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

Example:
  >>> term, aux = dispersion_control(z, labels, temperature=0.1, num_classes=10)
  >>> loss = supcon_loss + beta * term
"""
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from projnce_jax.losses._common import compute_dtype
from projnce_jax.losses._common import normalize as l2_normalize


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


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
    axis_name: data-parallel axis (inside shard_map), or None. Anchors are local, keys the
      gathered global batch ([n, N] scores).
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
  z_all, y_all, v_all = (_gather(a, axis_name) for a in (z, labels, valid))
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
  present = cnt > 0
  log_n = jnp.where(present, jnp.log(safe), -jnp.inf)
  base = log_n + mu
  gap = (jax.nn.logsumexp(jnp.where(present, base + 0.5 * var, -jnp.inf), axis=1) -
         jax.nn.logsumexp(jnp.where(present, base, -jnp.inf), axis=1))           # [n]
  own = jnp.take_along_axis(cnt, labels[:, None], axis=1)[:, 0]
  anchor = valid & (own > 0)
  gap = jnp.where(anchor, gap, 0.0)
  count = _psum(jnp.sum(anchor.astype(dtype)), axis_name)
  denom = jnp.maximum(count, 1.0)
  term = _psum(jnp.sum(jnp.where(anchor, jnp.expm1(-gap), 0.0)), axis_name) / denom
  mean_gap = _psum(jnp.sum(gap), axis_name) / denom
  return term, {"dispersion_gap": mean_gap, "dispersion_anchors": count}

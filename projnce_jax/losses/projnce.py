"""ProjNCE and its named special cases: SupCon and InfoNCE / NT-Xent.

ProjNCE (Jeong & Hero, "Generalizing Supervised Contrastive Learning: A Projection
Perspective", arXiv 2506.09810). With a positive projection g+ and a negative projection
g-, for anchor i and keys j in A(i) (every other row of the global batch):

    infonce_i    = -z_i . g+_i(y_i) / tau + LSE_j z_i . g-_i(y_j) / tau
    adjustment_i = exp(LSE_j s+_ij - LSE_j s-_ij) - 1
    loss         = mean_i infonce_i + beta * adjustment_i

Class-level terms are evaluated per class, LSE_j z_i.g(y_j)/tau =
LSE_c [z_i.g_i(c)/tau + log n_c^(i)], in O(n M d); only the `sample` negative (SupCon's)
needs all pairs, computed densely, blockwise or around a device ring.
"""

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax.losses import projections as proj_lib
from projnce_jax.losses import sample as sample_lib
from projnce_jax.losses._common import compute_dtype, masked_logsumexp
from projnce_jax.losses._common import normalize as l2_normalize

Projection = Union[str, jax.Array, np.ndarray]
AUX_KEYS = ("infonce_term", "adjustment", "mi_lower_bound", "num_anchors", "positive_score")


# ----------------------------------------------------------------------------------------
# Validation at the Python boundary.


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_projection(name: Projection, role: str, allowed) -> None:
  if isinstance(name, str):
    if name not in allowed:
      raise ValueError(f"Unknown {role} projection {name!r}; expected one of {list(allowed)} "
                       "or a [num_classes, d] array of class vectors.")
  elif not hasattr(name, "shape") or len(name.shape) != 2:
    raise TypeError(f"The {role} projection must be a name or a [num_classes, d] array, "
                    f"got {type(name).__name__} {getattr(name, 'shape', '')}.")


def _validate(z, labels, *, temperature, positive, negative, num_classes, params, axis_name,
              impl, block_size, mask) -> None:
  if not hasattr(z, "shape") or not hasattr(z, "dtype"):
    raise TypeError(f"z must be an array, got {type(z).__name__}.")
  if z.ndim != 2:
    raise ValueError(f"z must have rank 2 [n, d], got shape {tuple(z.shape)}.")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"z must be floating point, got dtype {z.dtype}.")
  if not hasattr(labels, "shape") or labels.ndim != 1:
    raise ValueError(f"labels must have rank 1 [n], got shape "
                     f"{tuple(getattr(labels, 'shape', ()))}.")
  if labels.shape[0] != z.shape[0]:
    raise ValueError(f"labels has length {labels.shape[0]} but z has {z.shape[0]} rows "
                     f"(z shape {tuple(z.shape)}).")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
  if mask is not None and (mask.ndim != 1 or mask.shape[0] != z.shape[0]):
    raise ValueError(f"mask must have shape [{z.shape[0]}], got {tuple(mask.shape)}.")
  if _is_concrete(temperature):
    t = np.asarray(temperature)
    if t.ndim != 0:
      raise ValueError(f"temperature must be a scalar, got shape {t.shape}.")
    if not np.isfinite(t) or t <= 0:
      raise ValueError(f"temperature must be > 0, got {float(t)}.")
  _check_projection(positive, "positive", proj_lib.PROJECTIONS)
  _check_projection(negative, "negative", proj_lib.NEGATIVES)
  if impl not in sample_lib.IMPLS:
    raise ValueError(f"Unknown impl {impl!r}; expected one of {list(sample_lib.IMPLS)}.")
  if impl == "ring" and axis_name is None:
    raise ValueError("impl='ring' passes keys between devices and needs axis_name (run the "
                     "loss inside shard_map or pmap over that axis).")
  if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
    raise ValueError(f"block_size must be a positive int or None, got {block_size!r}.")
  tables = [p for p in (positive, negative) if not isinstance(p, str)]
  names = [p for p in (positive, negative) if isinstance(p, str)]
  named_tables = [p for p in names if p in proj_lib.CLASS_TABLE]
  if (tables or named_tables) and num_classes is None:
    raise ValueError("Class-table projections ('orthogonal', 'mlp', or an array) need "
                     "num_classes.")
  if num_classes is not None and (not isinstance(num_classes, (int, np.integer))
                                  or num_classes < 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  for t in tables:
    if t.shape != (num_classes, z.shape[1]):
      raise ValueError(f"A projection table must have shape [num_classes, d] = "
                       f"[{num_classes}, {z.shape[1]}], got {tuple(t.shape)}.")
  if "orthogonal" in names and z.shape[1] < num_classes:
    raise ValueError(
        f"The 'orthogonal' projection needs embedding dim d >= num_classes, got "
        f"d={z.shape[1]} < num_classes={num_classes}.")
  if "mlp" in names and params is None:
    raise ValueError("The 'mlp' projection needs params= (see init_mlp_params).")
  if num_classes is not None and _is_concrete(labels) and labels.size:
    values = np.asarray(labels)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got values in "
                       f"[{lo}, {hi}].")


# ----------------------------------------------------------------------------------------
# The loss.


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _class_batch(z, labels, valid, num_classes, axis_name, *,
                 gather_rows: bool) -> proj_lib.ClassBatch:
  """Class slots and global class statistics of the batch.

  The rows themselves are gathered across devices only when `gather_rows` (the `median`
  and `kernel` projections need them); otherwise `z_all` is the local block.
  """
  n = z.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  labels_all = _gather(labels, axis_name)
  if num_classes is None:
    # Data-dependent projections only: slots are the distinct labels of the global batch.
    num = labels_all.shape[0]
    _, slots_all = jnp.unique(labels_all, size=num, fill_value=jnp.iinfo(labels.dtype).max,
                              return_inverse=True)
    slots_all = slots_all.reshape(-1).astype(jnp.int32)
    slots = jax.lax.dynamic_slice_in_dim(slots_all, offset, n)
    k = num
  else:
    slots_all, slots, k = labels_all.astype(jnp.int32), labels.astype(jnp.int32), num_classes
  w = valid.astype(z.dtype)
  counts = _psum(jax.ops.segment_sum(w, slots, num_segments=k), axis_name)
  sums = _psum(jax.ops.segment_sum(z * w[:, None], slots, num_segments=k), axis_name)
  return proj_lib.ClassBatch(z=z, slots=slots, valid=valid, offset=offset, counts=counts,
                             sums=sums, z_all=_gather(z, axis_name) if gather_rows else z,
                             slots_all=slots_all,
                             valid_all=_gather(valid, axis_name), axis_name=axis_name)


def _class_scores(b: proj_lib.ClassBatch, name: Projection, *, params, num_classes,
                  bandwidth) -> jax.Array:
  """G[i, c] = z_i . g_i(c) for projection `name`: [n, K]."""
  if not isinstance(name, str):
    return b.z @ jnp.asarray(name, b.z.dtype).T  # [n, d] x [d, M] -> [n, M]
  if name == "centroid":
    return proj_lib.centroid_scores(b)
  if name == "median":
    return proj_lib.median_scores(b)
  if name == "kernel":
    return proj_lib.kernel_scores(b, bandwidth)
  if name == "orthogonal":
    table = proj_lib.orthogonal_table(num_classes, b.z.shape[1])
  else:  # mlp
    table = proj_lib.mlp_table(params, num_classes)
  return b.z @ jnp.asarray(table, b.z.dtype).T  # [n, d] x [d, M] -> [n, M]


def _same_projection(a: Projection, b: Projection) -> bool:
  return isinstance(a, str) and isinstance(b, str) and a == b


def projnce(z: jax.Array, labels: jax.Array, *, temperature=0.1,
            positive: Projection = "centroid", negative: Projection = "sample",
            beta: float = 1.0, num_classes: Optional[int] = None, params: Any = None,
            axis_name: Optional[str] = None, impl: str = "dense",
            block_size: Optional[int] = None, normalize: bool = True,
            mask: Optional[jax.Array] = None, log_ratio_clip: Optional[float] = None,
            bandwidth: float = 1.0):
  """The ProjNCE loss for a batch of embeddings with class labels (spec section 3).

  Args:
    z: [n, d] embeddings of the local rows (with V views per example, the views are
      separate rows sharing a label). Any float dtype; computed in >= float32.
    labels: [n] int class labels (instance ids for self-supervised use).
    temperature: tau > 0.
    positive: g+; one of 'centroid', 'median', 'kernel', 'orthogonal', 'mlp', or a
      [num_classes, d] array of class vectors.
    negative: g-; any positive projection or 'sample' (the key's own embedding).
    beta: weight of the adjustment term (1 = ProjNCE, 0 = no adjustment).
    num_classes: M; required by 'orthogonal', 'mlp' and tables. With data-dependent
      projections it only sets the number of class slots (the result does not depend on
      it) and enables the O(n M d) class path; when None the slots are the distinct
      labels of the batch (up to N).
    params: parameters of the 'mlp' projection (`init_mlp_params`).
    axis_name: data-parallel axis (inside shard_map/pmap): local anchors contrast against
      the global batch; the returned loss and aux are global and equal on every device.
    impl: 'dense', 'blockwise' or 'ring' (the all-pairs 'sample' term only).
    block_size: key block for 'blockwise'/'ring' (None: automatic).
    normalize: L2-normalise z inside the loss (idempotent).
    mask: optional [n] bool; False rows (padding) are neither anchors nor keys.
    log_ratio_clip: optional upper clip on LSE+ - LSE- before exponentiating, for
      stability. Off by default: clipping breaks the MI bound.
    bandwidth: h of the 'kernel' projection.

  Returns:
    (loss, aux): scalar loss (mean over anchors whose g+_i(y_i) is defined; 0 if none) and
    a dict of scalars: infonce_term, adjustment, mi_lower_bound
    (= log(N - 1) - infonce_term - adjustment), num_anchors, positive_score (mean p_i tau).

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (256, 128))
    >>> labels = jax.random.randint(jax.random.key(1), (256,), 0, 10)
    >>> loss, aux = projnce(z, labels, temperature=0.1, num_classes=10)
  """
  labels = jnp.asarray(labels) if isinstance(labels, (list, tuple)) else labels
  _validate(z, labels, temperature=temperature, positive=positive, negative=negative,
            num_classes=num_classes, params=params, axis_name=axis_name, impl=impl,
            block_size=block_size, mask=mask)
  dtype = compute_dtype(z.dtype)
  z = z.astype(dtype)
  if normalize:
    z = l2_normalize(z)
  n = z.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  inv_tau = 1.0 / jnp.asarray(temperature, dtype)

  gather_rows = any(isinstance(p, str) and p in ("median", "kernel")
                    for p in (positive, negative))
  b = _class_batch(z, labels, valid, num_classes, axis_name, gather_rows=gather_rows)
  num_valid = jnp.sum(b.counts)
  loo_counts = b.loo_counts
  log_counts = jnp.where(loo_counts > 0, jnp.log(jnp.maximum(loo_counts, 1.0)), -jnp.inf)
  present = loo_counts > 0  # [n, K] classes with a key for anchor i

  kw = dict(params=params, num_classes=num_classes, bandwidth=bandwidth)
  g_pos = _class_scores(b, positive, **kw)
  own = b.own
  pos_score = jnp.sum(g_pos * own, axis=1)  # z_i . g+_i(y_i)
  lse_pos = masked_logsumexp(g_pos * inv_tau + log_counts, present, axis=1)
  if _same_projection(positive, negative):
    lse_neg = lse_pos
  elif isinstance(negative, str) and negative == "sample":
    ids = b.offset + jnp.arange(n)
    lse_neg = sample_lib.all_pairs_lse(z, ids, valid, inv_tau, impl=impl,
                                       block_size=block_size, axis_name=axis_name)
  else:
    g_neg = _class_scores(b, negative, **kw)
    lse_neg = masked_logsumexp(g_neg * inv_tau + log_counts, present, axis=1)

  # Anchors: valid rows with some key, and a defined g+_i(y_i) (data-dependent g+ needs
  # another member of the anchor's class in the global batch).
  has_key = (num_valid - valid.astype(dtype)) > 0
  if isinstance(positive, str) and positive in proj_lib.DATA_DEPENDENT:
    defined = valid & (jnp.sum(loo_counts * own, axis=1) > 0)
  else:
    defined = valid & has_key
  zero = jnp.zeros((), dtype)
  infonce_i = jnp.where(defined, lse_neg - pos_score * inv_tau, zero)
  log_ratio = jnp.where(defined, lse_pos - lse_neg, zero)
  if log_ratio_clip is not None:
    log_ratio = jnp.minimum(log_ratio, log_ratio_clip)
  adjustment_i = jnp.expm1(log_ratio)

  count = _psum(jnp.sum(defined.astype(dtype)), axis_name)
  denom = jnp.maximum(count, 1.0)
  infonce_term = _psum(jnp.sum(infonce_i), axis_name) / denom
  adjustment = _psum(jnp.sum(adjustment_i), axis_name) / denom
  positive_score = _psum(jnp.sum(jnp.where(defined, pos_score, zero)), axis_name) / denom
  loss = infonce_term + beta * adjustment
  log_n1 = jnp.log(jnp.maximum(num_valid - 1.0, 1.0))
  aux = dict(infonce_term=infonce_term, adjustment=adjustment,
             mi_lower_bound=log_n1 - infonce_term - adjustment,
             num_anchors=count.astype(jnp.int32), positive_score=positive_score)
  return loss, aux


def supcon(z: jax.Array, labels: jax.Array, *, temperature=0.1,
           num_classes: Optional[int] = None, axis_name: Optional[str] = None,
           impl: str = "dense", block_size: Optional[int] = None, normalize: bool = True,
           mask: Optional[jax.Array] = None):
  """Supervised contrastive loss L_out (Khosla et al. 2020), exactly.

  ProjNCE with g+ = centroid, g- = sample, beta = 0. Equals SupContrast's `SupConLoss`
  (contrast_mode='all', base_temperature=temperature) when every anchor has a positive;
  anchors without a positive are left out (never NaN). The aux dict still reports the
  adjustment and the full MI bound.

  Args:
    z: [n, d] embeddings (views as rows); labels: [n] int.
    temperature, num_classes, axis_name, impl, block_size, normalize, mask: as `projnce`.

  Returns:
    (loss, aux) as `projnce`.

  Example:
    >>> loss, aux = supcon(z, labels, temperature=0.1)
  """
  return projnce(z, labels, temperature=temperature, positive="centroid", negative="sample",
                 beta=0.0, num_classes=num_classes, axis_name=axis_name, impl=impl,
                 block_size=block_size, normalize=normalize, mask=mask)


def infonce(z_views: jax.Array, *, temperature=0.1, axis_name: Optional[str] = None,
            impl: str = "dense", block_size: Optional[int] = None, normalize: bool = True,
            mask: Optional[jax.Array] = None):
  """InfoNCE / NT-Xent (SimCLR): SupCon with instance ids as labels.

  Args:
    z_views: [b, V, d] local examples with V >= 2 views each. Instance ids are made
      globally unique across devices (device offset + local index).
    temperature, axis_name, impl, block_size, normalize: as `projnce`.
    mask: optional [b] bool validity of the examples.

  Returns:
    (loss, aux) as `projnce`. With V = 2 the loss is NT-Xent:
    mean_i -z_i.z_i'/tau + LSE_{a != i} z_i.z_a/tau.

  Example:
    >>> loss, aux = infonce(jnp.stack([view1, view2], axis=1), temperature=0.5)
  """
  if not hasattr(z_views, "ndim") or z_views.ndim != 3:
    raise ValueError("z_views must have rank 3 [b, V, d], got shape "
                     f"{tuple(getattr(z_views, 'shape', ()))}.")
  b, v, d = z_views.shape
  if v < 2:
    raise ValueError(f"infonce needs at least 2 views per example, got V={v}.")
  devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
  ids = offset + jnp.arange(b, dtype=jnp.int32)
  labels = jnp.repeat(ids, v)
  rows_mask = None if mask is None else jnp.repeat(jnp.asarray(mask, bool), v)
  return projnce(z_views.reshape(b * v, d), labels, temperature=temperature,
                 positive="centroid", negative="sample", beta=0.0,
                 num_classes=b * devices, axis_name=axis_name, impl=impl,
                 block_size=block_size, normalize=normalize, mask=rows_mask)


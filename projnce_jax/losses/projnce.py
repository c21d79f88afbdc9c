"""ProjNCE and its named special cases: SupCon and InfoNCE / NT-Xent.

ProjNCE (Jeong & Hero, "Generalizing Supervised Contrastive Learning: A Projection
Perspective", arXiv 2506.09810). With a positive projection g+ and a negative projection
g-, for anchor i and keys j in A(i) (every other row of the global batch):

    infonce_i    = -z_i . g+_i(y_i) / tau + LSE_j z_i . g-_i(y_j) / tau
    adjustment_i = exp(LSE_j s+_ij - LSE_j s-_ij) - 1
    loss         = mean_i infonce_i + beta * adjustment_i

Class-level terms are evaluated per class, LSE_j z_i.g(y_j)/tau =
LSE_c [z_i.g_i(c)/tau + log n_c^(i)]: the anchor's own class comes from its class sum in
O(d), the other classes stream over blocks of class slots (empty slots skipped) in
O(n K d) time and O(n * block + K d) memory; only the `sample` negative (SupCon's) needs
all pairs, computed densely, blockwise or around a device ring.
"""

import functools
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax.losses import projections as proj_lib
from projnce_jax.losses import sample as sample_lib
from projnce_jax.losses._common import compute_dtype, masked_logsumexp, to_varying
from projnce_jax.losses._common import normalize as l2_normalize

Projection = Union[str, jax.Array, np.ndarray]
AUX_KEYS = ("infonce_term", "adjustment", "mi_lower_bound", "num_anchors", "positive_score",
            "num_invalid_labels")
# Class-level LSE: up to this many class slots in one block; otherwise blocks of _CLASS_BLOCK
# slots (empty blocks skipped).
_CLASS_DENSE_SLOTS = 512
_CLASS_BLOCK = 256


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
  if impl in ("ring", "fused_ring") and axis_name is None:
    raise ValueError(f"impl={impl!r} passes keys between devices and needs axis_name (run the "
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
                 gather_rows: bool, ring: bool = False) -> proj_lib.ClassBatch:
  """Class slots and global class statistics of the batch.

  The rows themselves are gathered across devices only when `gather_rows` (the `median`
  and `kernel` projections need them); otherwise `z_all` is the local block.

  Class sums: with `num_classes` the [num_classes, d] table is all-reduced (small).
  Without it there is one slot per row of the global batch, so an all-reduced [N, d] table
  would move about twice the bytes of the rows themselves: unless `ring` (which never
  gathers rows), the rows are gathered instead -- the dense and blockwise all-pairs terms
  gather the same rows, and XLA keeps one copy -- and each device sums them itself.
  """
  n = z.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  labels_all = _gather(labels, axis_name)
  if num_classes is None:
    # Data-dependent projections only: slots are the distinct labels of the global batch,
    # sorted, so the occupied slots come first (the class stream skips the empty rest).
    num = labels_all.shape[0]
    _, slots_all = jnp.unique(labels_all, size=num, fill_value=jnp.iinfo(labels.dtype).max,
                              return_inverse=True)
    slots_all = slots_all.reshape(-1).astype(jnp.int32)
    slots = jax.lax.dynamic_slice_in_dim(slots_all, offset, n)
    k = num
  else:
    slots_all, slots, k = labels_all.astype(jnp.int32), labels.astype(jnp.int32), num_classes
  w = valid.astype(z.dtype)
  valid_all = _gather(valid, axis_name)
  z_all = _gather(z, axis_name) if gather_rows else z
  # The counts stay all-reduced ([k] scalars): they feed replicated outputs (the bound),
  # and JAX types an all-gather's result as varying across the axis, a psum's as invariant.
  counts = _psum(jax.ops.segment_sum(w, slots, num_segments=k), axis_name)
  if axis_name is not None and num_classes is None and not ring:
    rows = z_all if gather_rows else _gather(z, axis_name)
    sums = jax.ops.segment_sum(rows * valid_all.astype(z.dtype)[:, None], slots_all,
                               num_segments=k)
  else:
    sums = _psum(jax.ops.segment_sum(z * w[:, None], slots, num_segments=k), axis_name)
  return proj_lib.ClassBatch(z=z, slots=slots, valid=valid, offset=offset, counts=counts,
                             sums=sums, z_all=z_all, slots_all=slots_all,
                             valid_all=valid_all, axis_name=axis_name)


def _class_vectors(b: proj_lib.ClassBatch, name: Projection, *, params, num_classes,
                   bandwidth, matmul_dtype=None):
  """(table [K, d] of g(c), own [n, d] of g_i(y_i)) for projection `name`."""
  if not isinstance(name, str):
    table = jnp.asarray(name, b.z.dtype)
  elif name == "centroid":
    return proj_lib.centroid_vectors(b)
  elif name == "median":
    return proj_lib.median_vectors(b)
  elif name == "kernel":
    return proj_lib.kernel_vectors(b, bandwidth, matmul_dtype)
  elif name == "orthogonal":
    table = jnp.asarray(proj_lib.orthogonal_table(num_classes, b.z.shape[1]), b.z.dtype)
  else:  # mlp
    table = jnp.asarray(proj_lib.mlp_table(params, num_classes), b.z.dtype)
  return table, table[b.slots]


def _class_block(num_queries: int, num_slots: int, block_size: Optional[int]) -> int:
  """Class slots per block of the class-level LSE (static shapes only)."""
  if block_size is not None:
    return min(block_size, num_slots)
  if num_slots <= _CLASS_DENSE_SLOTS:
    return num_slots  # one block: as cheap as a dense [n, K] evaluation
  return min(_CLASS_BLOCK, sample_lib.auto_block_size(num_queries, num_slots))


def _logaddexp(a, b):
  """log(exp(a) + exp(b)) with -inf allowed in both (finite gradients)."""
  shift = jax.lax.stop_gradient(jnp.maximum(a, b))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  total = jnp.exp(a - shift) + jnp.exp(b - shift)
  ok = total > 0
  return jnp.where(ok, shift + jnp.log(jnp.where(ok, total, 1.0)), -jnp.inf)


def _class_lse(q, q_ids, own_score, own_count, table, table_ids, counts, *, block, axis_name,
               ring=False):
  """Class-level LSE: log(sum_{c != own} n_c e^{q_i.g(c)} + n_own e^{own_score_i}).

  Args:
    q: [n, d] anchors scaled by 1 / tau (matmul dtype).
    q_ids: [n] the anchor's own class id (its column is left out of the stream).
    own_score: [n] z_i . g_i(y_i) / tau (compute dtype); own_count: [n] n_{y_i}^(i).
    table: [K, d] class vectors (matmul dtype); table_ids: [K]; counts: [K] class sizes.
    block: class slots per block.
    axis_name: data axis (inside shard_map) or None.
    ring: the table is device-local and travels around the ring (instance classes).

  Returns:
    [n] in >= float32; -inf where no class has a key for the anchor.
  """
  present = counts > 0
  bias = jnp.log(jnp.where(present, counts, 1.0)).astype(own_score.dtype)
  args = to_varying((q, q_ids, table, table_ids, present, bias), axis_name)
  if ring:
    other = sample_lib.ring_lse(*args, block, axis_name, True)
  elif block >= table.shape[0]:  # one block: evaluate [n, K] directly
    # Both operands varying over the axis: the custom VJP's cotangents then match them
    # (autodiff sums a replicated table's cotangent across devices through to_varying).
    qv, tv = to_varying((q, table), axis_name)
    scores = sample_lib.dot_nt_vjp(qv, tv) + bias[None, :]  # [n, d] x [d, K] -> [n, K]
    other = masked_logsumexp(scores, present[None, :] & (table_ids[None, :] != q_ids[:, None]))
  else:
    other = sample_lib.stream_lse(*args, block, axis_name, True)
  own = jnp.where(own_count > 0, own_score + jnp.log(jnp.maximum(own_count, 1.0)), -jnp.inf)
  return _logaddexp(other, own)


def _same_projection(a: Projection, b: Projection) -> bool:
  return isinstance(a, str) and isinstance(b, str) and a == b


def _matmul_dtype(dtype):
  """Similarity matmuls run in the input dtype when it is narrower than float32."""
  return dtype if jnp.finfo(dtype).bits < 32 else compute_dtype(dtype)


def projnce(z: jax.Array, labels: jax.Array, *, temperature=0.1,
            positive: Projection = "centroid", negative: Projection = "sample",
            beta: float = 1.0, num_classes: Optional[int] = None, params: Any = None,
            axis_name: Optional[str] = None, impl: str = "dense",
            block_size: Optional[int] = None, normalize: bool = True,
            mask: Optional[jax.Array] = None, log_ratio_clip: Optional[float] = None,
            bandwidth: float = 1.0):
  """The ProjNCE loss for a batch of embeddings with class labels (spec section 3).

  Memory: the class-level terms stream over blocks of class slots and never hold an
  [n, K] or [n, N] matrix, with or without `num_classes`. The all-pairs block of the
  `sample` negative is held as [n, N] only by `impl='dense'` across devices (axis_name
  set); on one device `dense` and `blockwise` run the symmetric streamed kernel in
  [n, block] tiles. `blockwise` and `ring` need O(n * block + N * d) per device; `fused`
  and `fused_ring` keep each score tile on chip (O(N * d) memory).

  Args:
    z: [n, d] embeddings of the local rows (with V views per example, the views are
      separate rows sharing a label). Any float dtype: bfloat16/float16 similarity
      matmuls run in that dtype with float32 accumulation; statistics, log-sum-exp and
      the loss are float32 (float64 for float64 input).
    labels: [n] int class labels (instance ids for self-supervised use).
    temperature: tau > 0.
    positive: g+; one of 'centroid', 'median', 'kernel', 'orthogonal', 'mlp', or a
      [num_classes, d] array of class vectors.
    negative: g-; any positive projection or 'sample' (the key's own embedding).
    beta: weight of the adjustment term (1 = ProjNCE, 0 = no adjustment; with a Python
      0 the adjustment is reported in aux but not differentiated).
    num_classes: M; required by 'orthogonal', 'mlp' and tables. With data-dependent
      projections it only sets the number of class slots (the result does not depend on
      it); when None the slots are the distinct labels of the global batch (up to N,
      the occupied ones streamed in blocks).
    params: parameters of the 'mlp' projection (`init_mlp_params`).
    axis_name: data-parallel axis (inside shard_map/pmap): local anchors contrast against
      the global batch; the returned loss and aux are global and equal on every device.
    impl: the all-pairs 'sample' term's implementation: 'dense', 'blockwise', 'ring'
      (XLA), 'fused' or 'fused_ring' (the Pallas kernel of `projnce_jax.losses.fused`:
      compiled through Triton on GPU and Mosaic on TPU, Pallas interpret mode on CPU, where
      it is for tests, not speed; not yet measured on a GPU/TPU, so opt-in).
    block_size: key block for 'blockwise'/'ring', and class slots per block of the
      class-level terms (None: automatic, from the static shapes).
    normalize: L2-normalise z inside the loss (idempotent).
    mask: optional [n] bool; False rows (padding) are neither anchors nor keys.
    log_ratio_clip: optional upper clip on LSE+ - LSE- before the exp of the adjustment.
    bandwidth: Epanechnikov bandwidth h of the 'kernel' projection.

  Returns:
    (loss, aux): the scalar loss (mean over anchors whose terms are defined; 0 if none) and
    a dict of scalars: infonce_term, adjustment, mi_lower_bound
    (= log(N - 1) - infonce_term - adjustment; 0 when no anchor is left), num_anchors,
    positive_score (mean p_i tau), num_invalid_labels (rows whose label lies outside
    [0, num_classes) under jit: they are neither anchors nor keys; an eager call raises).

  Example:
    >>> z = jax.random.normal(jax.random.key(0), (256, 128))
    >>> labels = jax.random.randint(jax.random.key(1), (256,), 0, 10)
    >>> loss, aux = projnce(z, labels, temperature=0.1, num_classes=10)
  """
  labels = jnp.asarray(labels) if isinstance(labels, (list, tuple)) else labels
  _validate(z, labels, temperature=temperature, positive=positive, negative=negative,
            num_classes=num_classes, params=params, axis_name=axis_name, impl=impl,
            block_size=block_size, mask=mask)
  return _dispatch(z, labels, temperature=temperature, positive=positive,
                   negative=negative, beta=beta, num_classes=num_classes, params=params,
                   axis_name=axis_name, impl=impl, block_size=block_size,
                   normalize=normalize, mask=mask, log_ratio_clip=log_ratio_clip,
                   bandwidth=bandwidth)


_STATIC_TYPES = (str, bool, int, float, np.integer, np.floating, type(None))


def _dispatch(z, labels, **kw):
  """`_projnce`, compiled as one program when called outside any trace.

  Inside jit/grad/vmap/shard_map (any argument a tracer) it is traced in place. A call
  on concrete arrays would otherwise run the loss op by op, compiling each of its ~100
  operations for every new shape (5 s for a small supcon on the 2-core CPU at load ~2,
  against 1.1 s compiled as one program); here the Python-scalar and string
  arguments are static and the arrays (z, labels, tables, params, mask) are traced, so
  one compilation per shape and setting serves every later call.
  """
  if not all(_is_concrete(x) for x in jax.tree.leaves((z, labels, kw))):
    return _projnce(z, labels, **kw)
  static = tuple(sorted((k, type(v).__name__, v) for k, v in kw.items()
                        if isinstance(v, _STATIC_TYPES)))
  dynamic = {k: v for k, v in kw.items() if not isinstance(v, _STATIC_TYPES)}
  return _compiled(static)(z, labels, dynamic)


@functools.lru_cache(maxsize=512)
def _compiled(static):
  kw = {k: v for k, _, v in static}
  return jax.jit(lambda z, labels, dynamic: _projnce(z, labels, **kw, **dynamic))


def _projnce(z, labels, *, temperature, positive, negative, beta, num_classes, params,
             axis_name, impl, block_size, normalize, mask, log_ratio_clip, bandwidth,
             num_views=None, mi_bound=True):
  """`projnce` after validation. `num_views` = V selects the instance path: rows are
  examples x V views (example-major, all views of an example on this device) and the
  classes are the examples (labels are ignored); positive=centroid, negative=sample.

  With beta = 0 and negative = "sample" the class-level LSE of g+ enters only the
  adjustment and the bound, not the loss; `mi_bound=False` skips it (aux then has no
  "adjustment" and "mi_lower_bound")."""
  dtype = compute_dtype(z.dtype)
  mdtype = _matmul_dtype(z.dtype)
  z = z.astype(dtype)
  if normalize:
    z = l2_normalize(z)
  zm = z.astype(mdtype)
  n = z.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  # Labels outside [0, num_classes) (possible only under jit; eager calls raise): such rows
  # are neither anchors nor keys, and are counted in aux["num_invalid_labels"].
  if num_classes is not None and num_views is None:
    in_range = (labels >= 0) & (labels < num_classes)
    num_invalid = _psum(jnp.sum((valid & ~in_range).astype(jnp.int32)), axis_name)
    valid = valid & in_range
    labels = jnp.where(in_range, labels, 0)
  else:
    num_invalid = jnp.zeros((), jnp.int32)
  inv_tau = 1.0 / jnp.asarray(temperature, dtype)
  q = (z * inv_tau).astype(mdtype)
  stop_adjustment = isinstance(beta, (int, float)) and beta == 0
  skip_bound = (stop_adjustment and not mi_bound and isinstance(negative, str)
                and negative == "sample")

  if num_views is not None:
    own_count, pos_score, lse_pos, num_valid = _instance_terms(
        z, q, valid, num_views, inv_tau, impl=impl, block_size=block_size,
        axis_name=axis_name, lse=not skip_bound)
    if stop_adjustment and lse_pos is not None:
      lse_pos = jax.lax.stop_gradient(lse_pos)
    defined = valid & (own_count > 0)
    lse_neg = None
  else:
    gather_rows = any(isinstance(p, str) and p in ("median", "kernel")
                      for p in (positive, negative))
    b = _class_batch(z, labels, valid, num_classes, axis_name, gather_rows=gather_rows,
                     ring=impl in ("ring", "fused_ring"))
    num_valid = jnp.sum(b.counts)
    own_count = b.own_count
    num_slots = b.counts.shape[0]
    block = _class_block(n, num_slots, block_size)
    slot_ids = jnp.arange(num_slots, dtype=jnp.int32)
    kw = dict(params=params, num_classes=num_classes, bandwidth=bandwidth,
              matmul_dtype=mdtype)

    def class_lse(name, lse=True):
      table, own = _class_vectors(b, name, **kw)
      score = jnp.sum(z * own, axis=1)  # z_i . g_i(y_i)
      if not lse:
        return score, None
      lse = _class_lse(q, b.slots, score * inv_tau, own_count, table.astype(mdtype),
                       slot_ids, b.counts, block=block, axis_name=axis_name)
      return score, lse

    pos_score, lse_pos = class_lse(positive, lse=not skip_bound)
    if _same_projection(positive, negative):
      lse_neg = lse_pos
    elif not (isinstance(negative, str) and negative == "sample"):
      lse_neg = class_lse(negative)[1]
    else:
      lse_neg = None
    if stop_adjustment and lse_pos is not None:
      lse_pos = jax.lax.stop_gradient(lse_pos)
    if isinstance(positive, str) and positive in proj_lib.DATA_DEPENDENT:
      defined = valid & (own_count > 0)
    else:
      defined = valid & ((num_valid - valid.astype(dtype)) > 0)
  if lse_neg is None:  # negative = 'sample': the all-pairs term
    ids = (0 if axis_name is None else jax.lax.axis_index(axis_name) * n) + jnp.arange(n)
    lse_neg = sample_lib.all_pairs_lse(zm, ids, valid, inv_tau, impl=impl,
                                       block_size=block_size, axis_name=axis_name)

  zero = jnp.zeros((), dtype)
  infonce_i = jnp.where(defined, lse_neg - pos_score * inv_tau, zero)
  count = _psum(jnp.sum(defined.astype(dtype)), axis_name)
  denom = jnp.maximum(count, 1.0)
  infonce_term = _psum(jnp.sum(infonce_i), axis_name) / denom
  positive_score = _psum(jnp.sum(jnp.where(defined, pos_score, zero)), axis_name) / denom
  aux = dict(infonce_term=infonce_term, num_anchors=count.astype(jnp.int32),
             positive_score=positive_score, num_invalid_labels=num_invalid)
  if lse_pos is None:  # beta = 0 and the bound not asked for: the loss is the InfoNCE term
    return infonce_term, aux

  log_ratio = jnp.where(defined, lse_pos - lse_neg, zero)
  if log_ratio_clip is not None:
    log_ratio = jnp.minimum(log_ratio, log_ratio_clip)
  adjustment_i = jnp.expm1(log_ratio)
  adjustment = _psum(jnp.sum(adjustment_i), axis_name) / denom
  loss = infonce_term + (0.0 if stop_adjustment else beta * adjustment)
  log_n1 = jnp.log(jnp.maximum(num_valid - 1.0, 1.0))
  # With no anchor the bound is reported as 0 (I(X;C) >= 0 always holds), not log(N-1).
  bound = jnp.where(count > 0, log_n1 - infonce_term - adjustment, zero)
  aux.update(adjustment=adjustment, mi_lower_bound=bound)
  return loss, {k: aux[k] for k in AUX_KEYS}


def _instance_terms(z, q, valid, num_views, inv_tau, *, impl, block_size, axis_name,
                    lse=True):
  """Centroid terms when every example is its own class and its views are local.

  Each anchor's positive is the mean of its example's other views (a local row sum); the
  class-level LSE streams over the examples' centroids, gathered (dense, blockwise) or
  passed around the ring, so no [examples, d] table is all-reduced.

  Returns:
    (own_count [n], pos_score [n], lse_pos [n] (None unless `lse`), num_valid scalar).
  """
  n, dim = z.shape
  b = n // num_views
  w = valid.astype(z.dtype)
  zv = (z * w[:, None]).reshape(b, num_views, dim)
  counts = jnp.sum(w.reshape(b, num_views), axis=1)  # [b]
  sums = jnp.sum(zv, axis=1)  # [b, d]
  slots = jnp.repeat(jnp.arange(b, dtype=jnp.int32), num_views)
  own_count = counts[slots] - w
  own = (sums[slots] - z * w[:, None]) / jnp.maximum(own_count, 1.0)[:, None]
  pos_score = jnp.sum(z * own, axis=1)
  num_valid = _psum(jnp.sum(counts), axis_name)
  if not lse:
    return own_count, pos_score, None, num_valid
  means = (sums / jnp.maximum(counts, 1.0)[:, None]).astype(q.dtype)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
  ids = offset + jnp.arange(b, dtype=jnp.int32)
  q_ids = offset + slots
  block = _class_block(n, b * (1 if axis_name is None else jax.lax.axis_size(axis_name)),
                       block_size)
  if impl in ("ring", "fused_ring"):
    lse = _class_lse(q, q_ids, pos_score * inv_tau, own_count, means, ids, counts,
                     block=min(block, b), axis_name=axis_name, ring=True)
  else:
    lse = _class_lse(q, q_ids, pos_score * inv_tau, own_count, _gather(means, axis_name),
                     _gather(ids, axis_name), _gather(counts, axis_name), block=block,
                     axis_name=axis_name)
  return own_count, pos_score, lse, num_valid


def supcon(z: jax.Array, labels: jax.Array, *, temperature=0.1,
           num_classes: Optional[int] = None, axis_name: Optional[str] = None,
           impl: str = "dense", block_size: Optional[int] = None, normalize: bool = True,
           mask: Optional[jax.Array] = None, mi_bound: bool = False):
  """Supervised contrastive loss L_out (Khosla et al. 2020), exactly.

  ProjNCE with g+ = centroid, g- = sample, beta = 0. Equals SupContrast's `SupConLoss`
  (contrast_mode='all', base_temperature=temperature) when every anchor has a positive;
  anchors without a positive are left out (never NaN).

  The keyword arguments (temperature, num_classes, axis_name, impl, block_size,
  normalize, mask) are those of `projnce`.

  Args:
    z: [n, d] embeddings (views as rows).
    labels: [n] int class labels.
    mi_bound: also compute the adjustment and the MI bound for aux (one more class-level
      log-sum-exp, forward only; the loss does not use it).

  Returns:
    (loss, aux) as `projnce`; without `mi_bound`, aux has no "adjustment" and
    "mi_lower_bound".

  Example:
    >>> loss, aux = supcon(z, labels, temperature=0.1)
  """
  labels = jnp.asarray(labels) if isinstance(labels, (list, tuple)) else labels
  _validate(z, labels, temperature=temperature, positive="centroid", negative="sample",
            num_classes=num_classes, params=None, axis_name=axis_name, impl=impl,
            block_size=block_size, mask=mask)
  return _dispatch(z, labels, temperature=temperature, positive="centroid",
                   negative="sample", beta=0.0, num_classes=num_classes, params=None,
                   axis_name=axis_name, impl=impl, block_size=block_size,
                   normalize=normalize, mask=mask, log_ratio_clip=None, bandwidth=1.0,
                   mi_bound=bool(mi_bound))


def infonce(z_views: jax.Array, *, temperature=0.1, axis_name: Optional[str] = None,
            impl: str = "dense", block_size: Optional[int] = None, normalize: bool = True,
            mask: Optional[jax.Array] = None, mi_bound: bool = False):
  """InfoNCE / NT-Xent (SimCLR): SupCon with instance ids as labels.

  Every example is its own class and its V views sit on the same device, so each
  anchor's positive is a local row sum and the class-level term streams over the
  example centroids (gathered for dense/blockwise, passed around the ring for 'ring'):
  memory O(n * block + N * d), no all-reduce of an [examples, d] table.

  Args:
    z_views: [b, V, d] local examples with V >= 2 views each. Instance ids are made
      globally unique across devices (device offset + local index).
    mask: optional [b] bool validity of the examples.
    mi_bound: also compute the adjustment and the MI bound for aux (a log-sum-exp over
      the b example centroids, forward only, about a sixth of the step at b = N / 2;
      the loss does not use it).

  The other keyword arguments (temperature, axis_name, impl, block_size, normalize) are
  those of `projnce`.

  Returns:
    (loss, aux) as `projnce`; without `mi_bound`, aux has no "adjustment" and
    "mi_lower_bound". With V = 2 the loss is NT-Xent:
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
  rows_mask = None if mask is None else jnp.repeat(jnp.asarray(mask, bool), v)
  labels = jnp.repeat(jnp.arange(b, dtype=jnp.int32), v)
  _validate(z_views.reshape(b * v, d), labels, temperature=temperature, positive="centroid",
            negative="sample", num_classes=None, params=None, axis_name=axis_name,
            impl=impl, block_size=block_size, mask=rows_mask)
  return _dispatch(z_views.reshape(b * v, d), labels, temperature=temperature,
                   positive="centroid", negative="sample", beta=0.0, num_classes=None,
                   params=None, axis_name=axis_name, impl=impl, block_size=block_size,
                   normalize=normalize, mask=rows_mask, log_ratio_clip=None,
                   bandwidth=1.0, num_views=v, mi_bound=bool(mi_bound))

"""Streaming log-sum-exp kernels: the all-pairs term and the class-level terms.

The all-pairs term LSE_{j != i} z_i . z_j / tau (the `sample` negative projection, i.e.
SupCon's negatives) is the only part of the ProjNCE family that needs every pair of rows.
The class-level terms LSE_c [z_i . g(c) / tau + log n_c] have the same shape with class
vectors as keys and a per-key bias. One contract covers both:

  lse[i] = log sum_{j : valid_j and id_j != qid_i} exp(q_i . k_j + bias_j)

- one device, all pairs (`self_stream_lse`, for both `dense` and `blockwise`): the rows
  are their own keys, so the score matrix is symmetric; the backward pass forms
  W + W^T elementwise and needs one product per key block instead of two. Three
  N x N x d products for forward + backward (autodiff of the dense block needs three,
  the general stream four), in cache-sized [n, block] tiles, never an [n, N] buffer.
- dense, across devices: one [n, N] score block against the all-gathered keys.
- blockwise (`stream_lse`): a streaming log-sum-exp over key blocks; a custom VJP
  recomputes the block scores in the backward pass, so memory is O(n * block), never
  O(n * N). Blocks without a valid key are skipped (`skip_empty`), so a table of K class
  slots of which only the first few are occupied costs only the occupied blocks.
- ring (`ring_lse`): keys travel around the device ring with `ppermute` inside a
  `lax.fori_loop` (the compiled program does not grow with the device count), each step
  blockwise; in the backward pass the key gradients travel with them and arrive home
  after a full turn. Memory per device does not depend on the number of devices.

Matmuls run in the dtype of `q`/`k` (e.g. bfloat16) with accumulation in at least
float32 (`preferred_element_type`); the log-sum-exp statistics are at least float32.
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from projnce_jax.losses._common import compute_dtype, masked_logsumexp, to_varying

IMPLS = ("dense", "blockwise", "ring", "fused", "fused_ring")

# Score-block budget for the automatic block size: n * block <= 2**22 entries (16 MiB f32).
_BLOCK_BUDGET = 1 << 22
# One device, rows against themselves: score tiles of n * block <= 2**20 entries (4 MiB f32)
# stay in a CPU's last-level cache with room for z; measured fastest at N = 1k-4k.
_SELF_BLOCK_BUDGET = 1 << 20
_MIN_BLOCK = 128


def auto_block_size(num_queries: int, num_keys: int, budget: int = _BLOCK_BUDGET) -> int:
  """The key-block size used when `block_size=None`: a power of two with
  `num_queries * block <= budget` (2**22 entries unless given), at least 128 and at most
  `num_keys`.

  Example:
    >>> auto_block_size(16384, 16384)
    256
  """
  block = _MIN_BLOCK
  while block * 2 * max(num_queries, 1) <= budget and block < num_keys:
    block *= 2
  return max(1, min(block, num_keys))


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [n, d] . b [m, d]^T -> [n, m] in the operands' dtype, accumulated in >= float32."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                             preferred_element_type=compute_dtype(a.dtype))


@jax.custom_vjp
def dot_nt_vjp(a: jax.Array, b: jax.Array) -> jax.Array:
  """`dot_nt` whose backward products also run in the operands' dtype: autodiff would
  multiply the >= float32 cotangent by the (bfloat16) operands in float32."""
  return dot_nt(a, b)


def _dot_nt_fwd(a, b):
  return dot_nt(a, b), (a, b)


def _dot_nt_bwd(res, g):
  a, b = res
  return dot_nn(g, b).astype(a.dtype), dot_tn(g, a).astype(b.dtype)


dot_nt_vjp.defvjp(_dot_nt_fwd, _dot_nt_bwd)


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [n, m] . b [m, d] -> [n, d] in b's dtype, accumulated in >= float32."""
  return jax.lax.dot_general(a.astype(b.dtype), b, (((1,), (0,)), ((), ())),
                             preferred_element_type=compute_dtype(b.dtype))


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [m, n]^T . b [m, d] -> [n, d] in b's dtype, accumulated in >= float32."""
  return jax.lax.dot_general(a.astype(b.dtype), b, (((0,), (0,)), ((), ())),
                             preferred_element_type=compute_dtype(b.dtype))


def dense_lse(q, k, q_ids, k_ids, k_valid):
  """Dense all-pairs LSE: q [n, d], k [N, d] -> [n]; the [n, N] block is materialised."""
  s = dot_nt(q, k)  # [n, d] x [d, N] -> [n, N]
  mask = k_valid[None, :] & (k_ids[None, :] != q_ids[:, None])
  return masked_logsumexp(s, mask, axis=1)


# ----------------------------------------------------------------------------------------
# Streaming log-sum-exp over key blocks (shared by blockwise and ring).


class Keys(NamedTuple):
  """Keys of a streaming LSE: vectors [N, d], ids [N], valid [N] and an optional bias [N]."""
  k: jax.Array
  ids: jax.Array
  valid: jax.Array
  bias: Optional[jax.Array] = None


def _split(x: jax.Array, block: int, fill) -> jax.Array:
  """Pads the leading axis of `x` with `fill` to a multiple of `block`: [num_blocks, block, ...]."""
  num_blocks = -(-x.shape[0] // block)
  widths = ((0, num_blocks * block - x.shape[0]),) + ((0, 0),) * (x.ndim - 1)
  x = jnp.pad(x, widths, constant_values=fill)
  return x.reshape((num_blocks, block) + x.shape[1:])


def _split_blocks(keys: Keys, block: int) -> Keys:
  """Pads the keys to a multiple of `block` and reshapes to [num_blocks, block, ...]."""
  bias = None if keys.bias is None else _split(keys.bias, block, 0)
  return Keys(_split(keys.k, block, 0), _split(keys.ids, block, -1),
              _split(keys.valid, block, False), bias)


def _fold_scores(carry, s):
  """One online log-sum-exp step: folds masked scores s [n, B] into (max, sum-exp)."""
  m, l = carry
  m_new = jnp.maximum(m, jnp.max(s, axis=1))
  shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  l = l * jnp.exp(m - shift) + jnp.sum(jnp.exp(s - shift[:, None]), axis=1)
  return m_new, l


def _masked_scores(q, q_ids, kb: Keys):
  """Scores of one key block, -inf where masked: [n, d] x [B, d] -> [n, B]."""
  s = dot_nt(q, kb.k)  # [n, d] x [d, B] -> [n, B]
  if kb.bias is not None:
    s = s + kb.bias[None, :].astype(s.dtype)
  mask = kb.valid[None, :] & (kb.ids[None, :] != q_ids[:, None])
  return jnp.where(mask, s, -jnp.inf)


def _maybe_skip(skip_empty, kb: Keys, compute, skipped, operand):
  """`compute(operand)`, or `skipped(operand)` when the block has no valid key."""
  if not skip_empty:
    return compute(operand)
  return jax.lax.cond(jnp.any(kb.valid), compute, skipped, operand)


def _stream_stats(q, q_ids, keys: Keys, block, carry, axis_name, skip_empty):
  """Folds `keys` into the running (max, sum-exp) `carry`, block by block."""
  blocks = _split_blocks(keys, block)

  def step(carry, kb):
    def update(carry):
      return _fold_scores(carry, _masked_scores(q, q_ids, kb))

    return _maybe_skip(skip_empty, kb, update, lambda c: c, carry), None

  carry = to_varying(carry, axis_name)
  carry, _ = jax.lax.scan(step, carry, blocks)
  return carry


def _init_stats(q):
  n, dtype = q.shape[0], compute_dtype(q.dtype)
  return jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype)


def _finish_stats(carry):
  m, l = carry
  shift = jnp.where(jnp.isfinite(m), m, 0.0)
  return jnp.where(l > 0, jnp.log(jnp.where(l > 0, l, 1.0)) + shift, -jnp.inf)


def _stream_grads(q, q_ids, lse, g, keys: Keys, block, dq, axis_name, skip_empty):
  """Backward of the streaming LSE for `keys`: returns (dq + dq_k, dk, dbias).

  dq is accumulated in >= float32; dk and dbias come back in float32 (or float64).
  """
  num, dim = keys.k.shape
  blocks = _split_blocks(keys, block)
  finite = jnp.isfinite(lse)
  lse = jnp.where(finite, lse, 0.0)
  g = jnp.where(finite, g, 0.0)
  acc = compute_dtype(q.dtype)

  def step(dq, kb):
    def compute(dq):
      s = _masked_scores(q, q_ids, kb)
      w = jnp.exp(s - lse[:, None]) * g[:, None]  # softmax weights times cotangent, [n, B]
      dk = dot_tn(w, q).astype(acc)  # [B, n] x [n, d] -> [B, d]
      return dq + dot_nn(w, kb.k).astype(acc), dk, jnp.sum(w, axis=0).astype(acc)

    def skipped(dq):
      zeros = (jnp.zeros((block, dim), acc), jnp.zeros((block,), acc))
      return (dq,) + to_varying(zeros, axis_name)

    return (lambda r: (r[0], r[1:]))(_maybe_skip(skip_empty, kb, compute, skipped, dq))

  dq = to_varying(dq, axis_name)
  dq, (dk, dbias) = jax.lax.scan(step, dq, blocks)
  return dq, dk.reshape(-1, dim)[:num], dbias.reshape(-1)[:num]


def _cotangents(keys: Keys, dk, dbias):
  """Cotangents for the Keys fields in the primal dtypes (None for ints/bools)."""
  db = None if keys.bias is None else dbias.astype(keys.bias.dtype)
  return dk.astype(keys.k.dtype), db


# ----------------------------------------------------------------------------------------
# Blockwise (keys held by every device).


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def stream_lse(q, q_ids, k, k_ids, k_valid, bias, block, axis_name=None, skip_empty=False):
  """Streaming LSE: q [n, d], keys [N, d] (+ bias [N] or None) -> [n], memory O(n * block).

  Args:
    q: [n, d] queries (already scaled by 1 / tau).
    q_ids: [n] int; key j is left out for query i when k_ids[j] == q_ids[i].
    k: [N, d] keys (same dtype as q); k_ids: [N] int; k_valid: [N] bool.
    bias: [N] float added to every score of key j, or None.
    block: static key-block size.
    axis_name: the data axis when called inside shard_map (None otherwise).
    skip_empty: skip key blocks without a valid key (cheap for sparse class tables).

  Returns:
    [n] log-sum-exp in >= float32; -inf where no key is valid for the query.
  """
  keys = Keys(k, k_ids, k_valid, bias)
  carry = _stream_stats(q, q_ids, keys, block, _init_stats(q), axis_name, skip_empty)
  return _finish_stats(carry)


def _stream_fwd(q, q_ids, k, k_ids, k_valid, bias, block, axis_name, skip_empty):
  lse = stream_lse(q, q_ids, k, k_ids, k_valid, bias, block, axis_name, skip_empty)
  return lse, (q, q_ids, k, k_ids, k_valid, bias, lse)


def _stream_bwd(block, axis_name, skip_empty, res, g):
  q, q_ids, k, k_ids, k_valid, bias, lse = res
  keys = Keys(k, k_ids, k_valid, bias)
  dq0 = jnp.zeros(q.shape, compute_dtype(q.dtype))
  dq, dk, dbias = _stream_grads(q, q_ids, lse, g, keys, block, dq0, axis_name, skip_empty)
  dk, db = _cotangents(keys, dk, dbias)
  return dq.astype(q.dtype), None, dk, None, None, db


stream_lse.defvjp(_stream_fwd, _stream_bwd)


# ----------------------------------------------------------------------------------------
# Blockwise self-similarity on one device: the symmetric backward, streamed.


def _self_tile(z, ids, valid, kb: Keys, inv_tau):
  """Raw scores inv_tau * z . k^T of one key block [n, B] (>= float32) and its mask."""
  s = dot_nt(z, kb.k) * inv_tau  # [n, d] x [d, B] -> [n, B]
  differ = kb.ids[None, :] != ids[:, None]
  return s, kb.valid[None, :] & differ, valid[:, None] & differ


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def self_stream_lse(z, ids, valid, inv_tau, block):
  """LSE_{j valid, ids_j != ids_i} inv_tau * z_i . z_j for the rows of one device -> [n].

  The scores S = inv_tau * z z^T are symmetric, which this kernel uses. The forward pass
  folds key blocks into a running (max, sum-exp). The backward pass recomputes each
  [n, block] score tile and adds (W + W^T)[:, block] z[block] to inv_tau^-1 dz, where
  W_ij = g_i softmax_i(S)_j; since S_ji = S_ij, (W^T)_ij = g_j exp(S_ij - lse_j), so each
  entry of W + W^T is a sum of two exact softmax weights, formed elementwise (no
  transpose, no shared shift that could overflow). Three N x N x d products in all (one
  forward, two backward) where autodiff of `dense_lse(q, z)` needs three and the general
  `stream_lse` four, and no [n, N] buffer: memory O(n * block).

  Args:
    z: [n, d] rows (matmul dtype, e.g. bfloat16; accumulation in >= float32).
    ids: [n] int row ids; row j is left out for anchor i when ids_j == ids_i.
    valid: [n] bool, rows that take part as keys.
    inv_tau: scalar 1 / temperature (may be traced; its gradient is returned).
    block: static key-block size.

  Returns:
    [n] log-sum-exp in >= float32; -inf where an anchor has no valid key.
  """
  return _self_stream_fwd(z, ids, valid, inv_tau, block)[0]


def _self_stream_fwd(z, ids, valid, inv_tau, block):
  acc = compute_dtype(z.dtype)
  t = jnp.asarray(inv_tau, acc)
  blocks = _split_blocks(Keys(z, ids, valid), block)

  def step(carry, kb):
    s, mask, _ = _self_tile(z, ids, valid, kb, t)
    return _fold_scores(carry, jnp.where(mask, s, -jnp.inf)), None

  (m, l), _ = jax.lax.scan(step, _init_stats(z), blocks)
  shift = jnp.where(jnp.isfinite(m), m, 0.0)
  return _finish_stats((m, l)), (z, ids, valid, shift, l, inv_tau)


def _self_stream_bwd(block, res, g):
  z, ids, valid, shift, l, inv_tau = res
  acc = shift.dtype
  t = jnp.asarray(inv_tau, acc)
  u = jnp.where(l > 0, g.astype(acc) / jnp.where(l > 0, l, 1.0), 0.0)  # g_i / l_i
  blocks = _split_blocks(Keys(z, ids, valid), block)
  # Each key block also carries its rows' u and shift (padding: 0, masked anyway). Two
  # [num_blocks, B] arrays: slicing a stacked [N, 2] per block ran 2x slower on XLA:CPU.
  u_blocks, shift_blocks = _split(u, block, 0.0), _split(shift, block, 0.0)
  zero = jnp.zeros((), acc)

  def step(wz, xs):
    kb, u_k, shift_k = xs
    s, mask, mask_t = _self_tile(z, ids, valid, kb, t)
    # (W + W^T)_ij = g_i p_ij + g_j p_ji, with p_ji = exp(S_ij - shift_j) / l_j.
    w = (jnp.where(mask, u[:, None] * jnp.exp(s - shift[:, None]), zero)
         + jnp.where(mask_t, u_k[None, :] * jnp.exp(s - shift_k[None, :]), zero))
    return wz + dot_nn(w, kb.k).astype(acc), None  # [n, B] x [B, d] -> [n, d]

  wz, _ = jax.lax.scan(step, jnp.zeros(z.shape, acc), (blocks, u_blocks, shift_blocks))
  dz = (wz * t).astype(z.dtype)
  d_inv_tau = 0.5 * jnp.sum(z.astype(acc) * wz)  # sum_ij W_ij z_i . z_j
  d_inv_tau = jnp.asarray(d_inv_tau, jnp.result_type(inv_tau)).reshape(jnp.shape(inv_tau))
  return dz, None, None, d_inv_tau


self_stream_lse.defvjp(_self_stream_fwd, _self_stream_bwd)


# ----------------------------------------------------------------------------------------
# Ring (keys travel between devices).


def _ring_perm(axis_name):
  size = jax.lax.axis_size(axis_name)
  return size, [(j, (j + 1) % size) for j in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def ring_lse(q, q_ids, k, k_ids, k_valid, bias, block, axis_name, skip_empty=False):
  """`stream_lse` with the keys spread over the devices of `axis_name` and passed around.

  Every device holds its own [n_k, d] keys. At step s each device holds the keys of
  device (r - s) mod D; after D steps every query has seen every key. The steps run in a
  `lax.fori_loop`, so the program size does not depend on D. Memory per device:
  O(n * block + n_k * d), independent of D.
  """
  return _ring_fwd(q, q_ids, k, k_ids, k_valid, bias, block, axis_name, skip_empty)[0]


def _ring_fwd(q, q_ids, k, k_ids, k_valid, bias, block, axis_name, skip_empty):
  size, perm = _ring_perm(axis_name)
  keys = to_varying(Keys(k, k_ids, k_valid, bias), axis_name)
  carry = _stream_stats(q, q_ids, keys, block, _init_stats(q), axis_name, skip_empty)

  def body(_, state):
    carry, kk = state
    kk = jax.lax.ppermute(kk, axis_name, perm)
    return _stream_stats(q, q_ids, kk, block, carry, axis_name, skip_empty), kk

  carry, _ = jax.lax.fori_loop(1, size, body, (carry, keys))
  lse = _finish_stats(carry)
  return lse, (q, q_ids, k, k_ids, k_valid, bias, lse)


def _ring_bwd(block, axis_name, skip_empty, res, g):
  q, q_ids, k, k_ids, k_valid, bias, lse = res
  size, perm = _ring_perm(axis_name)
  keys = to_varying(Keys(k, k_ids, k_valid, bias), axis_name)
  acc = compute_dtype(q.dtype)
  dk0 = to_varying(jnp.zeros(k.shape, acc), axis_name)
  db0 = to_varying(jnp.zeros(k.shape[:1], acc), axis_name)
  dq0 = to_varying(jnp.zeros(q.shape, acc), axis_name)

  def body(_, state):
    dq, kk, dk, db = state
    dq, dk_step, db_step = _stream_grads(q, q_ids, lse, g, kk, block, dq, axis_name,
                                         skip_empty)
    # The key block and its gradient move on together; after `size` moves both are home.
    kk, dk, db = jax.lax.ppermute((kk, dk + dk_step, db + db_step), axis_name, perm)
    return dq, kk, dk, db

  dq, _, dk, db = jax.lax.fori_loop(0, size, body, (dq0, keys, dk0, db0))
  dk, db = _cotangents(keys, dk, db)
  return dq.astype(q.dtype), None, dk, None, None, db


ring_lse.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------------------


def all_pairs_lse(z: jax.Array, ids: jax.Array, valid: jax.Array, inv_tau, *,
                  impl: str = "dense", block_size: Optional[int] = None,
                  axis_name: Optional[str] = None) -> jax.Array:
  """LSE over the other valid rows of the global batch of z_i . z_j / tau.

  Args:
    z: [n, d] local (normalised) rows in the matmul dtype (bfloat16, float32, float64).
    ids: [n] int global row ids (unique across devices).
    valid: [n] bool, rows that take part.
    inv_tau: 1 / temperature (scalar, may be traced).
    impl: "dense", "blockwise", "ring" (needs `axis_name`), "fused" (the Pallas kernel of
      `projnce_jax.losses.fused`: rows against themselves on one device, against the
      all-gathered keys across devices) or "fused_ring" (the fused kernel at each ring
      step; needs `axis_name`).
    block_size: key block for blockwise/ring; None picks one (`auto_block_size`). The fused
      kernels take their tiles from `fused.BLOCKS` and ignore it.
    axis_name: the data-parallel axis, or None on one device.

  Returns:
    [n] log-sum-exp per local anchor (>= float32); -inf where an anchor has no other
    valid row.
  """
  if impl in ("fused", "fused_ring"):
    return _fused_lse(z, ids, valid, inv_tau, ring=impl == "fused_ring", axis_name=axis_name)
  if axis_name is None and impl in ("dense", "blockwise"):
    block = block_size or auto_block_size(z.shape[0], z.shape[0], _SELF_BLOCK_BUDGET)
    return self_stream_lse(z, ids, valid, inv_tau, block)
  q = (z.astype(compute_dtype(z.dtype)) * inv_tau).astype(z.dtype)
  if impl == "ring":
    block = block_size or auto_block_size(z.shape[0], z.shape[0])
    return ring_lse(q, ids, z, ids, valid, None, block, axis_name)
  k, k_ids, k_valid = _gather(z, axis_name), _gather(ids, axis_name), _gather(valid, axis_name)
  if impl == "dense":
    return dense_lse(q, k, ids, k_ids, k_valid)
  block = block_size or auto_block_size(z.shape[0], k.shape[0])
  return stream_lse(q, ids, k, k_ids, k_valid, None, block, axis_name)


def _fused_lse(z, ids, valid, inv_tau, *, ring, axis_name):
  """`all_pairs_lse` through the fused Pallas kernels (`projnce_jax.losses.fused`)."""
  from projnce_jax.losses import fused  # pylint: disable=g-import-not-at-top
  acc = compute_dtype(z.dtype)
  ids = ids.astype(jnp.int32)
  kids = fused.key_ids(ids, valid)
  if axis_name is None:
    # Both sides scaled by sqrt(1 / tau): x_i . x_j = z_i . z_j / tau, symmetric.
    x = (z.astype(acc) * jnp.sqrt(jnp.asarray(inv_tau, acc))).astype(z.dtype)
    return fused.self_lse(x, ids, kids)
  q = (z.astype(acc) * inv_tau).astype(z.dtype)
  if ring:
    return fused.ring_lse(q, z, ids, kids, axis_name)
  return fused.cross_lse(q, _gather(z, axis_name), ids, _gather(kids, axis_name))

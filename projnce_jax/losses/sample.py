"""The all-pairs term LSE_{j != i} z_i . z_j / tau: dense, blockwise and ring kernels.

This is the only part of the ProjNCE family that needs every pair of rows (the `sample`
negative projection, i.e. SupCon's negatives). Three implementations share one contract:

  lse[i] = log sum_{j : valid_j and id_j != id_i} exp(q_i . k_j)

with `q = z_local / tau` (local anchors) and keys `k` = the rows of the global batch.

- dense: one [n, N] score block (keys all-gathered across devices).
- blockwise: a streaming log-sum-exp over key blocks; a custom VJP recomputes the block
  scores in the backward pass, so memory is O(n * block), never O(n * N).
- ring: keys travel around the device ring with `ppermute` (each step blockwise); in the
  backward pass the key gradients travel with them and arrive home after a full turn.
  Memory per device does not depend on the number of devices.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from projnce_jax.losses._common import masked_logsumexp, to_varying

IMPLS = ("dense", "blockwise", "ring")

# Score-block budget for the automatic block size: n * block <= 2**24 entries (64 MiB f32).
_BLOCK_BUDGET = 1 << 24
_MIN_BLOCK = 128


def auto_block_size(num_queries: int, num_keys: int) -> int:
  """The key-block size used when `block_size=None`: a power of two with
  `num_queries * block <= 2**24`, at least 128 and at most `num_keys`.

  Example:
    >>> auto_block_size(65536, 65536)
    256
  """
  block = _MIN_BLOCK
  while block * 2 * max(num_queries, 1) <= _BLOCK_BUDGET and block < num_keys:
    block *= 2
  return max(1, min(block, num_keys))


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def dense_lse(q, k, q_ids, k_ids, k_valid):
  """Dense all-pairs LSE: q [n, d], k [N, d] -> [n]; the [n, N] block is materialised."""
  s = q @ k.T  # [n, d] x [d, N] -> [n, N]
  mask = k_valid[None, :] & (k_ids[None, :] != q_ids[:, None])
  return masked_logsumexp(s, mask, axis=1)


# ----------------------------------------------------------------------------------------
# Streaming log-sum-exp over key blocks (shared by blockwise and ring).


def _split_blocks(k, k_ids, k_valid, block):
  """Pads the keys to a multiple of `block` and reshapes to [num_blocks, block, ...]."""
  num, dim = k.shape
  num_blocks = -(-num // block)
  pad = num_blocks * block - num
  k = jnp.pad(k, ((0, pad), (0, 0))).reshape(num_blocks, block, dim)
  k_ids = jnp.pad(k_ids, (0, pad), constant_values=-1).reshape(num_blocks, block)
  k_valid = jnp.pad(k_valid, (0, pad)).reshape(num_blocks, block)
  return k, k_ids, k_valid


def _masked_scores(q, q_ids, kb, kb_ids, kb_valid):
  """Scores of one key block, -inf where masked: [n, d] x [B, d] -> [n, B]."""
  s = q @ kb.T  # [n, d] x [d, B] -> [n, B]
  mask = kb_valid[None, :] & (kb_ids[None, :] != q_ids[:, None])
  return jnp.where(mask, s, -jnp.inf)


def _stream_stats(q, q_ids, k, k_ids, k_valid, block, carry, axis_name):
  """Folds the keys `k` into the running (max, sum-exp) `carry`, block by block."""
  kb, kb_ids, kb_valid = _split_blocks(k, k_ids, k_valid, block)

  def step(carry, xs):
    m, l = carry
    s = _masked_scores(q, q_ids, *xs)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    l = l * jnp.exp(m - shift) + jnp.sum(jnp.exp(s - shift[:, None]), axis=1)
    return (m_new, l), None

  carry = to_varying(carry, axis_name)
  carry, _ = jax.lax.scan(step, carry, (kb, kb_ids, kb_valid))
  return carry


def _init_stats(q):
  n = q.shape[0]
  return jnp.full((n,), -jnp.inf, q.dtype), jnp.zeros((n,), q.dtype)


def _finish_stats(carry):
  m, l = carry
  shift = jnp.where(jnp.isfinite(m), m, 0.0)
  return jnp.where(l > 0, jnp.log(jnp.where(l > 0, l, 1.0)) + shift, -jnp.inf)


def _stream_grads(q, q_ids, lse, g, k, k_ids, k_valid, block, dq, axis_name):
  """Backward of the streaming LSE for the keys `k`: returns (dq + dq_k, dk)."""
  num, dim = k.shape
  kb, kb_ids, kb_valid = _split_blocks(k, k_ids, k_valid, block)
  finite = jnp.isfinite(lse)
  lse = jnp.where(finite, lse, 0.0)
  g = jnp.where(finite, g, 0.0)

  def step(dq, xs):
    kblk = xs[0]
    s = _masked_scores(q, q_ids, *xs)
    w = jnp.exp(s - lse[:, None]) * g[:, None]  # softmax weights times cotangent, [n, B]
    dq = dq + w @ kblk  # [n, B] x [B, d] -> [n, d]
    dk = w.T @ q  # [B, n] x [n, d] -> [B, d]
    return dq, dk

  dq = to_varying(dq, axis_name)
  dq, dk = jax.lax.scan(step, dq, (kb, kb_ids, kb_valid))
  return dq, dk.reshape(-1, dim)[:num]


# ----------------------------------------------------------------------------------------
# Blockwise (keys already gathered).


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def blockwise_lse(q, k, q_ids, k_ids, k_valid, block, axis_name=None):
  """Streaming all-pairs LSE: q [n, d], k [N, d] -> [n], memory O(n * block)."""
  carry = _stream_stats(q, q_ids, k, k_ids, k_valid, block, _init_stats(q), axis_name)
  return _finish_stats(carry)


def _blockwise_fwd(q, k, q_ids, k_ids, k_valid, block, axis_name):
  lse = blockwise_lse(q, k, q_ids, k_ids, k_valid, block, axis_name)
  return lse, (q, k, q_ids, k_ids, k_valid, lse)


def _blockwise_bwd(block, axis_name, res, g):
  q, k, q_ids, k_ids, k_valid, lse = res
  dq, dk = _stream_grads(q, q_ids, lse, g, k, k_ids, k_valid, block, jnp.zeros_like(q),
                         axis_name)
  return dq, dk, None, None, None


blockwise_lse.defvjp(_blockwise_fwd, _blockwise_bwd)


# ----------------------------------------------------------------------------------------
# Ring (keys travel between devices).


def _ring_perm(axis_name):
  size = jax.lax.axis_size(axis_name)
  return size, [(j, (j + 1) % size) for j in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def ring_lse(q, k, ids, valid, block, axis_name):
  """All-pairs LSE with keys passed around the ring: q, k [n, d] local -> [n].

  Queries and keys are the same local rows (`ids` are their global row ids). At step s
  each device holds the key block of device (r - s) mod D; after D steps every anchor has
  seen every key. Memory per device: O(n * block + n * d), independent of D.
  """
  return _ring_fwd(q, k, ids, valid, block, axis_name)[0]


def _ring_fwd(q, k, ids, valid, block, axis_name):
  size, perm = _ring_perm(axis_name)
  carry = _init_stats(q)
  kk, kk_ids, kk_valid = k, ids, valid
  for step in range(size):
    carry = _stream_stats(q, ids, kk, kk_ids, kk_valid, block, carry, axis_name)
    if step + 1 < size:
      kk, kk_ids, kk_valid = jax.lax.ppermute((kk, kk_ids, kk_valid), axis_name, perm)
  lse = _finish_stats(carry)
  return lse, (q, k, ids, valid, lse)


def _ring_bwd(block, axis_name, res, g):
  q, k, ids, valid, lse = res
  size, perm = _ring_perm(axis_name)
  dq = jnp.zeros_like(q)
  kk, kk_ids, kk_valid, dk = k, ids, valid, to_varying(jnp.zeros_like(k), axis_name)
  for _ in range(size):
    dq, dk_step = _stream_grads(q, ids, lse, g, kk, kk_ids, kk_valid, block, dq, axis_name)
    dk = dk + dk_step
    # The key block and its gradient move on together; after `size` moves both are home.
    kk, kk_ids, kk_valid, dk = jax.lax.ppermute((kk, kk_ids, kk_valid, dk), axis_name, perm)
  return dq, dk, None, None


ring_lse.defvjp(_ring_fwd, _ring_bwd)


# ----------------------------------------------------------------------------------------


def all_pairs_lse(z: jax.Array, ids: jax.Array, valid: jax.Array, inv_tau, *,
                  impl: str = "dense", block_size: Optional[int] = None,
                  axis_name: Optional[str] = None) -> jax.Array:
  """LSE over the other valid rows of the global batch of z_i . z_j / tau.

  Args:
    z: [n, d] local (normalised) rows, float32 or float64.
    ids: [n] int global row ids (unique across devices).
    valid: [n] bool, rows that take part.
    inv_tau: 1 / temperature (scalar, may be traced).
    impl: "dense", "blockwise" or "ring" (ring needs `axis_name`).
    block_size: key block for blockwise/ring; None picks one (`auto_block_size`).
    axis_name: the data-parallel axis, or None on one device.

  Returns:
    [n] log-sum-exp per local anchor; -inf where an anchor has no other valid row.
  """
  q = z * inv_tau
  if impl == "ring":
    block = block_size or auto_block_size(z.shape[0], z.shape[0])
    return ring_lse(q, z, ids, valid, block, axis_name)
  k, k_ids, k_valid = _gather(z, axis_name), _gather(ids, axis_name), _gather(valid, axis_name)
  if impl == "dense":
    return dense_lse(q, k, ids, k_ids, k_valid)
  block = block_size or auto_block_size(z.shape[0], k.shape[0])
  return blockwise_lse(q, k, ids, k_ids, k_valid, block, axis_name)

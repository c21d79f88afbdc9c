"""Numerical helpers shared by the loss kernels: normalisation, masked log-sum-exp."""

from typing import Optional

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12


def normalize(x: jax.Array, *, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
  """L2-normalises `x` along `axis`; zero vectors stay zero (no NaN).

  Idempotent on unit vectors. Matches `torch.nn.functional.normalize`:
  `x / max(||x||, eps)`.

  Args:
    x: [..., d] array.
    axis: the axis to normalise.
    eps: floor on the norm.

  Returns:
    An array like `x` with unit norm along `axis` (or zero).

  Example:
    >>> normalize(jnp.array([[3.0, 4.0]]))
    Array([[0.6, 0.8]], dtype=float32)
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def compute_dtype(dtype) -> jnp.dtype:
  """The accumulation dtype for inputs of `dtype`: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def masked_logsumexp(x: jax.Array, valid: jax.Array, axis: int = -1) -> jax.Array:
  """log-sum-exp of `x` over the entries where `valid`; -inf for an empty set.

  Gradients are finite everywhere (zero for invalid entries and empty rows).

  Args:
    x: scores, e.g. [n, K].
    valid: bool array broadcastable to `x`.
    axis: the reduced axis.

  Returns:
    The reduced array, `x` without `axis`.
  """
  valid = jnp.broadcast_to(valid, x.shape)
  any_valid = jnp.any(valid, axis=axis, keepdims=True)
  # Rows with nothing valid get zeros so the LSE and its gradient stay finite.
  safe = jnp.where(valid, x, jnp.where(any_valid, -jnp.inf, 0.0))
  lse = jax.nn.logsumexp(safe, axis=axis, keepdims=True)
  return jnp.squeeze(jnp.where(any_valid, lse, -jnp.inf), axis)


def to_varying(x, axis_name: Optional[str]):
  """Marks `x` as device-varying over `axis_name` inside shard_map (no-op otherwise)."""
  if axis_name is None:
    return x

  def cast(leaf):
    vma = getattr(jax.typeof(leaf), "vma", frozenset())
    if axis_name in vma:
      return leaf
    try:
      if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(leaf, axis_name, to="varying")
      return jax.lax.pvary(leaf, axis_name)  # JAX < 0.8
    except (ValueError, NameError, TypeError):
      # Already varying, or outside shard_map (pmap, no vma tracking): nothing to cast.
      return leaf

  return jax.tree_util.tree_map(cast, x)

"""The one-device all-pairs kernel `self_stream_lse`: symmetric backward, streamed tiles.

Against autodiff of the plain dense block in float64 (value, gradient in z and in the
inverse temperature, masks, repeated ids, anchors without any key, block sizes that do
not divide n), and structurally: forward + backward compile to three matmuls where the
general stream needs four.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import projnce_jax as pj
from projnce_jax.losses import sample as sample_lib
from projnce_jax.losses._common import normalize


def _reference(z, ids, valid, inv_tau):
  """Autodiff of the [n, n] block: LSE over valid keys with another id."""
  return sample_lib.dense_lse(z * inv_tau, z, ids, ids, valid)


def _weighted(lse_fn, g):
  def f(z, inv_tau):
    lse = lse_fn(z, inv_tau)
    return jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * g)
  return f


def _case(n, d, seed, *, repeated_ids, no_key_rows):
  rng = np.random.RandomState(seed)
  z = normalize(jnp.asarray(rng.randn(n, d)))
  ids = rng.randint(0, n // 3, n) if repeated_ids else np.arange(n)
  valid = rng.rand(n) > 0.2
  if no_key_rows:  # rows of id 0 see only rows of their own id (or invalid ones)
    ids[:3] = 0
    valid[:] = False
    valid[:3] = True
  return z, jnp.asarray(ids, jnp.int32), jnp.asarray(valid)


@pytest.mark.parametrize("block", [7, 16, 64])
@pytest.mark.parametrize("repeated_ids,no_key_rows", [(False, False), (True, False),
                                                      (True, True)])
def test_value_and_gradients_equal_dense_autodiff(x64, block, repeated_ids, no_key_rows):
  n, d = 53, 8
  z, ids, valid = _case(n, d, block, repeated_ids=repeated_ids, no_key_rows=no_key_rows)
  inv_tau = jnp.float64(4.0)
  g = jnp.asarray(np.random.RandomState(1).randn(n))

  ref = jax.jit(_reference)(z, ids, valid, inv_tau)
  got = jax.jit(sample_lib.self_stream_lse, static_argnums=4)(z, ids, valid, inv_tau, block)
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
  assert np.isfinite(ref).sum() > 0
  fin = np.isfinite(ref)
  np.testing.assert_allclose(np.asarray(got)[fin], np.asarray(ref)[fin], rtol=1e-12)

  ref_fn = _weighted(lambda z_, t: _reference(z_, ids, valid, t), g)
  got_fn = _weighted(lambda z_, t: sample_lib.self_stream_lse(z_, ids, valid, t, block), g)
  (rz, rt), (gz, gt) = (jax.jit(jax.grad(f, (0, 1)))(z, inv_tau) for f in (ref_fn, got_fn))
  assert np.all(np.isfinite(gz)) and np.isfinite(gt)
  np.testing.assert_allclose(gz, rz, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(gt, rt, rtol=1e-10)


def test_check_grads(x64):
  z, ids, valid = _case(24, 5, 3, repeated_ids=True, no_key_rows=False)
  check_grads(jax.jit(lambda z_: sample_lib.self_stream_lse(z_, ids, valid, 3.0, 8)),
              (z,), order=1, modes=("rev",))
  check_grads(jax.jit(lambda t: sample_lib.self_stream_lse(z, ids, valid, t, 8)),
              (jnp.float64(3.0),), order=1, modes=("rev",))


def test_learnable_temperature_through_supcon(x64):
  """A traced temperature gets the same gradient on the kernel as on the dense block."""
  rng = np.random.RandomState(0)
  z = jnp.asarray(rng.randn(40, 6))
  y = jnp.asarray(rng.randint(0, 4, 40))

  def loss(t, impl):
    return pj.losses.supcon(z, y, temperature=t, impl=impl, block_size=16)[0]

  # On one device every impl but ring runs the kernel; the float64 autodiff reference:
  def ref(t):
    zn = normalize(z)
    s = zn @ zn.T / t
    eye = jnp.eye(40, dtype=bool)
    pos = (y[:, None] == y[None, :]) & ~eye
    lp = s - jax.nn.logsumexp(jnp.where(eye, -jnp.inf, s), axis=1, keepdims=True)
    return -jnp.mean(jnp.sum(jnp.where(pos, lp, 0.0), 1) / jnp.sum(pos, 1))

  t = jnp.float64(0.2)
  for impl in ("dense", "blockwise"):
    value_and_grad = jax.jit(jax.value_and_grad(lambda t_: loss(t_, impl)))
    ref_value, ref_grad = jax.jit(jax.value_and_grad(ref))(t)
    value, grad = value_and_grad(t)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10)


def _dot_count(fn, *args) -> int:
  text = jax.jit(fn).lower(*args).compile().as_text()
  return sum(1 for line in text.splitlines() if " dot(" in line)


def test_forward_backward_compiles_to_three_matmuls():
  """The symmetric backward has one product per key block; the general stream two."""
  n, d, block = 1024, 32, 256
  z = jnp.ones((n, d), jnp.float32)
  ids = jnp.arange(n)
  valid = jnp.ones((n,), bool)
  t = jnp.float32(10.0)
  ours = jax.grad(lambda z_: jnp.sum(sample_lib.self_stream_lse(z_, ids, valid, t, block)))
  general = jax.grad(lambda z_: jnp.sum(sample_lib.stream_lse(
      z_ * t, ids, z_, ids, valid, None, block)))
  assert _dot_count(ours, z) == 3
  assert _dot_count(general, z) == 4


def test_supcon_default_call_uses_the_kernel():
  """`supcon(z, y)` on one device: no [N, N] buffer is planned for the all-pairs term."""
  n, d = 8192, 32
  z = jax.ShapeDtypeStruct((n, d), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  fn = jax.value_and_grad(lambda z_, y_: pj.losses.supcon(z_, y_)[0])
  temp = jax.jit(fn).lower(z, y).compile().memory_analysis().temp_size_in_bytes
  assert temp < 0.25 * n * n * 4, temp / (n * n * 4)


def test_bfloat16_close_to_float32():
  rng = np.random.RandomState(0)
  z = normalize(jnp.asarray(rng.randn(300, 64), jnp.float32))
  ids = jnp.arange(300)
  valid = jnp.ones((300,), bool)
  t = jnp.float32(10.0)
  f = jax.jit(jax.value_and_grad(
      lambda z_: jnp.sum(sample_lib.self_stream_lse(z_, ids, valid, t, 128))))
  v32, g32 = f(z)
  v16, g16 = f(z.astype(jnp.bfloat16))
  assert g16.dtype == jnp.bfloat16
  assert abs(float(v16) - float(v32)) / abs(float(v32)) < 1e-2
  rel = float(jnp.linalg.norm(g16.astype(jnp.float32) - g32) / jnp.linalg.norm(g32))
  assert rel < 5e-2, rel

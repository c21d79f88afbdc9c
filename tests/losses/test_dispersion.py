"""The dispersion control term: float64 reference, match to R, masks and shard_map."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import projnce_jax as pj
from projnce_jax import parallel
from projnce_jax.losses import dispersion


@pytest.fixture(params=["block", "moments"], autouse=True)
def formulation(request, monkeypatch):
  """Every test runs with the [n, N] block and with the class-moment formulation."""
  if request.param == "moments":
    monkeypatch.setattr(dispersion, "_BLOCK_ENTRIES", 0)
  return request.param


def reference(z, y, tau, valid=None):
  """Loop-by-loop T_i and gap_i in float64 (module docstring of losses/dispersion.py)."""
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(y)
  valid = np.ones(n, bool) if valid is None else valid
  terms, gaps = [], []
  for i in range(n):
    if not valid[i]:
      continue
    keys = [j for j in range(n) if j != i and valid[j]]
    if not any(y[j] == y[i] for j in keys):
      continue
    base, full = [], []
    for c in sorted({y[j] for j in keys}):
      s = np.array([z[i] @ z[j] / tau for j in keys if y[j] == c])
      base.append(np.log(s.size) + s.mean())
      full.append(np.log(s.size) + s.mean() + s.var() / 2)
    lse = lambda v: np.max(v) + np.log(np.sum(np.exp(np.array(v) - np.max(v))))
    gap = lse(full) - lse(base)
    gaps.append(gap)
    terms.append(np.exp(-gap) - 1)
  return np.mean(terms), np.mean(gaps)


@pytest.mark.parametrize("seed,tau", [(0, 0.1), (1, 0.5), (2, 1.0)])
def test_matches_float64_reference(seed, tau):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((40, 6))
  y = rng.integers(0, 5, 40)
  y[7] = 9  # a class with one member: its anchor has no positive
  with jax.enable_x64(True):
    term, aux = pj.losses.dispersion_control(jnp.asarray(z), jnp.asarray(y), temperature=tau,
                                             num_classes=10)
    ref_term, ref_gap = reference(z, y, tau)
    np.testing.assert_allclose(float(term), ref_term, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(aux["dispersion_gap"]), ref_gap, rtol=1e-10)
    assert int(aux["dispersion_anchors"]) == 39


def test_mask_drops_rows():
  rng = np.random.default_rng(3)
  z = rng.standard_normal((30, 5))
  y = rng.integers(0, 3, 30)
  valid = rng.random(30) > 0.3
  with jax.enable_x64(True):
    term, _ = pj.losses.dispersion_control(jnp.asarray(z), jnp.asarray(y), temperature=0.2,
                                           num_classes=3, mask=jnp.asarray(valid))
    np.testing.assert_allclose(float(term), reference(z, y, 0.2, valid)[0], rtol=1e-10)


def test_equals_adjustment_r_for_collapsed_and_tight_classes():
  """T = R when classes are points, T ~ R (second order) for tight classes, T != R for wide."""
  rng = np.random.default_rng(4)
  centres = rng.standard_normal((4, 8))
  y = np.repeat(np.arange(4), 16)
  with jax.enable_x64(True):
    for spread in (0.0, 0.05, 0.4):
      z = centres[y] + spread * rng.standard_normal((64, 8))
      term, _ = pj.losses.dispersion_control(jnp.asarray(z), jnp.asarray(y), temperature=0.1,
                                             num_classes=4)
      _, aux = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), temperature=0.1,
                                 positive="centroid", negative="sample", num_classes=4)
      term, r = float(term), float(aux["adjustment"])
      if spread == 0.0:
        assert abs(term) < 1e-9 and abs(r) < 1e-9
      elif spread == 0.05:
        assert r < -1e-5
        np.testing.assert_allclose(term, r, rtol=0.01)
      else:  # higher cumulants of the class scores: the control is not R itself
        assert r < -0.05 and abs(term - r) > 0.05 * abs(r)


def test_sharded_equals_one_device():
  """Local anchors against the gathered batch on 8 devices == one device (value, grad)."""
  rng = np.random.default_rng(5)
  mesh = parallel.make_mesh()
  with jax.enable_x64(True):
    z = jnp.asarray(rng.standard_normal((32, 6)))
    y = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
    kw = dict(temperature=0.2, num_classes=4)
    value_grad = lambda f: jax.jit(jax.value_and_grad(lambda a, b: f(a, b)[0]))
    want = value_grad(lambda a, b: pj.losses.dispersion_control(a, b, **kw))(z, y)
    got = value_grad(parallel.sharded_loss(pj.losses.dispersion_control, mesh, **kw))(z, y)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-12)


def test_bad_input():
  with pytest.raises(ValueError, match="labels"):
    pj.losses.dispersion_control(jnp.ones((4, 3)), jnp.ones((5,), jnp.int32), num_classes=2)
  with pytest.raises(ValueError, match="temperature"):
    pj.losses.dispersion_control(jnp.ones((4, 3)), jnp.zeros((4,), jnp.int32),
                                 temperature=0.0, num_classes=2)


def test_plans_no_n_by_n_buffer(formulation):
  """Class moments only: at N = 16,384, d = 128, M = 100 the compiled forward + backward
  plans less temporary memory than 1/8 of one N x N float32 matrix (1 GiB; the [n, N]
  formulation planned 6 GiB)."""
  if formulation == "block":
    pytest.skip("the automatic choice at this size is the moment formulation")
  n, d = 16384, 128
  z = jax.ShapeDtypeStruct((n, d), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  f = jax.jit(jax.grad(lambda z, y: pj.losses.dispersion_control(
      z, y, temperature=0.1, num_classes=100)[0]))
  temp = f.trace(z, y).lower().compile().memory_analysis().temp_size_in_bytes
  assert temp < n * n * 4 / 8, temp

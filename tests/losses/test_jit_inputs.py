"""Loss inputs that only jit can hide: out-of-range labels, traced temperatures, no anchors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from jax.sharding import PartitionSpec as P

import projnce_jax as pj


def _batch(n=32, m=4, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, 8)), jnp.float32),
          jnp.asarray(rng.integers(0, m, n), jnp.int32))


def test_out_of_range_labels_are_invalid_rows_under_jit():
  """Rows with labels outside [0, num_classes) are neither anchors nor keys: the loss is
  the loss of the other rows, and they are counted."""
  z, y = _batch()
  bad = y.at[jnp.array([3, 7])].set(jnp.array([4, -1]))   # num_classes = 4
  keep = np.ones(32, bool)
  keep[[3, 7]] = False
  loss, aux = jax.jit(lambda z, y: pj.losses.projnce(z, y, num_classes=4))(z, bad)
  want, want_aux = pj.losses.projnce(z[keep], y[keep], num_classes=4)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert int(aux["num_invalid_labels"]) == 2 and int(want_aux["num_invalid_labels"]) == 0
  assert int(aux["num_anchors"]) == int(want_aux["num_anchors"])
  # vmap over two batches: the same rule in each.
  losses, auxes = jax.vmap(lambda z, y: pj.losses.projnce(z, y, num_classes=4))(
      jnp.stack([z, z]), jnp.stack([bad, y]))
  np.testing.assert_allclose(np.asarray(losses), [float(want), float(
      pj.losses.projnce(z, y, num_classes=4)[0])], rtol=1e-6)
  assert auxes["num_invalid_labels"].tolist() == [2, 0]
  with pytest.raises(ValueError, match="labels must lie in"):
    pj.losses.projnce(z, bad, num_classes=4)   # eager: a clear error


def test_out_of_range_labels_under_shard_map():
  z, y = _batch()
  bad = y.at[jnp.array([3, 20])].set(9)
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  fn = jax.jit(jax.shard_map(
      lambda z, y: pj.losses.projnce(z, y, num_classes=4, axis_name="data"), mesh=mesh,
      in_specs=(P("data"), P("data")), out_specs=(P(), P())))
  loss, aux = fn(z, bad)
  keep = np.ones(32, bool)
  keep[[3, 20]] = False
  np.testing.assert_allclose(float(loss), float(pj.losses.projnce(
      z[keep], y[keep], num_classes=4)[0]), rtol=1e-5)
  assert int(aux["num_invalid_labels"]) == 2


def test_checked_catches_labels_temperature_and_inf():
  z, y = _batch()
  fn = jax.jit(pj.losses.checked(
      lambda z, y, temperature: pj.losses.projnce(z, y, num_classes=4,
                                                  temperature=temperature)))
  err, _ = fn(z, y, temperature=jnp.float32(0.1))
  err.throw()   # nothing wrong
  err, _ = fn(z, y.at[0].set(7), temperature=jnp.float32(0.1))
  with pytest.raises(checkify.JaxRuntimeError, match="1 row.*outside"):
    err.throw()
  err, _ = fn(z, y, temperature=jnp.float32(0.0))
  with pytest.raises(checkify.JaxRuntimeError, match="temperature must be > 0"):
    err.throw()
  err, _ = fn(z.at[0, 0].set(jnp.inf), y, temperature=jnp.float32(0.1))
  with pytest.raises(checkify.JaxRuntimeError, match="non-finite embeddings"):
    err.throw()


def test_no_anchor_reports_a_zero_bound():
  z, _ = _batch(n=8)
  loss, aux = jax.jit(lambda z: pj.losses.projnce(z, jnp.arange(8), num_classes=8))(z)
  assert int(aux["num_anchors"]) == 0 and float(loss) == 0.0
  assert float(aux["mi_lower_bound"]) == 0.0

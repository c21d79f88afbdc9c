"""Spec property 6: data-parallel losses equal the one-device loss on the whole batch.

Local anchors contrast against the global batch under `jax.shard_map` over 8 CPU devices;
value and gradient must equal the single-device loss on the concatenated batch (float64,
1e-9), for every projection pair and every implementation of the all-pairs term.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import projnce_jax as pj

from .test_projnce import PAIRS, _batch, _kwargs

pytestmark = pytest.mark.usefixtures("x64")
AXIS = "data"


def _mesh(num_devices):
  return jax.make_mesh((num_devices,), (AXIS,), devices=jax.devices()[:num_devices],
                       axis_types=(jax.sharding.AxisType.Auto,))


def _value_and_grads(z, y, mask, *, mesh=None, **kw):
  """(loss, aux, dloss/dz, dloss/dparams) on one device (mesh None) or sharded."""
  params = kw.pop("params", None)

  def loss_fn(z_, y_, m_, p_):
    return pj.losses.projnce(z_, y_, mask=m_, params=p_, **kw)

  if mesh is not None:
    axis_kw = {"axis_name": AXIS}
    loss_fn = jax.shard_map(
        lambda z_, y_, m_, p_: pj.losses.projnce(z_, y_, mask=m_, params=p_, **kw, **axis_kw),
        mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS), P()), out_specs=(P(), P()),
        check_vma=True)
  fn = jax.jit(jax.value_and_grad(lambda z_, p_: loss_fn(z_, y, mask, p_), argnums=(0, 1),
                                  has_aux=True))
  (loss, aux), (gz, gp) = fn(z, params)
  return loss, aux, gz, gp


def _assert_same(a, b, tol=1e-9):
  loss_a, aux_a, gz_a, gp_a = a
  loss_b, aux_b, gz_b, gp_b = b
  np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=0, atol=tol)
  for key in pj.losses.AUX_KEYS:
    np.testing.assert_allclose(float(aux_a[key]), float(aux_b[key]), rtol=0, atol=tol,
                               err_msg=key)
  np.testing.assert_allclose(np.asarray(gz_a), np.asarray(gz_b), rtol=0, atol=tol)
  jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol),
      gp_a, gp_b)


def _data(n=32, d=8, m=4, seed=0):
  z, y = _batch(seed, n=n, d=d, m=m)
  mask = np.ones(n, bool)
  mask[[3, 20]] = False  # padding rows on two devices
  return jnp.asarray(z), jnp.asarray(y), jnp.asarray(mask)


# The implementation only changes the all-pairs ('sample') term: every pair runs dense, and
# the pairs with 'sample' negatives also run blockwise and ring.
CASES = ([(p, n, "dense") for p, n in PAIRS] +
         [(p, "sample", impl) for p in pj.losses.PROJECTIONS for impl in ("blockwise", "ring")])


@pytest.mark.parametrize("positive,negative,impl", CASES)
def test_sharded_equals_single_device(positive, negative, impl):
  z, y, mask = _data()
  kw = dict(_kwargs(positive, negative, 4, 8), temperature=0.3, beta=1.0)
  single = _value_and_grads(z, y, mask, **kw)
  sharded = _value_and_grads(z, y, mask, mesh=_mesh(8), impl=impl, block_size=3, **kw)
  _assert_same(sharded, single)


@pytest.mark.parametrize("num_devices", [1, 2, 4, 8])
def test_ring_any_device_count(num_devices):
  z, y, mask = _data(n=24, seed=3)
  kw = dict(temperature=0.2, positive="centroid", negative="sample")
  single = _value_and_grads(z, y, mask, **kw)
  ring = _value_and_grads(z, y, mask, mesh=_mesh(num_devices), impl="ring", **kw)
  _assert_same(ring, single)


@pytest.mark.parametrize("impl", ["dense", "blockwise", "ring"])
def test_infonce_ids_are_global(impl):
  rng = np.random.default_rng(1)
  zv = jnp.asarray(rng.standard_normal((16, 2, 8)))
  single = jax.value_and_grad(lambda z: pj.losses.infonce(z, temperature=0.5)[0])(zv)
  sharded_fn = jax.shard_map(
      lambda z: pj.losses.infonce(z, temperature=0.5, axis_name=AXIS, impl=impl)[0],
      mesh=_mesh(8), in_specs=P(AXIS), out_specs=P(), check_vma=True)
  sharded = jax.jit(jax.value_and_grad(sharded_fn))(zv)
  np.testing.assert_allclose(float(sharded[0]), float(single[0]), atol=1e-9)
  np.testing.assert_allclose(np.asarray(sharded[1]), np.asarray(single[1]), atol=1e-9)


def test_gradient_inside_shard_map_matches():
  """The train-step pattern: grad taken inside shard_map w.r.t. replicated params."""
  z, y, mask = _data()
  w = jnp.asarray(np.random.default_rng(2).standard_normal((8, 6)))

  def local(w_, z_, y_, m_):
    loss_fn = lambda w__: pj.losses.supcon(z_ @ w__, y_, mask=m_, axis_name=AXIS)[0]
    return jax.value_and_grad(loss_fn)(w_)

  sharded = jax.jit(jax.shard_map(local, mesh=_mesh(8),
                                  in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                                  out_specs=(P(), P()), check_vma=True))(w, z, y, mask)
  single = jax.value_and_grad(lambda w_: pj.losses.supcon(z @ w_, y, mask=mask)[0])(w)
  np.testing.assert_allclose(float(sharded[0]), float(single[0]), atol=1e-9)
  np.testing.assert_allclose(np.asarray(sharded[1]), np.asarray(single[1]), atol=1e-9)


# Without num_classes (slots = the batch's distinct labels, streamed in blocks of 3 slots,
# empty blocks skipped) for every data-dependent pair, and InfoNCE's instance path.
NO_NC_CASES = [("centroid", "sample", "dense"), ("centroid", "sample", "blockwise"),
               ("centroid", "sample", "ring"),
               ("median", "sample", "ring"), ("kernel", "sample", "blockwise"),
               ("kernel", "median", "dense"), ("median", "centroid", "dense"),
               ("centroid", "kernel", "dense")]


@pytest.mark.parametrize("positive,negative,impl", NO_NC_CASES)
def test_sharded_without_num_classes_equals_single_device(positive, negative, impl):
  z, y, mask = _data(seed=4)
  y = y * 7 + 3  # arbitrary label values: only their distinctness matters
  kw = dict(positive=positive, negative=negative, temperature=0.3, beta=1.0)
  single = _value_and_grads(z, y, mask, block_size=3, **kw)
  with_nc = _value_and_grads(z, y - 3, mask, num_classes=29, **kw)
  _assert_same(single, with_nc)
  sharded = _value_and_grads(z, y, mask, mesh=_mesh(8), impl=impl, block_size=3, **kw)
  _assert_same(sharded, single)


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_infonce_instance_path_equals_reference(impl):
  from . import reference as ref
  rng = np.random.default_rng(5)
  zv = rng.standard_normal((16, 2, 8))
  mask = np.ones(16, bool)
  mask[[2, 11]] = False
  fn = jax.shard_map(
      lambda z, m: pj.losses.infonce(z, temperature=0.5, axis_name=AXIS, impl=impl,
                                     block_size=1, mask=m)[0],
      mesh=_mesh(8), in_specs=(P(AXIS), P(AXIS)), out_specs=P(), check_vma=True)
  loss, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(zv), jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), ref.nt_xent(zv[mask], 0.5), atol=1e-10)
  single = jax.grad(lambda z: pj.losses.infonce(z[jnp.asarray(mask)], temperature=0.5)[0])(
      jnp.asarray(zv))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(single), atol=1e-9)

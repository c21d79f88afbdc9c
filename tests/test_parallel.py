"""Tests for projnce_jax.parallel: mesh, batches, shard_map/pmap wrappers, train step."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from projnce_jax import parallel

try:
  from tests import multihost_worker
except ImportError:  # tests/ on sys.path without being a package
  import multihost_worker

D = 8


def _losses_or_skip():
  try:
    from projnce_jax import losses
  except ImportError:
    losses = None
  if losses is None or not hasattr(losses, "supcon"):
    pytest.skip("projnce_jax.losses is not available")
  return losses


def _batch(n=64, d=16, num_classes=5, seed=0, dtype=np.float64):
  rng = np.random.RandomState(seed)
  return (rng.randn(n, d).astype(dtype),
          rng.randint(0, num_classes, size=n).astype(np.int32))


# ----------------------------------------------------------------------------------------
# Mesh, shardings, initialisation.
# ----------------------------------------------------------------------------------------


def test_make_mesh_all_devices():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",)
  assert mesh.devices.shape == (D,)
  assert parallel.data_sharding(mesh).spec == P("data")
  assert parallel.replicated_sharding(mesh).spec == P()


def test_make_mesh_subset_and_name():
  mesh = parallel.make_mesh(2, axis_name="batch")
  assert mesh.axis_names == ("batch",)
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()[:2]]


@pytest.mark.parametrize("n,msg", [(3, "num_devices=3 .* 8 available"),
                                   (16, "num_devices=16 .* 8 available"),
                                   (0, ">= 1, got 0")])
def test_make_mesh_bad_count(n, msg):
  with pytest.raises(ValueError, match=msg):
    parallel.make_mesh(n)


def test_initialize_distributed_single_process_is_noop():
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(num_processes=1, process_id=0) is False


def test_initialize_distributed_auto_detect_calls_jax(monkeypatch):
  """--distributed: jax.distributed.initialize() detects the cluster; given flags win."""
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
  assert parallel.initialize_distributed(auto_detect=True) is True
  assert calls == [("jax_cpu_collectives_implementation", "gloo"),
                   dict(coordinator_address=None, num_processes=None, process_id=None,
                        local_device_ids=None)]
  calls.clear()
  assert parallel.initialize_distributed("h:1", num_processes=4, process_id=3,
                                         cpu_collectives=None, auto_detect=True) is True
  assert calls == [dict(coordinator_address="h:1", num_processes=4, process_id=3,
                        local_device_ids=None)]


def test_initialize_distributed_validates():
  with pytest.raises(ValueError, match="coordinator_address"):
    parallel.initialize_distributed(num_processes=2, process_id=0)
  with pytest.raises(ValueError, match=r"\[0, 2\).*5"):
    parallel.initialize_distributed("localhost:1", num_processes=2, process_id=5)


def test_shard_batch_layout():
  mesh = parallel.make_mesh()
  z, labels = _batch(n=32, dtype=np.float32)
  out = parallel.shard_batch({"z": z, "labels": labels}, mesh)
  assert out["z"].shape == (32, 16) and out["labels"].shape == (32,)
  assert out["z"].sharding.spec == P("data")
  assert {s.data.shape for s in out["z"].addressable_shards} == {(4, 16)}
  np.testing.assert_array_equal(np.asarray(out["z"]), z)
  np.testing.assert_array_equal(np.asarray(out["labels"]), labels)


def test_shard_batch_errors():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match=r"12 rows.*8 devices"):
    parallel.shard_batch({"z": np.zeros((12, 3))}, mesh)
  with pytest.raises(ValueError, match="different leading sizes"):
    parallel.shard_batch({"z": np.zeros((16, 3)), "labels": np.zeros(8)}, mesh)


# ----------------------------------------------------------------------------------------
# sharded_loss and pmap_loss.
# ----------------------------------------------------------------------------------------


def _kernels():
  """(name, fn, kwargs): the harness kernel, then the library kernels once available."""
  out = [("psum_supcon", multihost_worker.psum_supcon, {"temperature": 0.1})]
  try:
    from projnce_jax import losses
  except ImportError:
    return out
  if hasattr(losses, "supcon"):
    out += [("supcon", losses.supcon, {"temperature": 0.1}),
            ("projnce", losses.projnce, {"temperature": 0.1, "beta": 1.0})]
  return out


def _value_grad(f):
  return jax.jit(jax.value_and_grad(lambda z, y: f(z, y)[0]))


@pytest.mark.parametrize("name,fn,kwargs", _kernels(), ids=[k[0] for k in _kernels()])
def test_sharded_loss_matches_single_device(x64, name, fn, kwargs):
  del name
  mesh = parallel.make_mesh()
  z, labels = _batch()
  loss_ref, grad_ref = _value_grad(lambda a, b: fn(a, b, **kwargs))(z, labels)
  f = parallel.sharded_loss(fn, mesh, **kwargs)
  loss, grad = _value_grad(f)(z, labels)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)
  _, aux = jax.jit(f)(z, labels)
  _, aux_ref = jax.jit(lambda a, b: fn(a, b, **kwargs))(z, labels)
  for k in aux_ref:
    np.testing.assert_allclose(aux[k], aux_ref[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_sharded_loss_impls_match_dense(x64, impl):
  losses = _losses_or_skip()
  mesh = parallel.make_mesh()
  z, labels = _batch()
  ref = _value_grad(parallel.sharded_loss(losses.projnce, mesh, temperature=0.1))
  got = _value_grad(parallel.sharded_loss(losses.projnce, mesh, temperature=0.1,
                                          impl=impl, block_size=4))
  try:
    loss, grad = got(z, labels)
  except (ValueError, NotImplementedError) as e:
    pytest.skip(f"impl={impl} unavailable: {e}")
  loss_ref, grad_ref = ref(z, labels)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_sharded_loss_errors():
  mesh = parallel.make_mesh()
  f = parallel.sharded_loss(multihost_worker.psum_supcon, mesh, temperature=0.1)
  z, labels = _batch(n=12)
  with pytest.raises(ValueError, match=r"12 rows.*8 devices"):
    f(z, labels)
  with pytest.raises(ValueError, match="axis 'batch'"):
    parallel.sharded_loss(multihost_worker.psum_supcon, mesh, axis_name="batch")


@pytest.mark.parametrize("name,fn,kwargs", _kernels()[:2],
                         ids=[k[0] for k in _kernels()[:2]])
def test_pmap_loss_value_and_gradient_match_shard_map(x64, name, fn, kwargs):
  mesh = parallel.make_mesh()
  z, labels = _batch()
  loss_ref, grad_ref = _value_grad(parallel.sharded_loss(fn, mesh, **kwargs))(z, labels)
  zs, ys = z.reshape(D, -1, z.shape[-1]), labels.reshape(D, -1)

  f = parallel.pmap_loss(fn, "data", **kwargs)
  loss, aux = f(zs, ys)
  assert loss.shape == (D,)
  np.testing.assert_allclose(loss, np.full(D, loss_ref), rtol=1e-12)
  assert all(np.shape(v) == (D,) for v in jax.tree.leaves(aux))

  # The pmap idiom: differentiate inside pmap.
  grad = jax.pmap(jax.grad(lambda a, b: f.per_device(a, b)[0]), axis_name="data")(zs, ys)
  np.testing.assert_allclose(grad.reshape(z.shape), grad_ref, rtol=1e-10, atol=1e-12)

  # Without the adapter's rescaling, pmap's psum transpose gives D times the gradient.
  if name != "psum_supcon":
    return
  raw = jax.pmap(jax.grad(lambda a, b: fn(a, b, axis_name="data", **kwargs)[0]),
                 axis_name="data")(zs, ys)
  np.testing.assert_allclose(raw.reshape(z.shape), D * grad_ref, rtol=1e-10, atol=1e-12)


def test_pmap_loss_parameter_gradients_psum_to_full_gradient(x64):
  """A linear encoder under pmap: psum of per-device parameter gradients == 1 device."""
  x, labels = _batch(n=32, d=6, num_classes=4, seed=5)
  w = np.random.RandomState(6).randn(6, 4)
  fn = multihost_worker.psum_supcon
  ref = jax.grad(lambda w: fn(x @ w, labels, temperature=0.1)[0])(w)
  f = parallel.pmap_loss(fn, "data", temperature=0.1)

  def per_device(w, x, y):
    g = jax.grad(lambda w: f.per_device(x @ w, y)[0])(w)
    return jax.lax.psum(g, "data")

  grads = jax.pmap(per_device, axis_name="data", in_axes=(None, 0, 0))(
      w, x.reshape(D, -1, 6), labels.reshape(D, -1))
  np.testing.assert_allclose(grads, np.broadcast_to(ref, (D,) + ref.shape),
                             rtol=1e-10, atol=1e-12)


def test_pmap_loss_shape_error():
  f = parallel.pmap_loss(multihost_worker.psum_supcon, "data", temperature=0.1)
  z, labels = _batch()
  with pytest.raises(ValueError, match=r"\[D, n, d\].*\(64,\)"):
    f(z[:, 0], labels)


# ----------------------------------------------------------------------------------------
# sharded_step.
# ----------------------------------------------------------------------------------------


def _linear_step(optimizer, reduce_loss=True):
  """Per-device step of a linear model under mean-squared error.

  With `reduce_loss` the differentiated loss is the global mean (pmean of the local
  means): its gradient w.r.t. the replicated parameters is already the full-batch
  gradient. Without it, each device differentiates its local mean and the gradients come
  out summed over devices (the transpose of the implicit pvary of replicated params).
  """

  def step_fn(state, batch, rng):
    params, opt_state = state
    noise = 0.0 * jax.random.normal(rng, ())           # rng is usable per device

    def loss_fn(p):
      pred = batch["x"] @ p["w"] + p["b"]              # [n, 1]
      local = jnp.mean((pred - batch["y"]) ** 2) + noise
      return jax.lax.pmean(local, "data") if reduce_loss else local

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), {"loss": jax.lax.pmean(loss, "data")}

  return step_fn


def test_sharded_step_matches_one_device(x64, num_devices=D):
  rng = np.random.RandomState(0)
  batch = {"x": rng.randn(32, 5), "y": rng.randn(32, 1)}
  params = {"w": rng.randn(5, 1), "b": np.zeros((1,))}
  optimizer = optax.sgd(0.1, momentum=0.9)

  def run(n):
    mesh = parallel.make_mesh(n)
    step = parallel.sharded_step(_linear_step(optimizer), mesh)
    state = jax.tree.map(jnp.asarray, (params, optimizer.init(params)))
    for i in range(2):
      state, metrics = step(state, parallel.shard_batch(batch, mesh),
                            jax.random.key(i))
    return state, metrics

  (p1, _), m1 = run(1)
  (pn, _), mn = run(num_devices)
  assert pn["w"].sharding.spec == P() and pn["w"].dtype == jnp.float64
  np.testing.assert_allclose(mn["loss"], m1["loss"], rtol=1e-12)
  for k in p1:
    np.testing.assert_allclose(pn[k], p1[k], rtol=1e-12, atol=1e-14)


def test_sharded_step_gradients_of_replicated_params_are_summed(x64):
  """Pins the check_vma semantics the step contract relies on (see sharded_step)."""
  rng = np.random.RandomState(1)
  batch = {"x": rng.randn(16, 3), "y": rng.randn(16, 1)}
  params = {"w": rng.randn(3, 1), "b": np.zeros((1,))}
  optimizer = optax.sgd(1.0)

  def update(n, reduce_loss):
    mesh = parallel.make_mesh(n)
    step = parallel.sharded_step(_linear_step(optimizer, reduce_loss), mesh)
    state = jax.tree.map(jnp.asarray, (params, optimizer.init(params)))
    (new, _), _ = step(state, batch, jax.random.key(0))
    return new["w"] - params["w"]

  ref = update(1, True)
  np.testing.assert_allclose(update(D, True), ref, rtol=1e-12)
  np.testing.assert_allclose(update(D, False), D * ref, rtol=1e-12)


def test_sharded_step_contrastive_encoder(x64):
  """A linear encoder trained with a loss kernel: 8 devices == 1 device."""
  rng = np.random.RandomState(2)
  x, labels = _batch(n=32, d=6, num_classes=4, seed=3)
  params = {"w": rng.randn(6, 4)}
  optimizer = optax.adam(1e-2)
  kernel = _kernels()[-1]

  def step_fn(state, batch, rng):
    del rng
    params, opt_state = state

    def loss_fn(p):
      z = batch["x"] @ p["w"]                               # [n, 4]
      return kernel[1](z, batch["labels"], axis_name="data", **kernel[2])[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)     # global loss and gradient
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

  def run(n):
    mesh = parallel.make_mesh(n)
    step = parallel.sharded_step(step_fn, mesh)
    state = jax.tree.map(jnp.asarray, (params, optimizer.init(params)))
    batch = parallel.shard_batch({"x": x, "labels": labels}, mesh)
    for i in range(2):
      state, metrics = step(state, batch, jax.random.key(i))
    return state[0]["w"], metrics["loss"]

  w1, l1 = run(1)
  w8, l8 = run(D)
  np.testing.assert_allclose(l8, l1, rtol=1e-12)
  np.testing.assert_allclose(w8, w1, rtol=1e-10, atol=1e-12)


def test_sharded_step_donates_state():
  mesh = parallel.make_mesh()
  optimizer = optax.sgd(0.1)
  params = {"w": jnp.ones((3, 1)), "b": jnp.zeros((1,))}
  state = (params, optimizer.init(params))
  state = jax.device_put(state, parallel.replicated_sharding(mesh))
  step = parallel.sharded_step(_linear_step(optimizer), mesh)
  batch = {"x": np.ones((8, 3), np.float32), "y": np.ones((8, 1), np.float32)}
  new_state, _ = step(state, batch, jax.random.key(0))
  assert state[0]["w"].is_deleted()
  assert not new_state[0]["w"].is_deleted()
  kept = parallel.sharded_step(_linear_step(optimizer), mesh, donate_state=False)
  _, _ = kept(new_state, batch, jax.random.key(1))
  assert not new_state[0]["w"].is_deleted()


def test_sharded_step_batch_size_error():
  mesh = parallel.make_mesh()
  step = parallel.sharded_step(_linear_step(optax.sgd(0.1)), mesh)
  params = {"w": jnp.ones((3, 1)), "b": jnp.zeros((1,))}
  batch = {"x": np.ones((12, 3), np.float32), "y": np.ones((12, 1), np.float32)}
  with pytest.raises(ValueError, match=r"\['x'\].*\(12, 3\).*8 devices"):
    step((params, optax.sgd(0.1).init(params)), batch, jax.random.key(0))


def test_sharded_step_rejects_unreduced_state():
  mesh = parallel.make_mesh()

  def bad_step(state, batch, rng):
    del rng
    return state + batch["x"].sum(), {}                # varies across devices

  step = parallel.sharded_step(bad_step, mesh)
  with pytest.raises(Exception, match="vma|varying|pvary|out_specs"):
    step(jnp.zeros(()), {"x": np.ones((8,), np.float32)}, jax.random.key(0))


# ----------------------------------------------------------------------------------------
# Two processes x 4 CPU devices == one process.
# ----------------------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_process_multihost(x64, tmp_path):
  worker = multihost_worker.__file__
  repo = os.path.dirname(os.path.dirname(os.path.abspath(worker)))
  port = _free_port()
  out = tmp_path / "result.npz"
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  procs = [
      subprocess.Popen(
          [sys.executable, worker, "--port", str(port), "--process_id", str(i),
           "--num_processes", "2", "--local_devices", "4", "--out", str(out)],
          env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=120)[0])
  except subprocess.TimeoutExpired:
    pytest.fail("multi-host workers did not finish within 120 s")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"

  got = np.load(out)
  assert int(got["process_count"]) == 2 and int(got["device_count"]) == 8
  z, labels = multihost_worker.make_batch()
  names = sorted({k.split("/")[0] for k in got.files if "/" in k})
  assert names == sorted(multihost_worker.kernels())
  for name, (fn, kwargs) in multihost_worker.kernels().items():
    kwargs = {k: v for k, v in kwargs.items() if k not in ("impl", "block_size")}
    loss, grad = _value_grad(lambda a, b: fn(a, b, **kwargs))(z, labels)
    np.testing.assert_allclose(got[f"{name}/loss"], loss, rtol=0, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(got[f"{name}/grad"], grad, rtol=0, atol=1e-9, err_msg=name)

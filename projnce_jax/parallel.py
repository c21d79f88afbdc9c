"""Data parallelism: multi-host set-up, the 1-D data mesh and shard_map wrappers.

The loss kernels in `projnce_jax.losses` take the *local* rows of a device and an
`axis_name`; inside `jax.shard_map` over that axis they contrast local anchors against the
gathered global batch and return the global loss, identical on every device. This module
supplies everything around them:

- `initialize_distributed`: `jax.distributed.initialize` for multi-host runs (gloo
  collectives on CPU), a no-op for a single process.
- `make_mesh`, `data_sharding`, `replicated_sharding`: a 1-D data-parallel mesh over all
  global devices and its two shardings (batch rows split, everything else replicated).
- `shard_batch`: host-local numpy batches -> global `jax.Array`s sharded over the mesh.
- `sharded_loss`: a loss kernel under `shard_map`: global arrays in, global loss out.
- `pmap_loss`: the same kernel under `jax.pmap` (inputs `[D, n, ...]`), with gradients
  made equal to those of `sharded_loss` (see its docstring).
- `sharded_step`: a generic jitted, donated, data-parallel train step.

Example (one host, 8 devices)::

  mesh = make_mesh()                                    # 8 devices, axis "data"
  batch = shard_batch({"z": z, "labels": y}, mesh)      # z: [N, d], y: [N]
  loss_fn = sharded_loss(pj.losses.supcon, mesh, temperature=0.1)
  loss, aux = jax.jit(loss_fn)(batch["z"], batch["labels"])
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree]]

__all__ = [
    "initialize_distributed",
    "make_mesh",
    "data_sharding",
    "replicated_sharding",
    "shard_batch",
    "sharded_loss",
    "pmap_loss",
    "sharded_step",
]


# ----------------------------------------------------------------------------------------
# Multi-host initialisation.
# ----------------------------------------------------------------------------------------


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    auto_detect: bool = False,
) -> bool:
  """Connects this process to a multi-process JAX run (`jax.distributed.initialize`).

  Must be called before anything touches a device (`jax.devices()`, any computation).
  With nothing given, or `num_processes == 1`, it does nothing: a single process needs
  no coordinator. With `auto_detect=True` it always calls `jax.distributed.initialize`,
  which detects what is not given from the cluster (Cloud TPU pods, SLURM, Open MPI).
  Calling it again once initialised is a no-op.

  Args:
    coordinator_address: "host:port" of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: the local devices this process uses (default: all).
    cpu_collectives: cross-process collectives for the CPU backend ("gloo" or "mpi");
      set through `jax_cpu_collectives_implementation` before initialising. `None` leaves
      the setting alone. It has no effect on GPU/TPU devices.
    auto_detect: let `jax.distributed.initialize` detect the cluster (the arguments
      above, when given, take precedence).

  Returns:
    True when this call initialised the distributed runtime, False when it did nothing.

  Raises:
    ValueError: `num_processes`/`process_id` out of range, or a multi-process run
      requested without a coordinator address.

  Example::

    initialize_distributed("localhost:12345", num_processes=2, process_id=0)
  """
  if jax.distributed.is_initialized():
    return False
  if auto_detect:
    if cpu_collectives is not None:
      jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, local_device_ids=local_device_ids)
    return True
  nothing_given = (coordinator_address is None and num_processes is None and
                   process_id is None and local_device_ids is None)
  if nothing_given or num_processes == 1:
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
  if (process_id is not None and num_processes is not None and
      not 0 <= process_id < num_processes):
    raise ValueError(
        f"process_id must be in [0, {num_processes}), got {process_id}.")
  if coordinator_address is None:
    raise ValueError(
        "coordinator_address ('host:port' of process 0) is required for a "
        f"multi-process run (num_processes={num_processes}, process_id={process_id}).")
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids)
  return True


# ----------------------------------------------------------------------------------------
# Mesh and shardings.
# ----------------------------------------------------------------------------------------


def _select_devices(num_devices: int | None) -> list[jax.Device]:
  """The devices of a `num_devices` data mesh: the same number from every process."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  total = len(devices)
  if num_devices is None:
    return devices
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
  if num_devices > total or total % num_devices:
    raise ValueError(
        f"num_devices={num_devices} must divide the {total} available devices "
        f"(jax.devices()); choose a divisor of {total}.")
  num_procs = jax.process_count()
  if num_procs == 1:
    return devices[:num_devices]
  if num_devices % num_procs:
    raise ValueError(
        f"num_devices={num_devices} must be a multiple of the {num_procs} processes "
        "so that every process holds part of the mesh.")
  per_proc = num_devices // num_procs
  chosen = []
  for p in range(num_procs):
    chosen.extend([d for d in devices if d.process_index == p][:per_proc])
  return chosen


def make_mesh(num_devices: int | None = None, axis_name: str = "data") -> Mesh:
  """A 1-D data-parallel mesh over the global devices.

  Args:
    num_devices: mesh size; default all global devices. It must divide the number of
      devices (and, with several processes, be a multiple of the process count: every
      process contributes `num_devices / process_count` of its local devices).
    axis_name: the mesh axis name that loss kernels and steps reduce over.

  Returns:
    A `Mesh` of shape `(num_devices,)` with one `Auto` axis `axis_name` (so `jax.jit`
    can move unsharded inputs onto it).

  Raises:
    ValueError: `num_devices` does not divide the available devices.

  Example::

    mesh = make_mesh()            # all devices
    mesh1 = make_mesh(1)          # the first device only
  """
  devices = _select_devices(num_devices)
  return Mesh(np.asarray(devices, dtype=object), (axis_name,),
              axis_types=(jax.sharding.AxisType.Auto,))


def _axis(mesh: Mesh, axis_name: str | None) -> str:
  """The mesh's (single) data axis, validating `axis_name` if given."""
  if axis_name is None:
    if len(mesh.axis_names) != 1:
      raise ValueError(
          f"mesh has axes {mesh.axis_names}; pass the data axis name explicitly.")
    return mesh.axis_names[0]
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis {axis_name!r} is not in the mesh axes {mesh.axis_names}.")
  return axis_name


def data_sharding(mesh: Mesh, axis_name: str | None = None) -> NamedSharding:
  """Leading (batch) dimension split over the data axis: `NamedSharding(mesh, P("data"))`."""
  return NamedSharding(mesh, P(_axis(mesh, axis_name)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device: `NamedSharding(mesh, P())`."""
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------------------
# Batches.
# ----------------------------------------------------------------------------------------


def shard_batch(batch: Mapping[str, Any], mesh: Mesh,
                axis_name: str | None = None) -> dict[str, jax.Array]:
  """Assembles host-local batches into global arrays sharded over the data axis.

  Every process passes its own rows; the global batch is their concatenation in
  process order (`jax.make_array_from_process_local_data`).

  Args:
    batch: dict of host-local arrays, each `[n_local, ...]` with the same `n_local`.
    mesh: the data mesh (`make_mesh`).
    axis_name: the data axis (default: the mesh's only axis).

  Returns:
    dict of global `jax.Array`s `[n_local * process_count, ...]`, rows split over the
    devices of the mesh (`data_sharding(mesh)`).

  Raises:
    ValueError: leaves of different lengths, or a global batch not divisible by the
      number of devices.
  """
  sharding = data_sharding(mesh, axis_name)
  num_devices = mesh.devices.size
  local_devices = sum(d.process_index == jax.process_index()
                      for d in mesh.devices.flat)
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
  if any(s is None for s in sizes.values()):
    raise ValueError(f"every batch entry needs a leading batch dimension; got {sizes}.")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"batch entries have different leading sizes: {sizes}.")
  out = {}
  for key, local in batch.items():
    local = np.asarray(local)
    n_local = local.shape[0]
    n_global = n_local * num_devices // max(local_devices, 1)
    if local_devices == 0 or n_local % local_devices:
      raise ValueError(
          f"batch[{key!r}]: the global batch of {n_global} rows ({n_local} on this "
          f"process) is not divisible by the {num_devices} devices of the mesh "
          f"({local_devices} on this process).")
    out[key] = jax.make_array_from_process_local_data(
        sharding, local, (n_global,) + local.shape[1:])
  return out


# ----------------------------------------------------------------------------------------
# Loss wrappers.
# ----------------------------------------------------------------------------------------


def sharded_loss(loss_fn: Callable[..., tuple[jax.Array, dict]], mesh: Mesh, *,
                 axis_name: str = "data", **loss_kwargs) -> Callable:
  """Runs a loss kernel data-parallel under `jax.shard_map`.

  Each device passes its local rows `P(axis_name)` to `loss_fn(z, labels,
  axis_name=axis_name, **loss_kwargs)`; the kernel returns the global loss (identical on
  all devices), which comes out replicated (`P()`). Value and gradient equal those of
  `loss_fn(z, labels, **loss_kwargs)` on the whole batch on one device.

  Args:
    loss_fn: a kernel with the `pj.losses` signature, e.g. `pj.losses.supcon`.
    mesh: the data mesh.
    axis_name: mesh axis that splits the batch rows.
    **loss_kwargs: keyword hyper-parameters for `loss_fn` (`temperature`, `impl`, ...).

  Returns:
    `f(z, labels) -> (loss, aux)` with `z: [N, d]`, `labels: [N]` (global arrays, N
    divisible by the mesh size); `loss` a scalar and `aux` a dict of scalars.
    Differentiable and jittable; it does not jit itself.

  Example::

    f = sharded_loss(pj.losses.projnce, mesh, temperature=0.1, beta=1.0)
    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(z, labels)
  """
  axis_name = _axis(mesh, axis_name)
  if "axis_name" in loss_kwargs:
    raise ValueError("pass axis_name as sharded_loss's own argument, not a loss kwarg.")

  def local(z, labels):
    return loss_fn(z, labels, axis_name=axis_name, **loss_kwargs)

  mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(axis_name), P(axis_name)),
                         out_specs=P(), check_vma=True)

  def wrapped(z, labels):
    n = z.shape[0]
    if n % mesh.devices.size:
      raise ValueError(
          f"batch of {n} rows is not divisible by the {mesh.devices.size} devices "
          f"of the mesh axis {axis_name!r}.")
    return mapped(z, labels)

  return wrapped


def _scale_grad(x: jax.Array, scale) -> jax.Array:
  """`x` in the forward pass; its cotangent is multiplied by `scale` in the backward pass."""
  x_stop = jax.lax.stop_gradient(x)
  return x_stop + scale * (x - x_stop)


def _psum_transpose_factor(axis_name: str) -> jax.Array:
  """How much one replicated output's cotangent is amplified through `psum` here.

  Classic `pmap` transposes `psum` into `psum`: differentiating a replicated value
  inside pmap seeds every device with 1 and the seeds add up, giving D times the
  gradient of the one global value. With varying-axis tracking (shard_map with
  `check_vma=True`) the transpose is a `pvary` and the factor is 1. Measured rather than
  assumed, so the adapter stays right if pmap's semantics change.
  """
  probe = jax.lax.axis_index(axis_name).astype(jnp.float32) * 0.0
  return jax.grad(lambda x: jax.lax.psum(x, axis_name))(probe)


def pmap_loss(loss_fn: Callable[..., tuple[jax.Array, dict]],
              axis_name: str = "data", *, devices: Sequence[jax.Device] | None = None,
              **loss_kwargs) -> Callable:
  """Runs the same loss kernel under legacy `jax.pmap`; inputs carry a device axis.

  Gradients. The kernels return the global loss `psum(local sums) / N`, identical on
  every device. Differentiated inside pmap (the pmap idiom, `jax.pmap(jax.grad(f))`),
  every device seeds its copy with cotangent 1 and pmap transposes `psum` into `psum`, so
  the raw kernel's gradient is D times that of the global loss. The adapter divides the
  cotangent by that factor (measured by `_psum_transpose_factor`, 1 where psum's
  transpose does not sum) on the loss and aux values: the forward values are unchanged
  bit for bit, and the per-device gradient w.r.t. the local rows equals
  `sharded_loss`'s. Gradients w.r.t. per-device parameter copies are then each device's
  contribution to the full gradient: combine them with `psum`, not `pmean` (under
  shard_map with replicated parameters this sum is automatic, see `sharded_step`).
  Differentiate inside pmap (`f.per_device`), not through the pmapped function from
  outside: from outside the D replicas are separate outputs and their cotangents add.

  Args:
    loss_fn: a kernel with the `pj.losses` signature.
    axis_name: the pmap axis name.
    devices: optional devices for `jax.pmap` (default: all local devices, which must
      match the leading axis of the inputs).
    **loss_kwargs: keyword hyper-parameters for `loss_fn`.

  Returns:
    `f(z, labels) -> (loss, aux)` with `z: [D, n, d]`, `labels: [D, n]`; `loss: [D]`
    and every aux value `[D]` (D identical copies). `f.per_device(z, labels)` is the
    corrected per-device function (`z: [n, d]`) for use inside your own pmapped step.

  Example::

    f = pmap_loss(pj.losses.supcon, "data", temperature=0.1)
    grad = jax.pmap(jax.grad(lambda z, y: f.per_device(z, y)[0]), axis_name="data")
    g = grad(z.reshape(D, n, d), y.reshape(D, n))          # == sharded_loss gradient
  """
  if "axis_name" in loss_kwargs:
    raise ValueError("pass axis_name as pmap_loss's own argument, not a loss kwarg.")

  def per_device(z, labels):
    loss, aux = loss_fn(z, labels, axis_name=axis_name, **loss_kwargs)
    scale = 1.0 / _psum_transpose_factor(axis_name)
    loss = _scale_grad(loss, scale.astype(loss.dtype))
    aux = jax.tree.map(
        lambda a: _scale_grad(a, scale.astype(a.dtype))
        if jnp.issubdtype(a.dtype, jnp.floating) else a, aux)
    return loss, aux

  mapped = jax.pmap(per_device, axis_name=axis_name, devices=devices)

  def wrapped(z, labels):
    if z.ndim < 2 or labels.ndim < 1 or z.shape[0] != labels.shape[0]:
      raise ValueError(
          f"pmap_loss expects z: [D, n, d] and labels: [D, n]; got z {z.shape}, "
          f"labels {labels.shape}.")
    return mapped(z, labels)

  wrapped.per_device = per_device
  return wrapped


# ----------------------------------------------------------------------------------------
# Train step.
# ----------------------------------------------------------------------------------------


def _specs(tree_or_prefix: Any) -> Any:
  """PartitionSpecs from a pytree (prefix) of PartitionSpecs or NamedShardings."""
  return jax.tree.map(lambda s: s.spec if isinstance(s, NamedSharding) else s,
                      tree_or_prefix,
                      is_leaf=lambda s: isinstance(s, (NamedSharding, P)))


def _named(mesh: Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


def sharded_step(step_fn: StepFn, mesh: Mesh, *, state_sharding: Any = None,
                 batch_axis: str = "data", donate_state: bool = True) -> Callable:
  """A jitted data-parallel train step: batch rows split, state and metrics replicated.

  `step_fn(state, batch, rng) -> (state, metrics)` runs under `jax.shard_map` on each
  device with its local batch rows and the replicated state. The returned state and
  metrics must be identical on all devices; `check_vma=True` turns a forgotten
  reduction into a trace-time error instead of a silent divergence across devices.

  Gradients (varying-axis semantics of `check_vma=True`). The state is replicated
  (device-invariant). Using it with device-varying data inserts an implicit `pvary`,
  whose transpose is a `psum`: the gradient w.r.t. replicated parameters comes out
  already *summed* over devices, and invariant. Hence:

  - differentiate the *global* loss: `jax.lax.pmean` of the local mean, or a
    `pj.losses` kernel called with `axis_name=batch_axis` (it returns the global loss).
    The gradient is then the full-batch gradient; do not reduce it again (`pmean` of an
    invariant value is the identity, so a leftover `pmean` is harmless, a `psum`
    multiplies by D);
  - differentiating the local mean and then `pmean`-ing the gradients (the pmap idiom)
    gives D times the full-batch gradient.

  `rng` is the same on every device: fold in `jax.lax.axis_index(batch_axis)` for
  per-device randomness (dropout, augmentation).

  Args:
    step_fn: the per-device step.
    mesh: the data mesh.
    state_sharding: PartitionSpec or NamedSharding (or a pytree prefix of them) for the
      state; default replicated `P()`.
    batch_axis: mesh axis that splits the leading dimension of every batch leaf.
    donate_state: donate the input state buffers (the caller must not reuse them).

  Returns:
    `step(state, batch, rng) -> (state, metrics)`: checks that every batch leaf is
    `[N, ...]` with N divisible by the mesh size (global arrays from `shard_batch`, or
    host arrays on a single process) and calls the `jax.jit` function (NamedShardings
    on inputs and outputs, donated state), also available as `step.jitted`.

  Raises:
    ValueError: (when called) a batch leaf without a leading dimension divisible by
      the number of devices.

  Example::

    def step_fn(state, batch, rng):
      def loss_fn(params):
        z = state.apply_fn({"params": params}, batch["image"])        # [n, d] local
        return pj.losses.supcon(z, batch["label"], axis_name="data")  # global loss
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return state.apply_gradients(grads=grads), {"loss": loss, **aux}
    step = sharded_step(step_fn, mesh)
    state, metrics = step(state, shard_batch(batch, mesh), rng)
  """
  batch_axis = _axis(mesh, batch_axis)
  state_specs = P() if state_sharding is None else _specs(state_sharding)
  batch_spec = P(batch_axis)
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=(state_specs, batch_spec, P()),
                         out_specs=(state_specs, P()), check_vma=True)
  jitted = jax.jit(
      mapped,
      in_shardings=(_named(mesh, state_specs), NamedSharding(mesh, batch_spec),
                    replicated_sharding(mesh)),
      out_shardings=(_named(mesh, state_specs), replicated_sharding(mesh)),
      donate_argnums=(0,) if donate_state else ())
  num_devices = mesh.shape[batch_axis]

  def step(state, batch, rng):
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
      shape = np.shape(leaf)
      if not shape or shape[0] % num_devices:
        raise ValueError(
            f"batch leaf {jax.tree_util.keystr(path) or 'batch'} has shape {shape}: its "
            f"leading (batch) dimension must be divisible by the {num_devices} devices "
            f"of mesh axis {batch_axis!r}.")
    return jitted(state, batch, rng)

  step.jitted = jitted          # for .lower(...) / AOT compilation
  return step

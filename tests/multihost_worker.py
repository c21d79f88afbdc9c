"""One process of the two-process data-parallel test (tests/test_parallel.py).

Run as::

  python tests/multihost_worker.py --port P --process_id I --num_processes 2 \
      --local_devices 4 --out results.npz

Each process joins the run through `parallel.initialize_distributed` (gloo collectives
on CPU), builds the 8-device global mesh, provides its half of a fixed seeded global
batch through `parallel.shard_batch`, and computes loss and gradient (float64) of every
kernel in `kernels()` under `parallel.sharded_loss`. Process 0 writes them to `--out`.

Importing this module has no side effects (jax is imported lazily), so the test can
reuse `make_batch` and `kernels` for its single-process reference.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

GLOBAL_BATCH = 64
DIM = 16
NUM_CLASSES = 5
SEED = 1234


def make_batch(seed: int = SEED):
  """The fixed global batch: z: [64, 16] float64, labels: [64] int32."""
  rng = np.random.RandomState(seed)
  z = rng.randn(GLOBAL_BATCH, DIM)
  labels = rng.randint(0, NUM_CLASSES, size=GLOBAL_BATCH).astype(np.int32)
  return z, labels


def psum_supcon(z, labels, *, temperature=0.1, axis_name=None):
  """A minimal SupCon (L_out) built from all_gather and psum: local anchors, global keys.

  Args:
    z: [n, d] local rows (normalised here).
    labels: [n] int labels.
    temperature: tau.
    axis_name: data axis inside shard_map, or None on one device.

  Returns:
    (loss, aux): the global mean over anchors with a positive, and {"num_anchors"}.
  """
  import jax
  import jax.numpy as jnp

  def gather(x):
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)

  def psum(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  keys, key_labels = gather(z), gather(labels)
  n = z.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  rows = offset + jnp.arange(n)
  not_self = rows[:, None] != jnp.arange(keys.shape[0])[None, :]       # [n, N]
  pos = (labels[:, None] == key_labels[None, :]) & not_self            # [n, N]
  s = z @ keys.T / temperature                                         # [n, N]
  lse = jax.nn.logsumexp(jnp.where(not_self, s, -jnp.inf), axis=1)     # [n]
  num_pos = pos.sum(1)
  mean_pos = jnp.where(pos, s, 0.0).sum(1) / jnp.maximum(num_pos, 1)
  has_pos = num_pos > 0
  per_anchor = jnp.where(has_pos, lse - mean_pos, 0.0)
  count = psum(has_pos.sum().astype(z.dtype))
  loss = psum(per_anchor.sum()) / jnp.maximum(count, 1.0)
  return loss, {"num_anchors": count}


def kernels():
  """name -> (loss_fn, kwargs) for every kernel the test checks across processes.

  The library kernels when they import (dense gathers and ring ppermutes crossing the
  process boundary), else the minimal `psum_supcon`.
  """
  try:
    from projnce_jax import losses  # pylint: disable=g-import-not-at-top
  except ImportError:
    losses = None
  if losses is None or not hasattr(losses, "supcon"):
    return {"psum_supcon": (psum_supcon, {"temperature": 0.1})}
  return {
      "supcon_dense": (losses.supcon, {"temperature": 0.1, "impl": "dense"}),
      "projnce_ring": (losses.projnce, {"temperature": 0.1, "impl": "ring",
                                        "block_size": 4}),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--local_devices", type=int, default=4)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)

  os.environ["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={args.local_devices}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  from projnce_jax import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(
      coordinator_address=f"localhost:{args.port}", num_processes=args.num_processes,
      process_id=args.process_id, cpu_collectives="gloo")
  assert jax.process_count() == args.num_processes, jax.process_count()
  mesh = parallel.make_mesh()
  assert mesh.devices.size == args.num_processes * args.local_devices, mesh

  z, labels = make_batch()
  n_local = GLOBAL_BATCH // args.num_processes
  part = slice(args.process_id * n_local, (args.process_id + 1) * n_local)
  batch = parallel.shard_batch({"z": z[part], "labels": labels[part]}, mesh)

  results = {}
  for name, (fn, kwargs) in kernels().items():
    loss_fn = parallel.sharded_loss(fn, mesh, axis_name="data", **kwargs)
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda x, y: loss_fn(x, y)[0]),
        out_shardings=parallel.replicated_sharding(mesh))
    loss, grad = value_and_grad(batch["z"], batch["labels"])
    results[f"{name}/loss"] = np.asarray(loss)
    results[f"{name}/grad"] = np.asarray(grad)
  results["process_count"] = np.asarray(jax.process_count())
  results["device_count"] = np.asarray(jax.device_count())
  if args.process_id == 0:
    np.savez(args.out, **results)
  jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""One prepared accelerator check: the loss at scale in bfloat16 and the ResNet-18 step.

Writes one JSON (`--out`) with, on the first device of the default backend:

- `matmul`: the measured bfloat16 matmul rate (an [N, d] x [d, N] product, fwd + two
  backward-sized products, as the loss needs), FLOP/s.
- `loss`: for each N and path (`dense` = supcon impl='dense', `blockwise` = supcon
  impl='blockwise', `classpath` = projnce centroid/centroid with num_classes, `infonce`
  blockwise), bfloat16 forward + backward time, its fraction of the three-matmul work at
  the measured rate, and the device's peak memory after the call (when the backend
  reports `memory_stats`), or the error (e.g. out of memory) instead.
- `train_step`: ResNet-18 train step on 32x32 synthetic images, images/s for ProjNCE
  and cross-entropy.

Every item is measured independently: a failure is recorded in the JSON and the check
goes on. `--small` shrinks everything so it runs on a CPU in under a minute.

  bash benchmarks/accelerator_check.sh --out /tmp/accel.json          # GPU/TPU, < 8 min
  bash benchmarks/accelerator_check.sh --small --out /tmp/accel.json  # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from loss_bench import median_time  # noqa: E402  (the same median-of-repeats timer)


def _peak_bytes(device):
  stats = getattr(device, "memory_stats", lambda: None)()
  return None if not stats else stats.get("peak_bytes_in_use")


def matmul_rate(n, d, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  z = jax.random.normal(jax.random.key(0), (n, d), jnp.bfloat16)

  @jax.jit
  def f(z):
    s = jax.lax.dot_general(z, z, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32).astype(jnp.bfloat16)
    return s @ z + s.T @ z  # [N, N] x [N, d], twice

  t = median_time(lambda: jax.block_until_ready(f(z)), repeats)
  return {"n": n, "d": d, "time_s": t, "flops": 3 * 2 * n * n * d / t}


def loss_case(path, n, d, num_classes, repeats, rate):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top
  key_z, key_y = jax.random.split(jax.random.key(1))
  z = jax.random.normal(key_z, (n, d), jnp.bfloat16)
  y = jax.random.randint(key_y, (n,), 0, num_classes)
  if path == "dense":
    loss = lambda z: pj.losses.supcon(z, y)[0]
  elif path == "blockwise":
    loss = lambda z: pj.losses.supcon(z, y, impl="blockwise")[0]
  elif path == "classpath":
    loss = lambda z: pj.losses.projnce(z, y, positive="centroid", negative="centroid",
                                       num_classes=num_classes)[0]
  elif path == "infonce":
    loss = lambda z: pj.losses.infonce(z.reshape(n // 2, 2, d), impl="blockwise")[0]
  else:
    raise ValueError(path)
  f = jax.jit(jax.value_and_grad(loss))
  out = {"path": path, "n": n}
  try:
    t = median_time(lambda: jax.block_until_ready(f(z)), repeats)
    out["time_s"] = t
    if path != "classpath" and rate:
      out["fraction_of_matmul_rate"] = 3 * 2 * n * n * d / t / rate
    out["peak_device_bytes"] = _peak_bytes(jax.devices()[0])
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  return out


def train_steps(batch_size, repeats, steps, model):
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import train_bench  # pylint: disable=g-import-not-at-top
  args = types.SimpleNamespace(model=model, num_classes=10, dtype="bfloat16",
                               image_size=32, channels=3, batch_size=batch_size, warmup=1,
                               repeats=repeats, steps=steps)
  out = {"model": model, "batch_size": batch_size, "image_size": 32}
  try:
    times = train_bench.time_methods(["projnce", "cross_entropy"], args)
    for key, ts in times.items():
      out[f"{key}_images_per_s"] = batch_size / statistics.median(ts)
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  del jax
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="CPU smoke run (< 1 min)")
  parser.add_argument("--out", default="accelerator_check.json")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="stop starting new loss cases after this many seconds")
  args = parser.parse_args(argv)
  t_start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  if args.small:
    sizes, d, repeats, batch, steps, model = [256, 512], 32, 1, 8, 1, "small_cnn"
  else:
    sizes, d, repeats, batch, steps, model = [16384, 65536, 262144], 128, 3, 512, 5, "resnet18"
  report = {"device": str(dev), "platform": dev.platform,
            "device_kind": getattr(dev, "device_kind", ""), "jax": jax.__version__,
            "host": platform.node(), "small": args.small, "dtype": "bfloat16", "d": d,
            "loss": [], "errors": []}

  def write():
    report["elapsed_s"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)

  try:
    report["matmul"] = matmul_rate(min(sizes[0], 8192), d, repeats)
  except Exception:  # pylint: disable=broad-except
    report["errors"].append(traceback.format_exc(limit=2))
  rate = report.get("matmul", {}).get("flops")
  write()
  for n in sizes:
    for path in ("dense", "blockwise", "classpath", "infonce"):
      if time.perf_counter() - t_start > args.budget_s:
        report["loss"].append({"path": path, "n": n, "skipped": "time budget"})
        continue
      if path == "dense" and n > 65536:
        report["loss"].append({"path": path, "n": n, "skipped": "n x N block > 64 GiB"})
        continue
      report["loss"].append(loss_case(path, n, d, 100, repeats, rate))
      print(json.dumps(report["loss"][-1]), flush=True)
      write()
  report["train_step"] = train_steps(batch, repeats, steps, model)
  print(json.dumps(report["train_step"]), flush=True)
  write()
  return 0


if __name__ == "__main__":
  sys.exit(main())

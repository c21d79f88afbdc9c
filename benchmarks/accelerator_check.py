"""One-shot accelerator check: the all-pairs loss at scale on one GPU/TPU, in one budget.

Runs on the GPU host as it is: its own `python3` with this repository on PYTHONPATH,
importing nothing beyond jax, flax, optax, orbax-checkpoint, chex and numpy (no
ml_collections, tensorflow_datasets, grain, dm_pix or librosa; nothing to install). It
fails within seconds unless the default backend is a GPU or TPU (`--small` excepted).

Measured, in this order, each written to the JSON as soon as it finishes:

1. `gemm`: the chip's bfloat16 GEMM rate, an [8192, 8192] x [8192, 8192] product (f32
   accumulation), median of 10 after warm-up.
2. `loss`: `supcon(z, y, num_classes=100)` forward + backward, bfloat16, d = 128, at
   N = 16,384, 65,536 and 262,144 for `impl="fused"` (the Pallas kernel) and the XLA path
   (`impl="dense"`, which on one device is the streamed symmetric kernel: `blockwise` is the
   same program there), and the materialised [N, N] all-pairs term (`dense_nxn`, autodiff of
   the plain block; only where its planned memory fits the device): median of >= 5 runs
   after warm-up, fraction of the GEMM rate (counting 3 x 2 N^2 d flops), planned memory of
   that program alone (`compiled.memory_analysis()`) and the process's device peak after it.
3. `block_sweep`: the fused kernel (forward + backward of the all-pairs term alone) at
   N = 65,536 for 4 tile settings of this backend, so the first run also tunes.
4. `train_step`: ResNet-18 on 32x32 synthetic images (no data stack), batch 512,
   ProjNCE (centroid, sample) vs cross-entropy, images/s.

One budget (`--budget-s`, 420 s by default) covers everything, compiles included; what did
not fit is recorded as skipped. A case that fails (a kernel that does not build on this
JAX, out of memory) records its error and the check goes on. The JSON goes to
`$OUT/accelerator_check.json` when OUT is set, else to `--out`; a one-screen summary ends
the run.

  bash benchmarks/accelerator_check.sh                 # on the GPU/TPU host (< 8 min)
  bash benchmarks/accelerator_check.sh --small --out /tmp/a.json   # CPU smoke run (< 60 s)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

ACCELERATORS = ("gpu", "tpu")
FULL = dict(sizes=(16384, 65536, 262144), d=128, repeats=5, gemm_n=8192, sweep_n=65536,
            batch=512, model="resnet18", image=32, channels=3, num_classes=100)
SMALL = dict(sizes=(256, 512), d=32, repeats=2, gemm_n=256, sweep_n=256, batch=16,
             model="small_cnn", image=28, channels=1, num_classes=10)
# Tile settings swept once on each backend (the first is the default, fused.BLOCKS).
SWEEP = {
    "gpu": [dict(block_r=128, block_c=64, num_warps=8, num_stages=2),
            dict(block_r=64, block_c=64, num_warps=4, num_stages=2),
            dict(block_r=128, block_c=128, num_warps=8, num_stages=2),
            dict(block_r=64, block_c=128, num_warps=4, num_stages=3)],
    "tpu": [dict(block_r=256, block_c=512), dict(block_r=128, block_c=256),
            dict(block_r=512, block_c=512), dict(block_r=256, block_c=1024)],
    "cpu": [dict(block_r=128, block_c=128), dict(block_r=64, block_c=128)],
}


class Budget:
  """Wall-clock budget from process start; `left()` in seconds."""

  def __init__(self, seconds):
    self.start, self.seconds = time.perf_counter(), seconds

  def elapsed(self):
    return time.perf_counter() - self.start

  def left(self):
    return self.seconds - self.elapsed()


def _error(e: BaseException) -> str:
  lines = [l for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {(lines[0] if lines else '')[:400]}"


def _versions():
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__,
         "jaxlib": jaxlib.__version__}
  for name in ("flax", "optax", "chex", "numpy", "triton"):
    try:
      out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  try:
    import subprocess  # pylint: disable=g-import-not-at-top
    out["git_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
  except Exception:  # pylint: disable=broad-except
    out["git_commit"] = None
  return out


def _timed(fn, args, repeats, budget):
  """(compile seconds, median run seconds, runs): compile, one warm-up, then `repeats` runs,
  stopping early (at >= 1 run) when the budget runs out."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
    if budget.left() < 0:
      break
  return compiled, compile_s, statistics.median(times), len(times)


def _planned_bytes(compiled):
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def _device_peak(device):
  stats = getattr(device, "memory_stats", lambda: None)()
  return None if not stats else stats.get("peak_bytes_in_use")


def _device_limit(device):
  stats = getattr(device, "memory_stats", lambda: None)()
  return None if not stats else stats.get("bytes_limit")


def gemm_rate(n, repeats, budget):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32)
              .astype(jnp.bfloat16))
  _, compile_s, t, runs = _timed(f, (a, b), repeats, budget)
  return {"n": n, "dtype": "bfloat16", "time_s": t, "runs": runs, "compile_s": compile_s,
          "flops_per_s": 2 * n ** 3 / t}


def _batch(n, d, num_classes):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  kz, ky = jax.random.split(jax.random.key(1))
  return (jax.random.normal(kz, (n, d), jnp.bfloat16),
          jax.random.randint(ky, (n,), 0, num_classes))


def _loss_fn(path, num_classes):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top
  from projnce_jax.losses import sample as sample_lib  # pylint: disable=g-import-not-at-top
  if path in ("fused", "xla"):
    impl = "fused" if path == "fused" else "dense"
    return lambda z, y: pj.losses.supcon(z, y, num_classes=num_classes, impl=impl)[0]
  if path == "dense_nxn":
    def allpairs(z, y):  # the all-pairs term as a plain [N, N] block, autodiff backward
      del y
      zn = pj.losses.normalize(z.astype(jnp.float32)).astype(z.dtype)
      ids = jnp.arange(z.shape[0])
      lse = sample_lib.dense_lse((zn * 10).astype(z.dtype), zn, ids, ids,
                                 jnp.ones(z.shape[0], bool))
      return jnp.mean(lse)
    return allpairs
  raise ValueError(path)


def loss_case(path, n, cfg, gemm, budget, device):
  import jax  # pylint: disable=g-import-not-at-top
  out = {"path": path, "n": n, "d": cfg["d"], "dtype": "bfloat16"}
  if budget.left() < 0:
    out["skipped"] = "time budget"
    return out
  try:
    z, y = _batch(n, cfg["d"], cfg["num_classes"])
    f = jax.jit(jax.value_and_grad(_loss_fn(path, cfg["num_classes"])))
    if path == "dense_nxn":
      limit = _device_limit(device)
      planned = _planned_bytes(f.lower(z, y).compile()) if limit else None
      if limit and planned and planned > 0.9 * limit:
        out.update(skipped=f"needs {planned / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB",
                   planned_bytes=planned)
        return out
    compiled, compile_s, t, runs = _timed(f, (z, y), cfg["repeats"], budget)
    out.update(time_s=t, runs=runs, compile_s=compile_s,
               planned_bytes=_planned_bytes(compiled),
               process_peak_bytes=_device_peak(device))
    useful = 3 * 2 * n * n * cfg["d"]
    out["useful_flops_per_s"] = useful / t
    if gemm:
      out["fraction_of_gemm"] = useful / t / gemm["flops_per_s"]
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = _error(e)
  return out


def sweep_case(blocks, backend, n, cfg, gemm, budget):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from projnce_jax.losses import fused  # pylint: disable=g-import-not-at-top
  out = {"n": n, "blocks": blocks}
  if budget.left() < 0:
    out["skipped"] = "time budget"
    return out
  try:
    z, _ = _batch(n, cfg["d"], 2)
    ids = jnp.arange(n, dtype=jnp.int32)
    frozen = fused.freeze_blocks({backend: blocks})
    f = jax.jit(jax.value_and_grad(lambda x: jnp.mean(fused.self_lse(x, ids, ids, frozen))))
    _, compile_s, t, runs = _timed(f, (z,), cfg["repeats"], budget)
    out.update(time_s=t, runs=runs, compile_s=compile_s)
    if gemm:
      out["fraction_of_gemm"] = 3 * 2 * n * n * cfg["d"] / t / gemm["flops_per_s"]
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = _error(e)
  return out


def train_step_case(method, cfg, budget):
  """Images/s of one jitted SGD step (encoder + head + loss + update), synthetic data."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top
  from projnce_jax.models import create_model  # pylint: disable=g-import-not-at-top
  out = {"method": method, "model": cfg["model"], "batch_size": cfg["batch"],
         "image_size": cfg["image"]}
  if budget.left() < 0:
    out["skipped"] = "time budget"
    return out
  try:
    ce = method == "cross_entropy"
    model = create_model(cfg["model"], num_classes=10 if ce else 0, proj_dim=0 if ce else 128,
                         dtype="bfloat16")
    shape = (cfg["batch"], cfg["image"], cfg["image"], cfg["channels"])
    kx, ky = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, shape, jnp.float32)
    y = jax.random.randint(ky, (cfg["batch"],), 0, 10)
    variables = model.init(jax.random.key(0), x[:2], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.sgd(0.1, momentum=0.9)
    opt = tx.init(params)

    def loss_fn(params, stats, x, y):
      out, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                             mutable=["batch_stats"])
      if ce:
        loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()
      else:
        loss = pj.losses.projnce(out["z"], y, temperature=0.1, num_classes=10)[0]
      return loss, upd["batch_stats"]

    def step(params, stats, opt, x, y):
      (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y)
      updates, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, updates), stats, opt, loss

    f = jax.jit(step)
    _, compile_s, t, runs = _timed(f, (params, stats, opt, x, y), cfg["repeats"], budget)
    out.update(time_s=t, runs=runs, compile_s=compile_s, images_per_s=cfg["batch"] / t)
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = _error(e)
  return out


def _si(x, unit):
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
    if x >= scale:
      return f"{x / scale:.1f} {prefix}{unit}"
  return f"{x:.0f} {unit}"


def _mib(b):
  return "-" if not b else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def summary(report) -> str:
  lines = [f"accelerator check: {report['device_kind']} ({report['platform']}), "
           f"jax {report['versions']['jax']}, {report['elapsed_s']:.0f} s"]
  if "gemm" in report:
    lines.append(f"  bf16 GEMM {report['gemm']['n']}^3: "
                 f"{_si(report['gemm']['flops_per_s'], 'FLOP/s')}")
  lines.append(f"  {'path':<10} {'N':>8} {'time ms':>10} {'of GEMM':>8} {'planned':>10}")
  for c in report["loss"]:
    if "time_s" in c:
      frac = f"{c.get('fraction_of_gemm', 0):.2f}"
      mem = _mib(c.get("planned_bytes"))
      lines.append(f"  {c['path']:<10} {c['n']:>8} {c['time_s'] * 1e3:>10.2f} {frac:>8} "
                   f"{mem:>10}")
    else:
      lines.append(f"  {c['path']:<10} {c['n']:>8} {c.get('skipped') or c.get('error')}")
  for c in report["block_sweep"]:
    what = (f"{c['time_s'] * 1e3:.2f} ms" if "time_s" in c
            else c.get("skipped") or c.get("error"))
    lines.append(f"  sweep N={c['n']} {c['blocks']}: {what}")
  for c in report["train_step"]:
    what = (f"{c['images_per_s']:.0f} images/s" if "images_per_s" in c
            else c.get("skipped") or c.get("error"))
    lines.append(f"  {c['model']} {c['method']}: {what}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="CPU smoke run with small sizes (< 60 s); any backend")
  parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                    "accelerator_check.json"),
                      help="JSON path when $OUT is not set")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="one wall-clock budget for everything, compiles included")
  args = parser.parse_args(argv)
  budget = Budget(args.budget_s)
  out_path = (os.path.join(os.environ["OUT"], "accelerator_check.json")
              if os.environ.get("OUT") else args.out)
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  device = jax.devices()[0]
  report = {"platform": backend, "device": str(device),
            "device_kind": getattr(device, "device_kind", ""), "host": platform.node(),
            "small": args.small, "budget_s": args.budget_s, "versions": _versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loss": [], "block_sweep": [],
            "train_step": [], "errors": []}

  def write():
    report["elapsed_s"] = budget.elapsed()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
      json.dump(report, f, indent=2)

  if backend not in ACCELERATORS and not args.small:
    report["errors"].append(f"default backend is {backend!r}, not a GPU or TPU; nothing timed "
                            "(--small runs the smoke sizes on any backend)")
    write()
    print(report["errors"][-1], file=sys.stderr)
    return 2
  cfg = SMALL if args.small else FULL
  try:
    report["gemm"] = gemm_rate(cfg["gemm_n"], 10 if not args.small else 2, budget)
  except Exception:  # pylint: disable=broad-except
    report["errors"].append(traceback.format_exc(limit=3))
  gemm = report.get("gemm")
  write()
  for n in cfg["sizes"]:
    for path in ("fused", "xla", "dense_nxn"):
      report["loss"].append(loss_case(path, n, cfg, gemm, budget, device))
      print(json.dumps(report["loss"][-1]), flush=True)
      write()
  sweep_backend = backend if backend in SWEEP else "cpu"
  for blocks in SWEEP[sweep_backend]:
    report["block_sweep"].append(sweep_case(blocks, sweep_backend, cfg["sweep_n"], cfg, gemm,
                                            budget))
    print(json.dumps(report["block_sweep"][-1]), flush=True)
    write()
  for method in ("projnce", "cross_entropy"):
    report["train_step"].append(train_step_case(method, cfg, budget))
    print(json.dumps(report["train_step"][-1]), flush=True)
    write()
  write()
  print(summary(report))
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

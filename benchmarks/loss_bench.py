"""Loss benchmark: projnce_jax SupCon/ProjNCE against the matmul roofline and PyTorch.

One run measures, side by side on the same machine:

1. speed: SupCon and ProjNCE forward+backward (float32, d=128, M=100 classes) with the
   dense and blockwise kernels, the matmul roofline (the three N x N x d products the
   loss needs: forward scores and the two backward products, one jitted function), and
   the SupContrast `SupConLoss` formula in PyTorch (benchmarks/supcon_torch.py), eager
   and `torch.compile`d. Median of repeats after a warm-up call.
2. memory: peak RSS (VmHWM) of a fresh subprocess running one dense or blockwise SupCon
   forward+backward, with XLA's own buffer estimate; configurations that would not fit
   in memory are reported as skipped with the size they would need.
3. fastpath: the class-level path (positive=centroid, negative=centroid, O(N M d)) against
   the all-pairs SupCon (blockwise) at N = 65,536, M = 100.
4. ring: ring vs gathered-dense SupCon under shard_map on 8 CPU devices (a subprocess
   with --xla_force_host_platform_device_count=8): max abs difference of loss and
   gradient and the time ratio.

0. api: the calls users write, without `num_classes` (supcon, infonce, projnce with every
   projection), beside the `num_classes` path, a ten-line jnp SupCon and the roofline, and
   the PyTorch peers: the SupContrast formula eager and `torch.compile`d,
   pytorch-metric-learning `SupConLoss`, lightly `NTXentLoss` (benchmarks/torch_peers.py),
   in one process per thread count (pinned to 1 and 2 cores).

Results print as tables and go to benchmarks/RESULTS.md with the command and machine.
Peers: pip install -e .[bench] && pip install --no-deps lightly==1.6.0.
Check that everything runs (about 4 min on 2 cores, written to /tmp/loss_bench_quick.md):

  python benchmarks/loss_bench.py --quick

  python benchmarks/loss_bench.py                        # everything
  python benchmarks/loss_bench.py --sizes 1024,4096 --parts speed
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DIM = 128
NUM_CLASSES = 100
TEMPERATURE = 0.1
GIB = 1 << 30
PARTS = ("api", "speed", "memory", "fastpath", "ring")

# Targets the table reports against (measured, never assumed).
TARGET_ROOFLINE = 0.80        # dense fwd+bwd at N=4096 >= 80% of the matmul roofline
TARGET_VS_EAGER = 3.0         # dense >= 3x faster than PyTorch eager at N=4096
TARGET_VS_COMPILE = 1.2       # dense >= 1.2x faster than torch.compile at N=4096
TARGET_BLOCKWISE_RSS = 2.0    # GiB, blockwise fwd+bwd at N=65536
TARGET_BLOCKWISE_SLOWDOWN = 1.5  # blockwise / dense time at N=8192


# ----------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------


def machine_info() -> dict:
  """uname -m, CPU model, core count, memory, library versions, load at start."""
  model = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  info = {"arch": platform.machine(), "cpu": model, "cores": os.cpu_count(),
          "mem_total_gib": _meminfo("MemTotal") / GIB,
          "python": platform.python_version(),
          "load_avg_1m": os.getloadavg()[0]}
  import jax  # pylint: disable=g-import-not-at-top
  info["jax"] = jax.__version__
  import jaxlib  # pylint: disable=g-import-not-at-top
  info["jaxlib"] = jaxlib.__version__
  try:
    import torch  # pylint: disable=g-import-not-at-top
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    info["torch"] = "not installed"
  return info


def _meminfo(key: str) -> float:
  """A /proc/meminfo entry in bytes (0 if unavailable)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith(key + ":"):
          return float(line.split()[1]) * 1024
  except OSError:
    pass
  return 0.0


def median_time(fn, repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` in seconds over `repeats` calls after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def default_repeats(n: int) -> int:
  return 20 if n <= 1024 else 7 if n <= 4096 else 5 if n <= 8192 else 3


def make_data(n: int, seed: int = 0):
  """Benchmark batch: features [n/2, 2, d] (two views) and labels [n/2] in [0, M).

  Every class gets at least two rows (the PyTorch formula is NaN otherwise).
  """
  rng = np.random.RandomState(seed)
  feats = rng.randn(n // 2, 2, DIM).astype(np.float32)
  labels = rng.randint(0, NUM_CLASSES, size=n // 2).astype(np.int64)
  return feats, labels


def as_rows(feats, labels):
  """[b, V, d] views and [b] labels -> rows [V*b, d] (view-major, as SupContrast) and labels."""
  z = np.concatenate([feats[:, v] for v in range(feats.shape[1])], axis=0)
  return z, np.tile(labels, feats.shape[1]).astype(np.int32)


def fmt_ms(t) -> str:
  return "—" if t is None else f"{t * 1e3:,.1f}"


def fmt_ratio(x) -> str:
  return "—" if x is None else f"{x:.2f}x"


def table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# JAX pieces.
# ----------------------------------------------------------------------------------------


def jax_loss_grad(kind: str, impl: str, labels, block_size=None):
  """jit(value_and_grad) w.r.t. z [N, d] (rows view-major, as `as_rows`) of one loss call.

  Kinds (the `_nc` suffix passes `num_classes=NUM_CLASSES`; without it the call is the
  one users write, no `num_classes`):
    supcon, supcon_nc; infonce (the rows as [N/2, 2, d] examples x views);
    projnce, projnce_nc (centroid / sample, beta 1); projnce:<positive>[_nc] with
    negative 'sample' ('orthogonal' / 'mlp' always get num_classes); classpath
    (centroid / centroid, num_classes); naive (a ten-line jnp SupCon, dense).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top

  base, _, rest = kind.partition(":")
  nc = NUM_CLASSES if kind.endswith("_nc") else None
  base = base.removesuffix("_nc")
  common = dict(temperature=TEMPERATURE, impl=impl, block_size=block_size)
  if base == "supcon":
    def loss(z):
      return pj.losses.supcon(z, labels, num_classes=nc, **common)[0]
  elif base == "infonce":
    def loss(z):
      views = z.reshape(2, -1, z.shape[1]).transpose(1, 0, 2)  # [N/2, 2, d]
      return pj.losses.infonce(views, **common)[0]
  elif base == "projnce":
    positive = rest.removesuffix("_nc") or "centroid"
    extra = {}
    if positive in ("orthogonal", "mlp"):
      nc = NUM_CLASSES
    if positive == "mlp":
      extra["params"] = pj.losses.init_mlp_params(jax.random.key(0), num_classes=nc,
                                                  dim=DIM)
    def loss(z):
      return pj.losses.projnce(z, labels, positive=positive, beta=1.0, num_classes=nc,
                               **extra, **common)[0]
  elif base == "classpath":
    def loss(z):
      return pj.losses.projnce(z, labels, temperature=TEMPERATURE, positive="centroid",
                               negative="centroid", num_classes=NUM_CLASSES)[0]
  elif base == "naive":
    y = jnp.asarray(labels)

    def loss(z):
      z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
      s = z @ z.T / TEMPERATURE
      eye = jnp.eye(z.shape[0], dtype=bool)
      pos = (y[:, None] == y[None, :]) & ~eye
      log_prob = s - jax.nn.logsumexp(jnp.where(eye, -jnp.inf, s), axis=1, keepdims=True)
      return -jnp.mean(jnp.sum(jnp.where(pos, log_prob, 0.0), 1) / jnp.sum(pos, 1))
  else:
    raise ValueError(f"unknown kind {kind!r}")
  return jax.jit(jax.value_and_grad(loss))


def roofline_fn():
  """The three N x N x d matmuls of a fused fwd+bwd, as one jitted function.

  scores = z z^T (forward), then the backward products G z and G^T z with the
  [N, N] score-gradient G (here the scores themselves, to keep one input).
  """
  import jax  # pylint: disable=g-import-not-at-top

  def f(z):
    s = z @ z.T                                   # [N, N]   N*N*d
    return s @ z + s.T @ z                        # [N, d]   2 * N*N*d
  return jax.jit(f)


def impl_available(impl: str) -> tuple[bool, str]:
  """Whether projnce_jax.losses runs `impl` (tiny single-device call for blockwise)."""
  try:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import projnce_jax as pj  # pylint: disable=g-import-not-at-top
    if impl == "ring":
      return impl in getattr(pj.losses, "IMPLS", ()), ""
    pj.losses.supcon(jnp.ones((8, 4)), jnp.arange(8) % 2, impl=impl)
    return True, ""
  except Exception as e:  # pylint: disable=broad-except
    return False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


# ----------------------------------------------------------------------------------------
# Part 1: speed.
# ----------------------------------------------------------------------------------------


def bench_speed(sizes, repeats_override=None, torch_compile=True) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  notes = []
  blockwise_ok, why = impl_available("blockwise")
  if not blockwise_ok:
    notes.append(f"blockwise skipped: {why}")
  try:
    import torch  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, HERE)
    from supcon_torch import supcon_loss  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    torch = None
    notes.append(f"PyTorch skipped: {e} (pip install -e .[bench])")

  compiled_torch, compile_error = None, None
  if torch is not None and torch_compile:
    try:
      compiled_torch = torch.compile(supcon_loss)
    except Exception as e:  # pylint: disable=broad-except
      compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"

  rows = []
  for n in sizes:
    reps = repeats_override or default_repeats(n)
    feats, labels_np = make_data(n)
    z_np, rows_labels = as_rows(feats, labels_np)
    z = jnp.asarray(z_np)
    labels = rows_labels          # host constant, closed over by the jitted loss
    r = {"n": n, "repeats": reps}
    print(f"[speed] N={n} repeats={reps}", flush=True)

    contenders = {}               # name -> (callable, warm-up calls)
    f = roofline_fn()
    contenders["roofline"] = (lambda f=f: jax.block_until_ready(f(z)), 1)
    for kind in ("supcon", "projnce"):
      for impl in ("dense", "blockwise"):
        key = f"{kind}_{impl}"
        if impl == "blockwise" and not blockwise_ok:
          r[key] = None
          continue
        g = jax_loss_grad(kind, impl, labels)
        contenders[key] = (lambda g=g: jax.block_until_ready(g(z)), 1)
        if key == "supcon_dense":
          loss_j, grad_j = g(z)
          r["jax_loss"] = float(loss_j)

    if torch is not None:
      x = torch.tensor(feats, requires_grad=True)
      y = torch.tensor(labels_np)

      def torch_step(fn):
        def step():
          x.grad = None
          loss = fn(x, y, TEMPERATURE)
          loss.backward()
          return loss
        return step

      loss_t = supcon_loss(x, y, TEMPERATURE)
      loss_t.backward()
      r["torch_loss"] = float(loss_t.detach())
      grad_t = torch.cat(torch.unbind(x.grad, dim=1), dim=0).numpy()     # view-major rows
      r["grad_diff"] = float(np.max(np.abs(np.asarray(grad_j) - grad_t)))
      r["grad_scale"] = float(np.max(np.abs(grad_t)))
      need = 12 * n * n * 4  # ~a dozen [N, N] float32 temporaries in the eager formula
      if need > 0.7 * _meminfo("MemAvailable"):
        r["torch_eager"] = None
        notes.append(f"torch eager at N={n} skipped: would need ~{need / GIB:.0f} GiB")
      else:
        contenders["torch_eager"] = (torch_step(supcon_loss), 1)
      r["torch_compile"] = None
      if compiled_torch is not None and compile_error is None:
        step = torch_step(compiled_torch)
        try:
          step()                  # compiles forward and backward for this shape
          contenders["torch_compile"] = (step, 1)
        except Exception as e:  # pylint: disable=broad-except
          compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"

    # Repeats interleaved within each framework, so background load hits the contenders
    # alike; the frameworks run one after the other, because interleaving JAX and
    # PyTorch calls makes each one's idle worker threads compete with the other's work.
    for group in (("roofline", "supcon_dense", "supcon_blockwise", "projnce_dense",
                   "projnce_blockwise"), ("torch_eager", "torch_compile")):
      group = [k for k in group if k in contenders]
      for k in group:
        for _ in range(contenders[k][1]):
          contenders[k][0]()
      times = {k: [] for k in group}
      for _ in range(reps):
        for k in group:
          t0 = time.perf_counter()
          contenders[k][0]()
          times[k].append(time.perf_counter() - t0)
      for k, ts in times.items():
        r[k] = statistics.median(ts)
        print(f"  {k}: {fmt_ms(r[k])} ms", flush=True)
      time.sleep(0.5)
    r["roofline_gflops"] = 3 * 2 * n * n * DIM / r["roofline"] / 1e9
    rows.append(r)
  if compile_error:
    notes.append(f"torch.compile failed: {compile_error}")
  return {"rows": rows, "notes": notes}


def speed_tables(res) -> str:
  def ratio(a, b):
    return None if a is None or b is None else a / b

  rows_a, rows_b = [], []
  for r in res["rows"]:
    d = r["supcon_dense"]
    rows_a.append([
        r["n"], r["repeats"], f"{fmt_ms(r['roofline'])} ({r['roofline_gflops']:.0f} GF/s)",
        fmt_ms(d), fmt_ms(r.get("supcon_blockwise")), fmt_ms(r["projnce_dense"]),
        fmt_ms(r.get("projnce_blockwise")), fmt_ms(r.get("torch_eager")),
        fmt_ms(r.get("torch_compile"))])
    diff = (abs(r["jax_loss"] - r["torch_loss"])
            if "torch_loss" in r and "jax_loss" in r else None)
    rows_b.append([
        r["n"],
        "—" if d is None else f"{100 * r['roofline'] / d:.0f}%",
        fmt_ratio(ratio(r.get("supcon_blockwise"), d)),
        fmt_ratio(ratio(r.get("projnce_dense"), d)),
        fmt_ratio(ratio(r.get("torch_eager"), d)),
        fmt_ratio(ratio(r.get("torch_compile"), d)),
        "—" if diff is None else f"{diff:.1e}",
        "—" if "grad_diff" not in r else
        f"{r['grad_diff']:.1e} (of {r['grad_scale']:.1e})"])
  a = table(["N", "reps", "roofline ms", "SupCon dense", "SupCon blockwise",
             "ProjNCE dense", "ProjNCE blockwise", "torch eager", "torch.compile"], rows_a)
  b = table(["N", "roofline / dense (efficiency)", "blockwise / dense",
             "ProjNCE / SupCon (dense)", "torch eager / jax dense",
             "torch.compile / jax dense", "abs loss diff jax vs torch",
             "max abs grad diff jax vs torch"], rows_b)
  return a + "\n\nRatios (SupCon unless named; > 1x means JAX dense is faster):\n\n" + b


# ----------------------------------------------------------------------------------------
# Parts 2 and 3: memory and the class-level fast path (each config in a fresh process).
# ----------------------------------------------------------------------------------------


def child_run(kind: str, impl: str, n: int, budget_bytes: float, repeats: int) -> dict:
  """Compiles one fwd+bwd, runs it unless XLA's estimate exceeds the budget; peak RSS."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  feats, labels_np = make_data(n)
  z_np, rows_labels = as_rows(feats, labels_np)
  z = jnp.asarray(z_np)
  labels = rows_labels
  del feats, z_np
  g = jax_loss_grad(kind, impl, labels)
  t0 = time.perf_counter()
  compiled = g.lower(z).compile()
  out = {"kind": kind, "impl": impl, "n": n, "compile_s": time.perf_counter() - t0}
  try:
    ma = compiled.memory_analysis()
    need = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    out["xla_bytes"] = float(need)
  except Exception:  # pylint: disable=broad-except
    need = None
  if need is not None and need > budget_bytes:
    out["skipped"] = (f"would need {need / GIB:.1f} GiB (XLA buffer estimate; "
                      f"budget {budget_bytes / GIB:.1f} GiB)")
    return out
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(z))
    times.append(time.perf_counter() - t0)
  out["time_s"] = statistics.median(times)
  out["peak_rss_bytes"] = peak_rss_bytes()
  return out


def peak_rss_bytes() -> float:
  """This process's peak resident set size (VmHWM).

  Read from /proc/self/status rather than `getrusage`: on Linux `ru_maxrss` survives
  fork+exec, so a child started by a large parent would report the parent's peak.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return float(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def run_child(args_list, env_extra=None, timeout=1800) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  cmd = [sys.executable, os.path.abspath(__file__), "--child"] + args_list
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' / '.join(tail)[:300]}"}
  return json.loads(lines[-1])


def bench_memory(sizes) -> dict:
  budget = 0.6 * _meminfo("MemAvailable")
  rows, notes = [], []
  blockwise_ok, why = impl_available("blockwise")
  if not blockwise_ok:
    notes.append(f"blockwise skipped: {why}")
  base = run_child(["run", "supcon", "dense", "256", str(budget), "1"])
  for n in sizes:
    for kind, impl in (("supcon", "dense"), ("supcon", "blockwise"),
                       ("supcon_nc", "blockwise"), ("infonce", "blockwise")):
      if impl == "blockwise" and not blockwise_ok:
        continue
      print(f"[memory] N={n} {kind} {impl}", flush=True)
      rows.append(run_child(["run", kind, impl, str(n), str(budget), "1"]))
      print(f"  {rows[-1]}", flush=True)
  return {"rows": rows, "baseline": base, "notes": notes, "budget": budget}


def memory_table(res) -> str:
  out = []
  for r in res["rows"]:
    if "error" in r:
      out.append([r.get("n", "?"), r.get("kind", "?"), r.get("impl", "?"),
                  "error: " + r["error"], "", "", ""])
      continue
    xla = "—" if "xla_bytes" not in r else f"{r['xla_bytes'] / GIB:.2f}"
    if "skipped" in r:
      out.append([r["n"], r["kind"], r["impl"], "skipped: " + r["skipped"], xla, "—", "—"])
    else:
      out.append([r["n"], r["kind"], r["impl"], f"{r['peak_rss_bytes'] / GIB:.2f}", xla,
                  fmt_ms(r["time_s"]), f"{r['compile_s']:.1f}"])
  base = res["baseline"]
  note = ""
  if "peak_rss_bytes" in base:
    note = (f"\n\nBaseline (same process type, N=256): peak RSS "
            f"{base['peak_rss_bytes'] / GIB:.2f} GiB (Python + jax runtime + compiler).")
  return table(["N", "loss call", "impl", "peak RSS GiB", "XLA buffers GiB", "fwd+bwd ms (1 call)",
                "compile s"], out) + note


def bench_fastpath(n: int, all_pairs_row) -> dict:
  print(f"[fastpath] N={n}", flush=True)
  budget = 0.6 * _meminfo("MemAvailable")
  cls = run_child(["run", "classpath", "dense", str(n), str(budget), "5"])
  pairs = all_pairs_row
  if pairs is None:
    blockwise_ok, _ = impl_available("blockwise")
    impl = "blockwise" if blockwise_ok else "dense"
    pairs = run_child(["run", "supcon", impl, str(n), str(budget), "1"])
  return {"class": cls, "pairs": pairs, "n": n}


def fastpath_table(res) -> str:
  cls, pairs = res["class"], res["pairs"]

  def cell(r, key):
    if "error" in r:
      return "error: " + r["error"]
    if "skipped" in r:
      return "skipped: " + r["skipped"]
    return fmt_ms(r[key]) if key == "time_s" else f"{r[key] / GIB:.2f}"

  rows = [["class-level (positive=centroid, negative=centroid)", cell(cls, "time_s"),
           cell(cls, "peak_rss_bytes")],
          [f"all-pairs SupCon ({pairs.get('impl', '?')})", cell(pairs, "time_s"),
           cell(pairs, "peak_rss_bytes")]]
  s = table([f"N={res['n']:,}, M={NUM_CLASSES}, d={DIM}", "fwd+bwd ms", "peak RSS GiB"],
            rows)
  if "time_s" in cls and "time_s" in pairs:
    s += f"\n\nAll-pairs / class-level time: {pairs['time_s'] / cls['time_s']:,.0f}x."
  return s


# ----------------------------------------------------------------------------------------
# Part 4: ring vs gathered dense on 8 CPU devices.
# ----------------------------------------------------------------------------------------


def child_ring(n: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top
  from projnce_jax import parallel  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()
  feats, labels_np = make_data(n)
  z_np, rows_labels = as_rows(feats, labels_np)
  batch = parallel.shard_batch({"z": z_np, "labels": rows_labels}, mesh)
  out = {"n": n, "devices": mesh.devices.size}
  results = {}
  for impl in ("dense", "blockwise", "ring"):
    f = parallel.sharded_loss(pj.losses.supcon, mesh, temperature=TEMPERATURE,
                              num_classes=NUM_CLASSES, impl=impl)
    g = jax.jit(jax.value_and_grad(lambda z, y: f(z, y)[0]))
    try:
      results[impl] = g(batch["z"], batch["labels"])
    except Exception as e:  # pylint: disable=broad-except
      out[f"{impl}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      continue
    out[f"{impl}_time_s"] = median_time(
        lambda: jax.block_until_ready(g(batch["z"], batch["labels"])), repeats)
  ref_loss, ref_grad = results["dense"]
  for impl in ("blockwise", "ring"):
    if impl in results:
      loss, grad = results[impl]
      out[f"{impl}_loss_diff"] = float(jnp.abs(loss - ref_loss))
      out[f"{impl}_grad_diff"] = float(jnp.max(jnp.abs(grad - ref_grad)))
  out["grad_scale"] = float(jnp.max(jnp.abs(ref_grad)))
  return out


def ring_table(res) -> str:
  if "error" in res:
    return "error: " + res["error"]
  rows = []
  dense = res.get("dense_time_s")
  for impl in ("dense", "blockwise", "ring"):
    if f"{impl}_error" in res:
      rows.append([impl, "error: " + res[f"{impl}_error"], "", "", ""])
      continue
    t = res[f"{impl}_time_s"]
    rows.append([impl, fmt_ms(t), fmt_ratio(t / dense) if dense else "—",
                 "0 (reference)" if impl == "dense" else f"{res[f'{impl}_loss_diff']:.1e}",
                 "0 (reference)" if impl == "dense" else f"{res[f'{impl}_grad_diff']:.1e}"])
  return (table([f"impl (N={res['n']:,}, {res['devices']} CPU devices, float32)",
                 "fwd+bwd ms", "time / dense", "abs loss diff vs dense",
                 "max abs grad diff vs dense"], rows) +
          f"\n\nLargest gradient entry: {res['grad_scale']:.1e}.")


# ----------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# Part: the API as users call it, beside the num_classes path and the PyTorch peers.
# ----------------------------------------------------------------------------------------

API_JAX = (
    ("roofline", None, "three N x N x d matmuls (fwd scores, two bwd products)"),
    ("naive", "dense", "ten-line jnp SupCon"),
    ("supcon", "dense", "supcon(z, y)"),
    ("supcon_nc", "dense", f"supcon(z, y, num_classes={NUM_CLASSES})"),
    ("supcon", "blockwise", "supcon(z, y, impl='blockwise')"),
    ("supcon_nc", "blockwise", f"supcon(z, y, impl='blockwise', num_classes={NUM_CLASSES})"),
    ("infonce", "dense", "infonce(views)"),
    ("infonce", "blockwise", "infonce(views, impl='blockwise')"),
    ("projnce:centroid", "dense", "projnce(z, y) (centroid / sample)"),
    ("projnce:centroid_nc", "dense", f"projnce(z, y, num_classes={NUM_CLASSES})"),
    ("projnce:median", "dense", "projnce(z, y, positive='median')"),
    ("projnce:median_nc", "dense", "projnce(z, y, positive='median', num_classes=M)"),
    ("projnce:kernel", "dense", "projnce(z, y, positive='kernel')"),
    ("projnce:kernel_nc", "dense", "projnce(z, y, positive='kernel', num_classes=M)"),
    ("projnce:orthogonal", "dense", "projnce(z, y, positive='orthogonal', num_classes=M)"),
    ("projnce:mlp", "dense", "projnce(z, y, positive='mlp', num_classes=M, params=...)"),
)
API_TORCH = (
    ("torch_supcon_eager", "SupContrast formula, eager"),
    ("torch_supcon_compile", "SupContrast formula, torch.compile"),
    ("pml_supcon", "pytorch-metric-learning SupConLoss"),
    ("lightly_ntxent", "lightly NTXentLoss (two views)"),
)


def child_api(n: int, threads: int, repeats: int, torch_compile: bool) -> dict:
  """Times every API_JAX / API_TORCH contender at N rows, pinned to `threads` cores."""
  try:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
  except (AttributeError, OSError):
    pass
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  feats, labels_np = make_data(n)
  z_np, rows_labels = as_rows(feats, labels_np)
  z = jnp.asarray(z_np)
  out = {"n": n, "threads": threads, "repeats": repeats, "times": {}, "notes": [],
         "load_avg_1m": os.getloadavg()[0]}
  calls = {}
  for kind, impl, _ in API_JAX:
    key = kind if impl is None else f"{kind}|{impl}"
    f = roofline_fn() if kind == "roofline" else jax_loss_grad(kind, impl, rows_labels)
    calls[key] = (lambda f=f: jax.block_until_ready(f(z)))
  jax_keys = list(calls)
  torch_keys = []
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    sys.path.insert(0, HERE)
    from supcon_torch import supcon_loss  # pylint: disable=g-import-not-at-top
    import torch_peers  # pylint: disable=g-import-not-at-top
    x = torch.tensor(feats, requires_grad=True)
    y = torch.tensor(labels_np)

    def step(fn):
      def run():
        x.grad = None
        loss = fn()
        loss.backward()
      return run

    def rows_of(t):  # [b, 2, d] -> view-major rows [2b, d], as the JAX side
      return torch.cat(torch.unbind(t, dim=1), dim=0)

    peers = {"torch_supcon_eager": lambda: supcon_loss(x, y, TEMPERATURE)}
    if torch_compile:
      compiled = torch.compile(supcon_loss)
      peers["torch_supcon_compile"] = lambda: compiled(x, y, TEMPERATURE)
    try:
      pml = torch_peers.load_pml_supcon()(temperature=TEMPERATURE)
      y_rows = y.repeat(2)
      peers["pml_supcon"] = lambda: pml(
          torch.nn.functional.normalize(rows_of(x), dim=1), y_rows)
    except ImportError as e:
      out["notes"].append(f"pytorch-metric-learning skipped: {e}")
    try:
      ntx = torch_peers.load_lightly_ntxent()(temperature=TEMPERATURE)
      peers["lightly_ntxent"] = lambda: ntx(x[:, 0], x[:, 1])
    except ImportError as e:
      out["notes"].append(f"lightly skipped: {e}")
    for key, fn in peers.items():
      try:
        step(fn)()  # warm-up (compiles for torch.compile)
        calls[key] = step(fn)
        torch_keys.append(key)
      except Exception as e:  # pylint: disable=broad-except
        out["notes"].append(f"{key} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
  except ImportError as e:
    out["notes"].append(f"PyTorch skipped: {e} (pip install -e .[bench])")
  # Round-robin repeats within each framework (load hits the contenders alike).
  for group in (jax_keys, torch_keys):
    for k in group:
      t0 = time.perf_counter()
      calls[k]()
      print(f"  warm {k}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    times = {k: [] for k in group}
    for _ in range(repeats):
      for k in group:
        t0 = time.perf_counter()
        calls[k]()
        times[k].append(time.perf_counter() - t0)
    for k, ts in times.items():
      out["times"][k] = statistics.median(ts)
  out["load_avg_1m_end"] = os.getloadavg()[0]
  return out


def bench_api(n: int, threads_list, repeats: int, torch_compile: bool) -> dict:
  runs = []
  for threads in threads_list:
    print(f"[api] N={n} threads={threads}", flush=True)
    runs.append(run_child(["api", str(n), str(threads), str(repeats),
                           "1" if torch_compile else "0"]))
    print(f"  {runs[-1]}", flush=True)
  return {"runs": runs, "n": n}


def api_table(res) -> str:
  runs = [r for r in res["runs"] if "times" in r]
  errors = [r["error"] for r in res["runs"] if "error" in r]
  if not runs:
    return "no run finished: " + "; ".join(errors)
  header = ["call"]
  for r in runs:
    header += [f"{r['threads']} thr ms", f"{r['threads']} thr vs roofline"]
  rows = []
  labels = [(k if i is None else f"{k}|{i}", text) for k, i, text in API_JAX]
  labels += list(API_TORCH)
  for key, text in labels:
    row = [text]
    for r in runs:
      t = r["times"].get(key)
      roof = r["times"].get("roofline")
      row += [fmt_ms(t), "—" if t is None or roof is None else f"{roof / t:.2f}"]
    rows.append(row)
  notes = []
  for r in runs:
    notes.append(f"- {r['threads']} thread(s): load average {r['load_avg_1m']:.1f} at start,"
                 f" {r['load_avg_1m_end']:.1f} at end, {r['repeats']} repeats")
    notes += [f"- {n}" for n in r["notes"]]
  notes += [f"- error: {e}" for e in errors]
  text = (f"N = {res['n']} rows (two views of {res['n'] // 2} examples, {NUM_CLASSES} "
          f"classes), d = {DIM}, float32, forward + backward w.r.t. the embeddings; "
          "'vs roofline' = roofline time / call time (1.00 = the three matmuls alone, "
          "untiled, with the [N, N] product in memory; the one-device kernel runs its three "
          "products in cache-sized tiles, so it can exceed 1.00). "
          "Each thread count runs in its own process pinned to that many cores.")
  return text + "\n\n" + table(header, rows) + "\n\n" + "\n".join(notes)


def api_targets(res) -> list:
  rows = []
  for r in res.get("runs", []):
    if "times" not in r:
      continue
    t = r["times"]
    user, roof, comp = t.get("supcon|dense"), t.get("roofline"), t.get("torch_supcon_compile")
    tag = f" ({r['threads']} thr, N={r['n']})"
    if user and roof:
      rows.append(["supcon(z, y) >= 0.80 of the three-matmul roofline" + tag,
                   f"{roof / user:.2f}", "met" if roof / user >= TARGET_ROOFLINE else "not met"])
    if user and comp:
      rows.append(["supcon(z, y) >= 1.2x faster than torch.compile" + tag,
                   f"{comp / user:.2f}x", "met" if comp / user >= TARGET_VS_COMPILE else "not met"])
  return rows


def targets(speed, memory, api=None) -> str:
  rows = []

  def find(n):
    for r in (speed or {}).get("rows", []):
      if r["n"] == n:
        return r
    return None

  r = find(4096)
  if r and r.get("supcon_dense"):
    d = r["supcon_dense"]
    eff = r["roofline"] / d
    rows.append(["dense fwd+bwd at N=4096 >= 80% of matmul roofline", f"{100 * eff:.0f}%",
                 "met" if eff >= TARGET_ROOFLINE else "not met"])
    for key, target, label in (("torch_eager", TARGET_VS_EAGER, "PyTorch eager"),
                               ("torch_compile", TARGET_VS_COMPILE, "torch.compile")):
      if r.get(key):
        x = r[key] / d
        rows.append([f"dense at N=4096 >= {target}x faster than {label}", f"{x:.2f}x",
                     "met" if x >= target else "not met"])
      else:
        rows.append([f"dense at N=4096 >= {target}x faster than {label}", "not measured",
                     "—"])
  else:
    rows.append(["dense targets at N=4096", "N=4096 not in --sizes", "—"])
  for kind in ("supcon", "infonce"):
    label = f"{kind}(..., impl='blockwise') without num_classes: peak RSS at N=65536 < 2 GiB"
    bw = [m for m in (memory or {}).get("rows", [])
          if m.get("impl") == "blockwise" and m.get("n") == 65536 and m.get("kind") == kind]
    if bw and "peak_rss_bytes" in bw[0]:
      rss = bw[0]["peak_rss_bytes"] / GIB
      rows.append([label, f"{rss:.2f} GiB",
                   "met" if rss < TARGET_BLOCKWISE_RSS else "not met"])
    else:
      rows.append([label, "not measured", "—"])
  r = find(8192)
  if r and r.get("supcon_blockwise") and r.get("supcon_dense"):
    x = r["supcon_blockwise"] / r["supcon_dense"]
    rows.append(["blockwise within 1.5x of dense time at N=8192", f"{x:.2f}x",
                 "met" if x <= TARGET_BLOCKWISE_SLOWDOWN else "not met"])
  else:
    rows.append(["blockwise within 1.5x of dense time at N=8192", "not measured", "—"])
  rows += api_targets(api or {})
  return table(["target", "measured", "status"], rows)


def write_report(path, command, info, sections) -> None:
  head = [
      "# Loss benchmark results",
      "",
      "Generated by `benchmarks/loss_bench.py`; rerun to refresh.",
      "",
      "Command:",
      "",
      "    " + command,
      "",
      f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
      "",
      "Machine: " + ", ".join([
          f"`uname -m` = {info['arch']}", f"CPU: {info['cpu']}", f"{info['cores']} cores",
          f"{info['mem_total_gib']:.0f} GiB RAM", f"Python {info['python']}",
          f"jax {info['jax']} (jaxlib {info['jaxlib']})",
          f"torch {info['torch']} ({info.get('torch_threads', '?')} threads)",
          f"1-minute load average at start {info['load_avg_1m']:.1f}"]) + ".",
      "",
      f"Setup: float32, d = {DIM}, M = {NUM_CLASSES} classes (`num_classes={NUM_CLASSES}`),"
      f" temperature {TEMPERATURE}, two views per example; times are forward + backward"
      " (gradient w.r.t. the embeddings) of one jitted call, median of repeats after a"
      " warm-up call; in the speed table the repeats are interleaved (round-robin) among"
      " the JAX contenders and among the PyTorch ones, so load from other processes"
      " affects them alike; the two frameworks run one after the other.",
  ]
  body = []
  for title, text in sections:
    body += ["", f"## {title}", "", text]
  with open(path, "w") as f:
    f.write("\n".join(head + body) + "\n")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1024,4096,8192,16384",
                      help="comma-separated N for the speed part")
  parser.add_argument("--mem-sizes", default="4096,16384,65536",
                      help="comma-separated N for the memory part")
  parser.add_argument("--fastpath-n", type=int, default=65536)
  parser.add_argument("--ring-n", type=int, default=4096)
  parser.add_argument("--parts", default=",".join(PARTS),
                      help=f"comma-separated subset of {PARTS}")
  parser.add_argument("--repeats", type=int, default=None,
                      help="repeats per size (default: 20/7/5/3 by size)")
  parser.add_argument("--no-torch-compile", action="store_true")
  parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
  parser.add_argument("--api-n", type=int, default=4096)
  parser.add_argument("--threads", default="1,2",
                      help="comma-separated thread counts for the api part")
  parser.add_argument("--quick", action="store_true",
                      help="a fast check of every part (small sizes, few repeats; "
                      "written to --out, default /tmp/loss_bench_quick.md)")
  parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.sizes, args.mem_sizes, args.fastpath_n, args.ring_n = "1024", "4096", 4096, 1024
    args.api_n, args.repeats = min(args.api_n, 1024), args.repeats or 3
    if args.out == os.path.join(HERE, "RESULTS.md"):
      args.out = "/tmp/loss_bench_quick.md"

  if args.child:
    kind = args.child[0]
    if kind == "run":
      k, impl, n, budget, reps = args.child[1:]
      print(json.dumps(child_run(k, impl, int(n), float(budget), int(reps))))
    elif kind == "ring":
      print(json.dumps(child_ring(int(args.child[1]), int(args.child[2]))))
    elif kind == "api":
      n, threads, reps, comp = (int(a) for a in args.child[1:])
      print(json.dumps(child_api(n, threads, reps, bool(comp))))
    return 0

  parts = [p for p in args.parts.split(",") if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise ValueError(f"unknown --parts {sorted(unknown)}; choose from {PARTS}")
  command = "python benchmarks/loss_bench.py " + " ".join(
      a for a in (argv if argv is not None else sys.argv[1:]))
  info = machine_info()
  print(json.dumps(info), flush=True)
  sections, speed, memory, api = {}, None, None, None
  t_start = time.perf_counter()

  # Subprocess parts first, while this process is still small (memory budgets use
  # MemAvailable); the report lists the sections in the usual order.
  if "memory" in parts:
    memory = bench_memory([int(s) for s in args.mem_sizes.split(",") if s])
    text = memory_table(memory)
    if memory["notes"]:
      text += "\n\n" + "\n".join(f"- {n}" for n in memory["notes"])
    sections["memory"] = ("Peak memory: SupCon forward + backward, one process per row",
                          text)
  if "fastpath" in parts:
    pairs = None
    for m in (memory or {}).get("rows", []):
      if (m.get("n") == args.fastpath_n and m.get("impl") == "blockwise" and
          m.get("kind") == "supcon" and "time_s" in m):
        pairs = m
    fast = bench_fastpath(args.fastpath_n, pairs)
    sections["fastpath"] = ("Class-level fast path vs all pairs", fastpath_table(fast))
  if "ring" in parts:
    print(f"[ring] N={args.ring_n} on 8 CPU devices", flush=True)
    ring = run_child(["ring", str(args.ring_n), "5"], env_extra={
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    sections["ring"] = (
        "Ring vs gathered dense on 8 CPU devices (shard_map)",
        ring_table(ring) + "\n\nThe 8 devices share the machine's cores, so the time"
        " ratio shows overheads (extra passes, ppermute steps), not the communication"
        " savings ring gives on real multi-chip hardware.")
  if "api" in parts:
    api = bench_api(args.api_n, [int(t) for t in args.threads.split(",") if t],
                    args.repeats or 7, not args.no_torch_compile)
    sections["api"] = ("The API as users call it, beside num_classes and the PyTorch peers",
                       api_table(api))
  if "speed" in parts:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    speed = bench_speed(sizes, args.repeats, not args.no_torch_compile)
    text = speed_tables(speed)
    if speed["notes"]:
      text += "\n\n" + "\n".join(f"- {n}" for n in speed["notes"])
    sections["speed"] = ("Speed: forward + backward", text)
  sections = [sections[p] for p in ("api", "speed", "memory", "fastpath", "ring")
              if p in sections]
  sections.append(("Targets", targets(speed, memory, api)))
  sections.append(("Run time", f"{time.perf_counter() - t_start:,.0f} s for the whole run;"
                   f" 1-minute load average at the end {os.getloadavg()[0]:.1f}."))

  write_report(args.out, command.strip(), info, sections)
  for title, text in sections:
    print(f"\n## {title}\n\n{text}")
  print(f"\nwritten to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""On-paper model of the all-pairs term on an accelerator: the XLA path vs the fused kernel.

Per score entry (one (anchor, key) pair) of forward + backward at d = 128, bfloat16:

- XLA path (`impl="dense"` on one device, i.e. the streamed symmetric kernel; `blockwise`
  is the same program there): flops and bytes accessed are counted by XLA's cost analysis of
  the compiled program. The cost analysis counts a loop body once, so the per-entry figures
  come from two compilations that differ only in the key block B:
  per_entry = (cost(B2) - cost(B1)) / (n (B2 - B1)) (the forward and the backward loop each
  visit n x B entries per iteration). Compiled here for the CPU: GPU fusion differs in
  detail, not in kind (every [n, B] tile is written to and read back from memory).
- fused kernel: counted from its BlockSpecs (`projnce_jax.losses.fused`): the score tile
  stays on chip, so the only traffic that grows with N^2 is re-reading key blocks once per
  row block: (2 d + 4) / block_r bytes per entry in the forward ([block_c, d] keys, their
  ids) and (2 d + 16) / block_r in the one symmetric backward pass (keys, ids, key ids,
  lse, cotangents); on-chip caches only lower this.

Each is turned into the fraction of a chip it can reach, min(1, intensity / ridge), with
ridge = peak flop/s / memory bandwidth, and the fused kernel also against the chip's
special-function (exp) rate: 3 exps per entry (forward 1, backward 2) in series with 6 d
matmul flops bound it at 1 / (1 + 3 * peak / (6 d * exp_rate)) of the GEMM rate unless the
two overlap (FlashAttention-3's ping-pong; Triton kernels overlap them only partly).
The chip figures are parameters (defaults: the H100 host's bf16 GEMM rate as stated for it,
798 TFLOP/s, HBM3 3.35 TB/s and 3.9e12 exp/s from NVIDIA's published SM counts): they are
assumptions here, not measurements, until the accelerator check has run there.

  python benchmarks/roofline.py --write benchmarks/ROOFLINE.md
"""
import argparse
import platform
import time

import jax
import jax.numpy as jnp

from projnce_jax.losses import fused
from projnce_jax.losses import sample as sample_lib


def xla_per_entry(n: int, d: int, blocks=(64, 128)):
  """(flops, bytes, transcendentals) per score entry of fwd + bwd, from compiled HLO."""
  z = jax.ShapeDtypeStruct((n, d), jnp.bfloat16)
  ids, valid = jnp.arange(n), jnp.ones(n, bool)
  costs = []
  for b in blocks:
    f = jax.jit(jax.value_and_grad(lambda z, b=b: jnp.sum(
        sample_lib.all_pairs_lse(z, ids, valid, 10.0, impl="dense", block_size=b))))
    ca = f.trace(z).lower().compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    costs.append((ca["flops"], ca["bytes accessed"], ca.get("transcendentals", 0.0)))
  entries = n * (blocks[1] - blocks[0])  # each entry: one forward and one backward visit
  return tuple((c1 - c0) / entries for c0, c1 in zip(*costs))


def fused_per_entry(d: int, block_r: int):
  flops = 2 * d + 2 * (2 * d)  # forward product; backward: recomputed tile + (W + W^T) y
  flops += 6 + 12  # forward mask/max/exp/sum; backward two masked exps and the sum
  bytes_ = (2 * d + 4) / block_r + (2 * d + 16) / block_r
  return flops, bytes_, 3.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=16384)
  parser.add_argument("--d", type=int, default=128)
  parser.add_argument("--peak", type=float, default=798e12, help="bf16 GEMM flop/s")
  parser.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s")
  parser.add_argument("--exp-rate", type=float, default=3.9e12, help="exp/s")
  parser.add_argument("--write", default=None)
  args = parser.parse_args(argv)
  d, ridge = args.d, args.peak / args.bandwidth
  useful = 6 * d  # 3 products of 2 d flops per entry: what the fraction of GEMM counts
  rows = []
  xla = xla_per_entry(args.n, d)
  for name, (flops, bytes_, trans) in (
      ("XLA (dense = blockwise on one device)", xla),
      (f"fused, GPU tiles {fused.BLOCKS['gpu']['block_r']} x {fused.BLOCKS['gpu']['block_c']}",
       fused_per_entry(d, fused.BLOCKS["gpu"]["block_r"]))):
    memory_bound = min(1.0, (useful / bytes_) / ridge)
    exp_bound = 1.0 / (1.0 + trans * args.peak / (useful * args.exp_rate))
    rows.append((name, flops, bytes_, trans, useful / bytes_, memory_bound,
                 min(memory_bound, exp_bound)))
  head = ("| path | flops / entry | bytes / entry | exp / entry | useful flop / byte "
          "| memory roofline (of GEMM) | with exp in series |\n|---|---|---|---|---|---|---|")
  body = "\n".join(f"| {r[0]} | {r[1]:.0f} | {r[2]:.2f} | {r[3]:.1f} | {r[4]:.0f} | "
                   f"{r[5]:.2f} | {r[6]:.2f} |" for r in rows)
  text = (f"# On-paper model: the all-pairs term on an accelerator\n\n"
          f"Written by `python benchmarks/roofline.py --write benchmarks/ROOFLINE.md` on "
          f"{platform.machine()} ({time.strftime('%Y-%m-%d')}, jax {jax.__version__}); "
          f"XLA counts from the CPU-compiled program at N = {args.n}, d = {d}, bf16.\n\n"
          f"Chip parameters (assumed, not measured here): {args.peak / 1e12:.0f} TFLOP/s "
          f"bf16, {args.bandwidth / 1e12:.2f} TB/s, {args.exp_rate / 1e12:.1f}e12 exp/s; "
          f"ridge {ridge:.0f} flop/byte. 'Useful' flops are the 3 x 2 d per entry that "
          f"the accelerator check's fraction of GEMM counts.\n\n{head}\n{body}\n\n"
          "Reading: the XLA path writes and re-reads every score tile, so it is capped by "
          "memory bandwidth far below the GEMM rate; the fused kernel's traffic per entry "
          "falls with the row block, so bandwidth stops binding, and the exp unit becomes "
          "the ceiling unless the kernel overlaps it with the matmuls. Measured numbers "
          "replace this table once `benchmarks/accelerator_check.sh` has run on the chip "
          "(benchmarks/accelerator/).\n")
  print(text)
  if args.write:
    with open(args.write, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()

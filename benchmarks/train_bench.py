"""Train-step time of ProjNCE vs SupCon vs cross-entropy on the same encoder and batch.

Every method runs the full training step (augmentation, encoder forward/backward, loss,
online probe, optimiser update) as one jitted function with the state donated. The step
is timed with `block_until_ready` after each call; the table reports the median over
repeats and examples/s per device. Target: ProjNCE step <= 1.1x the cross-entropy step.

Usage:
  python benchmarks/train_bench.py                       # small CNN, 28x28, batch 256
  python benchmarks/train_bench.py --model=resnet18 --image_size=32 --channels=3 \
      --batch_size=128 --dtype=bfloat16                  # on an accelerator
  python benchmarks/train_bench.py --write=benchmarks/TRAIN_RESULTS.md
"""
import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from projnce_jax.losses import init_mlp_params
from projnce_jax.models import create_model
from projnce_jax.train.inputs import make_train_inputs
from projnce_jax.train.optim import make_optimizer
from projnce_jax.train.optim import warmup_cosine
from projnce_jax.train.state import create_train_state
from projnce_jax.train.state import make_tx
from projnce_jax.train.step import make_train_step

METHODS = {
    "cross_entropy": ("cross_entropy", {}),
    "projnce": ("projnce", {"temperature": 0.1, "positive": "centroid",
                            "negative": "sample", "beta": 1.0}),
    "projnce_mlp": ("projnce", {"temperature": 0.1, "positive": "mlp",
                                "negative": "sample", "beta": 1.0}),
    "supcon": ("supcon", {"temperature": 0.1}),
}


def build(method_key, args):
  """(jitted step, state, batch) for one method on a synthetic batch."""
  method, loss_kwargs = METHODS[method_key]
  is_ce = method == "cross_entropy"
  kwargs = {}
  if args.model == "small_cnn":
    kwargs.update(widths=(32, 64, 128), extra_convs=1)   # the demo's encoder
  model = create_model(args.model, num_classes=args.num_classes if is_ce else 0,
                       proj_dim=0 if is_ce else 128, dtype=args.dtype, **kwargs)
  schedule = warmup_cosine(peak_lr=0.1, total_steps=1000, warmup_steps=10)
  tx = make_tx(make_optimizer("sgd", schedule, weight_decay=1e-4), optax.adam(1e-3))
  proj_init = None
  if "mlp" in (loss_kwargs.get("positive"), loss_kwargs.get("negative")):
    proj_init = lambda k: init_mlp_params(k, num_classes=args.num_classes, dim=128)
  shape = (args.image_size, args.image_size, args.channels)
  state = create_train_state(jax.random.PRNGKey(0), model, jnp.zeros((1,) + shape),
                             num_classes=args.num_classes, tx=tx, projection_init=proj_init)
  step = make_train_step(model=model, method=method, loss_kwargs=loss_kwargs, num_views=2,
                         num_classes=args.num_classes, schedule=schedule,
                         train_inputs=make_train_inputs("image", num_views=2))
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      "image": rng.integers(0, 256, (args.batch_size,) + shape, dtype=np.uint8),
      "label": rng.integers(0, args.num_classes, (args.batch_size,)).astype(np.int32),
      "mask": np.ones((args.batch_size,), bool),
      "index": np.arange(args.batch_size, dtype=np.int32)})
  return jax.jit(step, donate_argnums=0), state, batch


def time_methods(keys, args):
  """Per-step times (s) per method: `repeats` rounds of `steps` steps after warm-up.

  Rounds are interleaved across methods (A B C A B C ...) so that load changes on the
  machine affect every method alike.
  """
  runs = {}
  for key in keys:
    step, state, batch = build(key, args)
    for _ in range(args.warmup):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[key] = [step, state, batch]
  times = {key: [] for key in keys}
  for _ in range(args.repeats):
    for key in keys:
      step, state, batch = runs[key]
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, batch)
      jax.block_until_ready((state, metrics))
      times[key].append((time.perf_counter() - t0) / args.steps)
      runs[key][1] = state
  return times


def machine() -> str:
  dev = jax.devices()[0]
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{jax.device_count()} x {dev.device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="small_cnn")
  p.add_argument("--image_size", type=int, default=28)
  p.add_argument("--channels", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=256, help="examples (x2 views)")
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--methods", default="cross_entropy,projnce,projnce_mlp,supcon")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--write", default=None, help="append the markdown table to this file")
  args = p.parse_args(argv)

  rows = []
  keys = args.methods.split(",")
  for key, times in time_methods(keys, args).items():
    med = statistics.median(times)
    rows.append((key, med, min(times), max(times)))
    print(f"{key:>14}: median {med * 1e3:8.2f} ms/step", flush=True)
  base = next((r[1] for r in rows if r[0] == "cross_entropy"), rows[0][1])
  per_dev = args.batch_size / jax.device_count()
  cmd = "python benchmarks/train_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
  lines = [
      f"### {args.model}, {args.image_size}x{args.image_size}x{args.channels}, batch "
      f"{args.batch_size} x 2 views, {args.dtype}", "",
      f"Command: `{cmd.strip()}`  ",
      f"Machine: {machine()}  ",
      f"Median of {args.repeats} rounds of {args.steps} steps (after {args.warmup} warm-up "
      "steps), rounds interleaved across methods; full train step incl. augmentation, "
      "probe and optimiser.", "",
      "| method | step (ms, median) | min-max (ms) | examples/s/device | vs cross-entropy |",
      "|---|---|---|---|---|"]
  for key, med, lo, hi in rows:
    lines.append(f"| {key} | {med * 1e3:.1f} | {lo * 1e3:.1f}-{hi * 1e3:.1f} | "
                 f"{per_dev / med:.0f} | {med / base:.3f}x |")
  table = "\n".join(lines) + "\n"
  print("\n" + table)
  if args.write:
    new = not os.path.exists(args.write)
    with open(args.write, "a") as f:
      if new:
        f.write("# Train-step benchmark: ProjNCE vs cross-entropy\n\n"
                "Target: the ProjNCE step costs at most 1.1x the cross-entropy step on the "
                "same encoder and batch (the loss is small next to the encoder).\n\n")
      f.write(table + "\n")


if __name__ == "__main__":
  main()

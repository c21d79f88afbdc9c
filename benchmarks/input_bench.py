"""Input-pipeline throughput: grain loader, on-device augmentation, both.

Settings:
  demo:  mnist5k train split (28x28x1) read from array_record, global batch
         256, 2 views; demo_mem: the same split read into memory first.
  cifar: in-memory random uint8 source (32x32x3, 50,000 examples), batch 512,
         2 views (CIFAR-like; no download needed).

For each setting it times, in examples/s (examples, not views):
  loader:   host batches from ``make_loader`` (grain, 2 reader threads);
  augment:  jitted ``augment_images`` on a batch already on the device;
  pipeline: loader -> device_put -> augment, blocked on the result;
  train step: the ProjNCE train step of the trainer (augmentation, encoder, loss,
            optimiser; `train_bench.build`) on the same batch size, in the same run:
            the demo's small CNN for the demo settings, ResNet-18 for cifar.

Usage::

  python benchmarks/input_bench.py                   # both settings
  python benchmarks/input_bench.py --steps=50 --settings=demo

Prints a markdown table and appends it, with the command and the machine, to
benchmarks/INPUT_RESULTS.md (unless --no_write). The input is not the bottleneck while
"loader" is above "train step" (the trainer augments on the device inside its step).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shlex
import sys
import time

import jax
import numpy as np

from projnce_jax import data

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "INPUT_RESULTS.md")
SETTINGS = {
    "demo": dict(batch_size=256, num_views=2, model="small_cnn", shape=(28, 28, 1)),
    "demo_mem": dict(batch_size=256, num_views=2, model="small_cnn", shape=(28, 28, 1)),
    "cifar": dict(batch_size=512, num_views=2, model="resnet18", shape=(32, 32, 3)),
}


def _source(setting: str, data_dir: str | None):
  if setting in ("demo", "demo_mem"):
    return data.load_split("mnist5k", "train", data_dir=data_dir,
                           in_memory=setting == "demo_mem")
  rng = np.random.default_rng(0)
  n = 50000
  return data.ArraySource({
      "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, n),
  })


def _rate(fn, steps: int, batch_size: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return steps * batch_size / (time.perf_counter() - start)


def bench(setting: str, steps: int, data_dir: str | None,
          train_steps: int = 3) -> dict[str, float]:
  """Returns examples/s of loader, augment, pipeline and train step for one setting."""
  cfg = SETTINGS[setting]
  bs, views = cfg["batch_size"], cfg["num_views"]
  src = _source(setting, data_dir)
  augment = jax.jit(functools.partial(data.augment_images, num_views=views))
  key = jax.random.key(0)

  it = data.make_loader(src, batch_size=bs, seed=0)
  loader = _rate(lambda: next(it), steps, bs)

  images = jax.device_put(next(it)["image"])
  counter = iter(range(10**9))
  aug = _rate(
      lambda: augment(jax.random.fold_in(key, next(counter)), images)
      .block_until_ready(), steps, bs)

  it = data.make_loader(src, batch_size=bs, seed=1)

  def step():
    batch = next(it)
    out = augment(jax.random.fold_in(key, next(counter)),
                  jax.device_put(batch["image"]))
    out.block_until_ready()

  pipe = _rate(step, steps, bs)
  return {"loader": loader, "augment": aug, "pipeline": pipe,
          "train": _train_rate(setting, train_steps)}


def _train_rate(setting: str, steps: int) -> float:
  """Examples/s of the trainer's ProjNCE step (the consumer of the pipeline)."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import train_bench  # pylint: disable=g-import-not-at-top
  cfg = SETTINGS[setting]
  h, w, c = cfg["shape"]
  args = argparse.Namespace(model=cfg["model"], image_size=h, channels=c,
                            batch_size=cfg["batch_size"], num_classes=10, dtype="float32")
  train_step, state, batch = train_bench.build("projnce", args)
  box = [state]

  def one():
    box[0], metrics = train_step(box[0], batch)
    jax.block_until_ready(metrics)

  return _rate(one, steps, cfg["batch_size"], warmup=1)


def machine() -> str:
  dev = jax.devices()[0]
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"on {dev.platform} ({dev.device_kind}) x{jax.device_count()}, "
          f"load average {load:.1f} at the start")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Input pipeline throughput.")
  parser.add_argument("--settings", default="demo,demo_mem,cifar")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--train_steps", type=int, default=3)
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args(argv)

  header = ("| setting | image | batch | views | loader ex/s | augment ex/s | "
            "pipeline ex/s | train step ex/s | loader / train step |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|")
  rows = []
  host = machine()
  for setting in args.settings.split(","):
    r = bench(setting, args.steps, args.data_dir, args.train_steps)
    shape = {"demo": "28x28x1 (mnist5k, array_record)",
             "demo_mem": "28x28x1 (mnist5k, in memory)"}.get(
                 setting, "32x32x3 (random, in memory)")
    cfg = SETTINGS[setting]
    rows.append(f"| {setting} | {shape} | {cfg['batch_size']} | {cfg['num_views']} "
                f"| {r['loader']:,.0f} | {r['augment']:,.0f} | {r['pipeline']:,.0f} "
                f"| {r['train']:,.0f} ({cfg['model']}) | {r['loader'] / r['train']:,.1f}x |")
    print(rows[-1], flush=True)
  table = "\n".join([header, *rows])
  command = "python " + " ".join(shlex.quote(a) for a in
                                 ["benchmarks/input_bench.py", *sys.argv[1:]])
  report = (f"\n## {datetime.date.today().isoformat()}\n\n"
            f"Command: `{command}`  \nMachine: {host}, "
            f"`uname -m` = {platform.machine()}, steps = {args.steps}\n\n{table}\n")
  print(report)
  if not args.no_write:
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
      if new:
        f.write("# Input pipeline throughput\n\nExamples/s (not views) of "
                "`benchmarks/input_bench.py`; see its docstring.\n")
      f.write(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())

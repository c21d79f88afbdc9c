"""Audio CNN training-step cost by log-mel resolution and width (one CPU/accelerator).

  python benchmarks/audio_step_bench.py [--write=benchmarks/AUDIO_STEP_RESULTS.md]

Times jit(grad) of the audio CNN (BatchNorm in training mode) on 128 clips x 2 augmented
views of 1 s at 16 kHz, median of 5 repeats after a warm-up, for the speech_commands
features (64 bands, 10 ms hop) and the spoken_digits ones (40 bands, 20 ms), at widths
(16, 32, 64) and (8, 16, 32). Prints the load average beside the figures; --write appends
the table (with command, machine, date and load) to a markdown file.
"""
import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax.data import augment
from projnce_jax.models.audio import AudioCNN

BATCH = 128
REPEATS = 5


def step_seconds(views: jax.Array, widths) -> float:
  model = AudioCNN(widths=widths)
  variables = model.init(jax.random.PRNGKey(0), views[:2], train=False)

  def loss(params, x):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return jnp.mean(out ** 2)

  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(variables["params"], views))
  times = []
  for _ in range(REPEATS):
    t0 = time.perf_counter()
    jax.block_until_ready(grad(variables["params"], views))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--write", default=None, help="append the markdown table to this file")
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  waves = jnp.asarray(rng.integers(-3000, 3000, (BATCH, 16000)).astype(np.int16))
  load0 = os.getloadavg()
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
  print(f"load average at start {load0}; {jax.devices()}")
  rows = []
  for name, hop, n_mels in (("speech_commands", 160, 64), ("spoken_digits", 320, 40)):
    v = augment.augment_audio(jax.random.PRNGKey(1), waves, sample_rate=16000, hop=hop,
                              n_mels=n_mels)
    views = v.reshape((2 * BATCH,) + v.shape[2:])
    for widths in ((16, 32, 64), (8, 16, 32)):
      s = step_seconds(views, widths)
      rows.append((name, tuple(views.shape[1:3]), widths, s))
      print(f"{name:16s} features {views.shape[1:3]} widths {widths}: {s:.3f} s a step",
            flush=True)
  load1 = os.getloadavg()
  print(f"load average at end {load1}")
  base = rows[0][3]
  cmd = "python benchmarks/audio_step_bench.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  lines = [f"### {date}", "", f"Command: `{cmd.strip()}`  ",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
           f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}; "
           f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end  ",
           f"jit(grad) of the audio CNN on {BATCH} clips x 2 views, median of {REPEATS} "
           "after a warm-up.", "",
           "| features | (frames, bands) | widths | step (s) | vs speech_commands (16, 32, 64) |",
           "|---|---|---|---|---|"]
  for name, shape, widths, sec in rows:
    lines.append(f"| {name} | {shape} | {widths} | {sec:.3f} | {sec / base:.2f}x |")
  table = "\n".join(lines) + "\n"
  print("\n" + table)
  if args.write:
    new = not os.path.exists(args.write)
    with open(args.write, "a") as f:
      if new:
        f.write("# Audio CNN training step by log-mel resolution and width\n\n"
                "Appended by `benchmarks/audio_step_bench.py --write`; one section per run.\n\n")
      f.write(table + "\n")


if __name__ == "__main__":
  main()

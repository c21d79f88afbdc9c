"""Audio CNN training-step cost by log-mel resolution and width (one CPU/accelerator).

  python benchmarks/audio_step_bench.py

Times jit(grad) of the audio CNN (BatchNorm in training mode) on 128 clips x 2 augmented
views of 1 s at 16 kHz, median of 5 repeats after a warm-up, for the speech_commands
features (64 bands, 10 ms hop) and the spoken_digits ones (40 bands, 20 ms), at widths
(16, 32, 64) and (8, 16, 32). Prints the load average beside the figures.
"""
import os
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


def main() -> None:
  rng = np.random.default_rng(0)
  waves = jnp.asarray(rng.integers(-3000, 3000, (BATCH, 16000)).astype(np.int16))
  print(f"load average at start {os.getloadavg()}; {jax.devices()}")
  for name, hop, n_mels in (("speech_commands", 160, 64), ("spoken_digits", 320, 40)):
    v = augment.augment_audio(jax.random.PRNGKey(1), waves, sample_rate=16000, hop=hop,
                              n_mels=n_mels)
    views = v.reshape((2 * BATCH,) + v.shape[2:])
    for widths in ((16, 32, 64), (8, 16, 32)):
      s = step_seconds(views, widths)
      print(f"{name:16s} features {views.shape[1:3]} widths {widths}: {s:.3f} s a step",
            flush=True)
  print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
  main()

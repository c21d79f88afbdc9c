"""Spoken digits (SYNTHETIC speech from espeak-ng, 10 classes) with the audio CNN on log-mels.

Command:   python main.py --config=configs/spoken_digits.py --workdir=runs/spoken_digits
           variants: a method name (projnce, supcon, infonce, cross_entropy), runlocal
           (two steps, seconds), tune (score on the validation split, for sweeps).
Data:      built offline on first use with espeak-ng (`make data` installs it): 4,000
           training clips (400 held out for validation) and 1,000 test clips, 1 s at
           16 kHz; test voices and variants are never heard in training. This is
           synthesised speech, not human recordings.
Model:     the audio CNN, widths (16, 32, 64), on 40-band log-mels with a 20 ms hop
           (51 x 40 per clip; a ten-word vocabulary needs no finer), a fraction of the
           step cost of speech_commands' 64 bands at 10 ms: the measured tables are in
           benchmarks/AUDIO_STEP_RESULTS.md, appended (with command, date and load) by
           `python benchmarks/audio_step_bench.py --write=benchmarks/AUDIO_STEP_RESULTS.md`.
Hardware:  2 CPU cores (float32) or one accelerator.
Time:      not measured yet; `:runlocal` takes seconds.
Expected:  no figure is typed here: a run writes WORKDIR/results.json and report.md, and
           experiments/paper_comparison's results.md carries the measured tables.
"""
from configs.speech_commands import audio_config
from projnce_jax.train.config import parse_arg


def get_config(arg=None):
  c = audio_config("spoken_digits", arg, num_epochs=30)
  with c.unlocked():
    c.dataset.in_memory = True
    c.model.dtype = "float32"
    if "runlocal" not in parse_arg(arg):
      c.model.widths = (16, 32, 64)
    c.dataset.augment.hop = 320  # 20 ms at 16 kHz; the eval features follow
    c.dataset.augment.n_mels = 40
    c.batch_size = 128
    c.optimizer.base_lr = 1e-3
    c.optimizer.warmup_epochs = 2.0
    c.log_every = 10
    c.checkpoint_every = 200
    c.eval_batch_size = 256
    if "tune" in parse_arg(arg):
      c.eval_split = "validation"
    if "runlocal" in parse_arg(arg):
      c.batch_size = 16
      c.eval_batch_size = 16
      c.log_every = 1
  return c

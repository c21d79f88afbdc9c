"""Speech Commands (12 classes) with an audio CNN over log-mel spectrograms.

Command:   python main.py --config=configs/speech_commands.py --workdir=runs/speech
           variants: a method name (projnce, supcon, infonce, cross_entropy), runlocal.
Data:      prepare once with internet:
           python -m projnce_jax.data.prepare --dataset=speech_commands
Hardware:  1-8 accelerators, bfloat16; batch 512.
Time:      estimated 1-2 hours for 100 epochs on one GPU (not measured here).
Expected:  not run here (no accelerator run yet), so no figure is given; a run writes
           WORKDIR/results.json and report.md.
"""
from projnce_jax.train.config import base_config
from projnce_jax.train.config import parse_arg
from projnce_jax.train.config import select_method
from projnce_jax.train.config import shrink_to_runlocal


def audio_config(dataset: str, arg=None, *, num_epochs: int = 100):
  """Shared recipe for the audio datasets."""
  args = parse_arg(arg)
  c = base_config()
  c.dataset.name = dataset
  c.model.name = "audio_cnn"
  c.model.widths = (64, 128, 256, 512)
  c.model.dtype = "auto"
  c.batch_size = 512
  c.num_epochs = num_epochs
  c.optimizer.name = "adamw"
  c.optimizer.base_lr = 5e-4
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_epochs = 5.0
  c.loss.temperature = 0.1
  c.log_every = 50
  c.checkpoint_every = 1000
  c.linear_probe.epochs = 50
  select_method(c, args)
  if "runlocal" in args:
    c.model.widths = (8, 16)
    shrink_to_runlocal(c)
  c.lock()
  return c


def get_config(arg=None):
  return audio_config("speech_commands", arg)

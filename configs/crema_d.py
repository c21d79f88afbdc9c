"""CREMA-D emotion recognition (6 classes, 3 s clips) with an audio CNN on log-mels.

Command:   python main.py --config=configs/crema_d.py --workdir=runs/crema_d
           variants: a method name (projnce, supcon, infonce, cross_entropy), runlocal.
Data:      prepare once with internet: python -m projnce_jax.data.prepare --dataset=crema_d
Hardware:  1-8 accelerators, bfloat16; batch 512.
Time:      estimated under 1 hour for 200 epochs on one GPU (not measured here).
Expected:  not run here (no accelerator run yet), so no figure is given; a run writes
           WORKDIR/results.json and report.md.
"""
from configs.speech_commands import audio_config


def get_config(arg=None):
  return audio_config("crema_d", arg, num_epochs=200)

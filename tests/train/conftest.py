"""Fixtures for the trainer tests: a digits data dir prepared once, tiny configs."""
import os

import pytest

from projnce_jax.data import sources
from projnce_jax.train.config import apply_overrides
from projnce_jax.train.config import base_config


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """A data dir with the digits dataset prepared once per test session."""
  data_dir = str(tmp_path_factory.mktemp("train_digits_tfds"))
  sources.prepare_offline("digits", data_dir)
  return data_dir


def tiny_digits_config(data_dir, **overrides):
  """A seconds-long digits run on one device: small CNN, few steps, no t-SNE/progress."""
  c = base_config()
  c.dataset.name = "digits"
  c.dataset.data_dir = data_dir
  c.dataset.in_memory = True
  c.dataset.augment.crop_scale = (0.5, 1.0)
  c.model.widths = (16, 32)
  c.model.proj_dim = 32
  c.batch_size = 64
  c.num_steps = 10
  c.num_devices = 1
  c.log_every = 2
  c.checkpoint_every = 5
  c.linear_probe.epochs = 5
  c.report.tsne = False
  c.progress = False
  c.async_checkpoints = True
  c.lock()
  return apply_overrides(c, overrides) if overrides else c


class Interrupt(Exception):
  """Raised by `interrupt_after`: a crash in the middle of training."""


def interrupt_after(k):
  """A trainer hook that raises `Interrupt` after step `k` (its checkpoint, if any, saved)."""
  def hook(step, state, record):
    del state, record
    if step == k:
      raise Interrupt(step)
  return hook


@pytest.fixture
def tiny_config(digits_dir):
  return lambda **kw: tiny_digits_config(digits_dir, **kw)

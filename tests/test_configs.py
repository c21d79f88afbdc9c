"""Every config builds, is locked and documented, and runs two steps with `:runlocal`.

Stock image datasets (CIFAR-10/100) read `tfds.testing.mock_data`; the audio builders
(Speech Commands, CREMA-D) cannot be constructed without TensorFlow, so they read random
in-memory waveforms of the dataset's shape instead. The offline datasets (digits, MNIST-5k)
are prepared into a temporary data dir (spoken digits: a tiny set, skipped without espeak-ng).
"""
import glob
import importlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from projnce_jax import data as pjd
from projnce_jax.data import builders
from projnce_jax.data import sources
from projnce_jax.train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))
OFFLINE = {"digits", "mnist5k", "fashion_mnist_local", "spoken_digits"}


def _load(name):
  return importlib.import_module(f"configs.{name}")


def test_all_expected_configs_exist():
  assert {"demo", "digits", "cifar10", "cifar100", "speech_commands", "crema_d"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_locked_and_documented(name):
  module = _load(name)
  for section in ("Command:", "Hardware:", "Time:", "Expected:"):
    assert section in module.__doc__, (name, section)
  for arg in (None, "runlocal"):
    config = module.get_config(arg)
    assert config.is_locked
    with pytest.raises(AttributeError):
      config.no_such_field = 1
    config.to_json_best_effort()
  local = module.get_config("runlocal")
  assert (local.num_steps or 0) <= 3


@pytest.fixture
def mocked_stock(monkeypatch):
  """tfds mock data for the stock datasets, with the prepared-files check passing."""
  monkeypatch.setattr(sources, "find_prepared_version",
                      lambda name, data_dir: str(tfds.builder_cls(name).VERSION))
  with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def fake_audio_split(name, split, *, data_dir=None, in_memory=False):
  """Random int16 waveforms with the dataset's shape and classes (32 examples)."""
  del data_dir, in_memory
  info = pjd.get_info(name)
  rng = np.random.default_rng(0 if split == "train" else 1)
  return pjd.ArraySource({
      "audio": rng.integers(-3000, 3000, (32,) + tuple(info.shape)).astype(np.int16),
      "label": rng.integers(0, info.num_classes, (32,))})


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_trains_two_steps(name, tmp_path, request, monkeypatch):
  config = _load(name).get_config("runlocal")
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.num_devices = 1
  config.num_steps = 2
  if config.dataset.name == "spoken_digits" and not builders.espeak_available():
    pytest.skip(builders.ESPEAK_MISSING)
  if pjd.get_info(config.dataset.name).kind == "audio" and config.dataset.name not in OFFLINE:
    monkeypatch.setattr(sources, "load_split", fake_audio_split)
  elif config.dataset.name not in OFFLINE:
    request.getfixturevalue("mocked_stock")
  results = run(config, str(tmp_path / "run"))
  rows = results["runs"] if "runs" in results else [results]
  for r in rows:
    assert r["steps"] == 2
    assert 0.0 <= r["linear_probe_accuracy"] <= 1.0
  report = (tmp_path / "run" / "report.md").read_text()
  if config.runs:   # several methods in one invocation: a comparison table
    assert [r["name"] for r in rows] == [spec["name"] for spec in config.runs]
    for r in rows:
      assert f"| {r['name']} |" in report
      assert (tmp_path / "run" / r["name"] / "results.json").exists()

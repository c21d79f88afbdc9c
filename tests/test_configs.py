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
from projnce_jax.train.config import apply_overrides
from projnce_jax.train.inputs import augment_kwargs
from projnce_jax.train.inputs import check_data_config
from projnce_jax.train.trainer import Experiment
from projnce_jax.train.trainer import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))
OFFLINE = {"digits", "mnist5k", "fashion_mnist_local", "spoken_digits"}


def _load(name):
  return importlib.import_module(f"configs.{name}")


def test_all_expected_configs_exist():
  assert {"demo", "digits", "cifar10", "cifar100", "speech_commands", "crema_d",
          "spoken_digits", "fashion_mnist"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_augmentation_settings_resolve_and_digits_are_never_flipped(name):
  config = _load(name).get_config()
  kwargs = augment_kwargs(config)
  kind = pjd.get_info(config.dataset.name).kind
  if config.dataset.name in ("digits", "mnist5k"):
    assert kwargs["flip_prob"] == 0.0
  elif config.dataset.name.startswith("cifar"):
    assert kwargs["flip_prob"] == 0.5      # the CIFAR recipe is unchanged
  if kind == "audio":
    assert "flip_prob" not in kwargs
  assert config.eval_split == "test" and config.dataset.val_fraction == 0.1


def test_flip_default_comes_from_the_dataset_and_audio_rejects_image_settings():
  config = _load("digits").get_config()
  with config.unlocked():
    config.dataset.augment.flip_prob = None
    config.dataset.name = "mnist5k"
  assert augment_kwargs(config)["flip_prob"] == 0.0
  with config.unlocked():
    config.dataset.name = "cifar10"
  assert augment_kwargs(config)["flip_prob"] == 0.5
  audio = _load("speech_commands").get_config()
  with audio.unlocked():
    audio.dataset.augment.flip_prob = 0.5
  with pytest.raises(ValueError, match="flip_prob"):
    augment_kwargs(audio)


def test_bad_split_fields_are_named():
  config = _load("digits").get_config("runlocal")
  for field, value, match in (("eval_split", "train", "eval_split"),
                              ("dataset.val_fraction", 1.0, "val_fraction"),
                              ("dataset.train_subset", 0, "train_subset")):
    bad = apply_overrides(config, _nested(field, value))
    with pytest.raises(ValueError, match=match):
      check_data_config(bad)
  bad = apply_overrides(config, {"eval_split": "validation", "dataset": {"val_fraction": 0.0}})
  with pytest.raises(ValueError, match="val_fraction"):
    check_data_config(bad)


def _nested(field, value):
  out = value
  for part in reversed(field.split(".")):
    out = {part: out}
  return out


def test_eval_split_validation_scores_on_the_held_out_part(tmp_path):
  config = apply_overrides(_load("digits").get_config("runlocal"), {
      "eval_split": "validation", "num_devices": 1,
      "dataset": {"data_dir": str(tmp_path / "tfds"), "label_noise": 0.4}})
  exp = Experiment(config)
  s = exp.data.splits
  assert exp.eval_source is s.validation and len(exp.eval_source) == 144
  assert exp.train_source is s.train and len(exp.train_source) == 1438 - 144
  positions = np.arange(len(s.validation))
  np.testing.assert_array_equal(exp.eval_label_fn(None, positions),
                                s.noisy_labels["validation"])
  # Evaluation (untrained encoder: only the wiring matters) scores on the validation
  # examples, with their noisy labels.
  ev = evaluate(exp, exp.init_state())
  feats = ev["test_features"]
  assert len(feats["label"]) == 144 and 0.0 <= ev["linear_probe_accuracy"] <= 1.0
  np.testing.assert_array_equal(feats["label"], s.noisy_labels["validation"][feats["index"]])


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


# Configs whose encoder and input path another config's run already covers (cifar10: the
# CIFAR ResNet on 32x32 images; spoken_digits: the audio CNN on log-mels with SpecAugment);
# their configs are still loaded and validated by the tests above, their runs are `slow`.
COVERED = {"cifar100": "cifar10", "crema_d": "spoken_digits", "speech_commands": "spoken_digits"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in COVERED
                                  else n for n in CONFIGS])
def test_runlocal_trains_two_steps(name, tmp_path, request, monkeypatch):
  config = _load(name).get_config("runlocal")
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.num_devices = 1
  config.num_steps = 2
  if config.dataset.name == "spoken_digits":
    if not builders.espeak_available():
      pytest.skip(builders.ESPEAK_MISSING)
    monkeypatch.setattr(builders.SpokenDigits, "NUM_TRAIN_PER_CLASS", 3)
    monkeypatch.setattr(builders.SpokenDigits, "NUM_TEST_PER_CLASS", 2)
  if config.dataset.name == "fashion_mnist_local":
    if not builders.fashion_mnist_available():
      pytest.skip(f"apt package {builders.FASHION_MNIST_APT_PACKAGE} not installed "
                  "(`make data`)")
    full = builders.load_fashion_mnist_arrays   # the first 300 images of each split
    monkeypatch.setattr(builders, "load_fashion_mnist_arrays",
                        lambda split: tuple(a[:300] for a in full(split)))
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

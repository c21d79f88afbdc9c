"""Offline tfds builders: counts, shapes, dtypes, stratified splits, reuse."""
import os

import numpy as np
import pytest

from projnce_jax.data import builders
from projnce_jax.data import sources


def _check_split(src, info, n):
  assert len(src) == n
  ex = src[0]
  assert set(ex) == {"image", "label"}
  assert ex["image"].shape == info.shape and ex["image"].dtype == np.uint8
  assert isinstance(ex["label"], int) and 0 <= ex["label"] < info.num_classes


def _check_stratified(train_labels, test_labels, num_classes, test_fraction):
  for c in range(num_classes):
    n_train = int((train_labels == c).sum())
    n_test = int((test_labels == c).sum())
    assert n_test == round(test_fraction * (n_train + n_test)), c


def test_digits(digits_dir):
  info = sources.get_info("digits")
  train = sources.load_split("digits", "train", data_dir=digits_dir)
  test = sources.load_split("digits", "test", data_dir=digits_dir)
  _check_split(train, info, info.num_train)
  _check_split(test, info, info.num_test)
  assert info.num_train + info.num_test == 1797
  y_train, y_test = sources.source_labels(train), sources.source_labels(test)
  _check_stratified(y_train, y_test, 10, 0.2)
  # Pixels use the full uint8 range (0..16 scaled to 0..255).
  images = np.stack([train[i]["image"] for i in range(200)])
  assert images.max() == 255 and images.min() == 0


def test_digits_pixels_match_sklearn(digits_dir):
  ref_images, ref_labels = builders.load_digits_arrays()
  train_idx, _ = builders.stratified_split(ref_labels, 0.2)
  ref = {(ref_images[i].tobytes(), int(ref_labels[i])) for i in train_idx}
  train = sources.load_split("digits", "train", data_dir=digits_dir)
  got = {(train[i]["image"].tobytes(), train[i]["label"]) for i in range(len(train))}
  assert got == ref


def test_mnist5k(tmp_path):
  info = sources.get_info("mnist5k")
  train = sources.load_split("mnist5k", "train", data_dir=tmp_path)
  test = sources.load_split("mnist5k", "test", data_dir=tmp_path)
  _check_split(train, info, 4000)
  _check_split(test, info, 1000)
  y_train, y_test = sources.source_labels(train), sources.source_labels(test)
  np.testing.assert_array_equal(np.bincount(y_train), [400] * 10)
  np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)


def test_prepared_once_and_env_var(tmp_path, monkeypatch, capfd):
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "env_dir"))
  sources.load_split("mnist5k", "test")
  printed = capfd.readouterr().out
  assert "Preparing offline dataset mnist5k locally (no download)" in printed
  assert "Download" not in printed
  version_dir = tmp_path / "env_dir" / "mnist5k" / "1.0.0"
  info_file = version_dir / "dataset_info.json"
  assert info_file.exists()
  stamp = os.stat(info_file).st_mtime_ns
  src = sources.load_split("mnist5k", "train")
  assert len(src) == 4000
  assert os.stat(info_file).st_mtime_ns == stamp  # Reused, not rebuilt.
  assert sources.resolve_data_dir() == str(tmp_path / "env_dir")
  assert sources.resolve_data_dir(tmp_path / "x") == str(tmp_path / "x")


def test_fashion_mnist_local(fashion_dir):
  info = sources.get_info("fashion_mnist_local")
  train = sources.load_split("fashion_mnist_local", "train", data_dir=fashion_dir)
  test = sources.load_split("fashion_mnist_local", "test", data_dir=fashion_dir)
  _check_split(train, info, 60000)
  _check_split(test, info, 10000)
  np.testing.assert_array_equal(np.bincount(sources.source_labels(test)), [1000] * 10)


def test_fashion_mnist_missing_names_apt_package(tmp_path, monkeypatch):
  monkeypatch.setenv("PROJNCE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    sources.load_split("fashion_mnist_local", "train", data_dir=tmp_path / "tfds")


def test_get_info_table():
  for name in sources.list_datasets():
    info = sources.get_info(name)
    assert info.name == name and info.kind in ("image", "audio")
    assert (info.sample_rate is not None) == (info.kind == "audio")
    assert info.num_train > 0 and info.num_test > 0
  assert sources.get_info("speech_commands").shape == (16000,)
  with pytest.raises(ValueError, match="'nope'"):
    sources.get_info("nope")


def test_stratified_split_rejects_bad_fraction():
  with pytest.raises(ValueError, match="1.5"):
    builders.stratified_split(np.zeros(4, int), 1.5)


def test_in_memory_source_matches_records(digits_dir):
  records = sources.load_split("digits", "test", data_dir=digits_dir)
  memory = sources.load_split("digits", "test", data_dir=digits_dir, in_memory=True)
  assert len(memory) == len(records)
  for i in (0, 17, len(records) - 1):
    np.testing.assert_array_equal(memory[i]["image"], records[i]["image"])
    assert memory[i]["label"] == records[i]["label"]

"""Stock tfds datasets: fast error when not prepared, read path with mock data."""
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from projnce_jax.data import pipeline
from projnce_jax.data import sources

STOCK = ["cifar10", "cifar100", "speech_commands", "crema_d", "food101", "caltech101"]


@pytest.mark.parametrize("name", STOCK)
def test_not_prepared_fails_fast_with_instructions(name, tmp_path):
  data_dir = str(tmp_path / "empty")
  start = time.perf_counter()
  with pytest.raises(sources.DatasetNotPreparedError) as err:
    sources.load_split(name, "train", data_dir=data_dir)
  elapsed = time.perf_counter() - start
  assert elapsed < 5.0, elapsed
  message = str(err.value)
  assert "pip install '.[tf]'" in message
  assert f"python -m projnce_jax.data.prepare --dataset={name}" in message
  assert f"--data_dir={data_dir}" in message
  assert not os.path.exists(os.path.join(data_dir, name, "downloads"))


def test_find_prepared_version_needs_array_record(tmp_path):
  version_dir = tmp_path / "cifar10" / "3.0.2"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text("{}")
  assert sources.find_prepared_version("cifar10", str(tmp_path)) is None
  (version_dir / "cifar10-train.array_record-00000-of-00001").write_bytes(b"")
  assert sources.find_prepared_version("cifar10", str(tmp_path)) == "3.0.2"
  newer = tmp_path / "cifar10" / "3.0.10"
  newer.mkdir()
  (newer / "dataset_info.json").write_text("{}")
  (newer / "cifar10-test.array_record-00000-of-00001").write_bytes(b"")
  assert sources.find_prepared_version("cifar10", str(tmp_path)) == "3.0.10"


@pytest.fixture
def mocked_tfds(monkeypatch):
  """tfds.testing.mock_data with the prepared-files check passing."""
  monkeypatch.setattr(
      sources, "find_prepared_version",
      lambda name, data_dir: str(tfds.builder_cls(name).VERSION),
  )
  with tfds.testing.mock_data(
      num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    yield


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "caltech101"])
def test_stock_images_through_mock_data(name, mocked_tfds, tmp_path):
  info = sources.get_info(name)
  src = sources.load_split(name, "train", data_dir=tmp_path)
  assert len(src) == 24
  ex = src[5]
  assert set(ex) == {"image", "label"}
  assert ex["image"].shape == info.shape and ex["image"].dtype == np.uint8
  assert isinstance(ex["label"], int) and 0 <= ex["label"] < info.num_classes
  it = pipeline.make_loader(src, batch_size=8, seed=0, num_epochs=1)
  batches = list(it)
  assert len(batches) == 3
  assert batches[0]["image"].shape == (8, *info.shape)
  assert sorted(np.concatenate([b["index"] for b in batches])) == list(range(24))


def test_food101_test_split_is_validation(mocked_tfds, tmp_path):
  src = sources.load_split("food101", "test", data_dir=tmp_path)
  assert src[0]["image"].shape == (224, 224, 3)


def test_fit_length_and_resize():
  wave = np.arange(10, dtype=np.int64)
  np.testing.assert_array_equal(sources.fit_length(wave, 4), [3, 4, 5, 6])
  padded = sources.fit_length(wave, 12)
  assert padded.dtype == np.int16 and padded.shape == (12,)
  np.testing.assert_array_equal(padded[10:], [0, 0])
  image = np.zeros((40, 60, 3), np.uint8)
  assert sources.resize_center_crop(image, (32, 32)).shape == (32, 32, 3)
  gray = np.zeros((20, 10, 1), np.uint8)
  assert sources.resize_center_crop(gray, (8, 8)).shape == (8, 8, 1)


def test_prepare_command_offline_and_missing_tensorflow(tmp_path, capsys):
  from projnce_jax.data import prepare  # pylint: disable=g-import-not-at-top

  assert prepare.main(["--dataset=digits", f"--data_dir={tmp_path}"]) == 0
  assert "digits train: 1438 examples" in capsys.readouterr().out
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ModuleNotFoundError, match=r"pip install '\.\[tf\]'"):
      prepare.prepare("cifar10", str(tmp_path))

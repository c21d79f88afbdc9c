"""Dataset metadata and random-access sources (TFDS array_record, no TensorFlow).

``load_split(name, split)`` returns an object with ``len()`` and ``[i]`` giving
one example as a dict of numpy values:

* images: ``{"image": uint8 [H, W, C], "label": int}``
* audio:  ``{"audio": int16 [T], "label": int}`` (cropped or zero-padded to the
  fixed length ``get_info(name).shape[0]``).

Offline datasets (``digits``, ``mnist5k``, ``fashion_mnist_local``,
``spoken_digits``) are prepared into the data directory on first use. Stock TFDS datasets (``cifar10``,
``cifar100``, ``speech_commands``, ``crema_d``, ``food101``, ``caltech101``) must
have been prepared beforehand, in the array_record format, on a machine with
internet access::

  pip install '.[tf]'
  python -m projnce_jax.data.prepare --dataset=cifar10 --data_dir=DIR

Without prepared files ``load_split`` raises ``DatasetNotPreparedError`` at
once (it never starts a download, which would hang without network).

The data directory is, in order: the ``data_dir`` argument, the environment
variable ``PROJNCE_DATA_DIR``, ``~/.cache/projnce_jax/tensorflow_datasets``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from projnce_jax.data import builders

DATA_DIR_ENV = "PROJNCE_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "projnce_jax", "tensorflow_datasets")
_READ_KWARGS = {"file_format": "array_record"}


class DatasetNotPreparedError(FileNotFoundError):
  """A stock TFDS dataset has no prepared array_record files in the data dir."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: dataset name as accepted by ``load_split``.
    kind: "image" or "audio".
    num_classes: number of labels M (labels are 0..M-1).
    shape: shape of one example, e.g. (28, 28, 1) or (16000,) for audio.
    num_train: number of examples in the "train" split.
    num_test: number of examples in the "test" split.
    sample_rate: audio sample rate in Hz; None for images.
    flip_prob: the default horizontal-flip probability of the image augmentation
      (0 for digits: a mirrored digit is not a digit); None for audio.
  """

  name: str
  kind: str
  num_classes: int
  shape: tuple[int, ...]
  num_train: int
  num_test: int
  sample_rate: int | None = None
  flip_prob: float | None = 0.5

  def __post_init__(self):
    if self.kind == "audio":
      object.__setattr__(self, "flip_prob", None)


_INFOS = {
    "digits": DatasetInfo("digits", "image", 10, (8, 8, 1), 1438, 359, flip_prob=0.0),
    "mnist5k": DatasetInfo("mnist5k", "image", 10, (28, 28, 1), 4000, 1000,
                           flip_prob=0.0),
    "fashion_mnist_local": DatasetInfo(
        "fashion_mnist_local", "image", 10, (28, 28, 1), 60000, 10000
    ),
    "cifar10": DatasetInfo("cifar10", "image", 10, (32, 32, 3), 50000, 10000),
    "cifar100": DatasetInfo("cifar100", "image", 100, (32, 32, 3), 50000, 10000),
    # Variable-size images, resized (shorter side) and centre-cropped.
    "food101": DatasetInfo("food101", "image", 101, (224, 224, 3), 75750, 25250),
    "caltech101": DatasetInfo(
        "caltech101", "image", 102, (224, 224, 3), 3060, 6084
    ),
    "speech_commands": DatasetInfo(
        "speech_commands", "audio", 12, (16000,), 85511, 4890, 16000
    ),
    # SYNTHETIC speech from espeak-ng (builders.SpokenDigits), 1 s clips.
    "spoken_digits": DatasetInfo(
        "spoken_digits", "audio", 10, (16000,), 4000, 1000, 16000
    ),
    # Clips of 1-5 s, centre-cropped or zero-padded to 3 s.
    "crema_d": DatasetInfo("crema_d", "audio", 6, (48000,), 5144, 1556, 16000),
}

# Split names of our API -> TFDS split names, where they differ.
_SPLIT_ALIASES = {"food101": {"test": "validation"}}


def list_datasets() -> list[str]:
  """Names accepted by ``get_info`` and ``load_split``."""
  return sorted(_INFOS)


def is_offline(name: str) -> bool:
  """Whether ``name`` is built locally (no download needed)."""
  return name in builders.OFFLINE_BUILDERS


def get_info(name: str) -> DatasetInfo:
  """Returns the static ``DatasetInfo`` of ``name`` (nothing is prepared).

  Raises:
    ValueError: unknown dataset name.
  """
  try:
    return _INFOS[name]
  except KeyError:
    raise ValueError(
        f"Unknown dataset {name!r}; known: {', '.join(list_datasets())}."
    ) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
  """Data directory: argument, else $PROJNCE_DATA_DIR, else the user cache."""
  if data_dir is None:
    data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))


def prepare_command(name: str, data_dir: str) -> str:
  """Shell commands that prepare stock dataset ``name`` into ``data_dir``."""
  return (
      "pip install '.[tf]' && python -m projnce_jax.data.prepare "
      f"--dataset={name} --data_dir={data_dir}"
  )


def _version_key(version: str) -> tuple[int, ...]:
  try:
    return tuple(int(p) for p in version.split("."))
  except ValueError:
    return (-1,)


def find_prepared_version(name: str, data_dir: str) -> str | None:
  """Newest version of ``name`` prepared as array_record in ``data_dir``.

  Looks only at the file system (``DIR/name/VERSION/dataset_info.json`` next to
  ``*.array_record-*`` shards), so it is fast and never touches the network.
  """
  found = []
  for info_path in glob.glob(os.path.join(data_dir, name, "*", "dataset_info.json")):
    version_dir = os.path.dirname(info_path)
    if glob.glob(os.path.join(version_dir, f"{name}-*.array_record*")):
      found.append(os.path.basename(version_dir))
  return max(found, key=_version_key) if found else None


def prepare_offline(name: str, data_dir: str | None = None) -> str:
  """Builds offline dataset ``name`` into the data dir unless already there.

  Returns:
    The data directory used.
  """
  if not is_offline(name):
    raise ValueError(
        f"{name!r} is not an offline dataset; offline: "
        f"{', '.join(sorted(builders.OFFLINE_BUILDERS))}."
    )
  data_dir = resolve_data_dir(data_dir)
  builder = builders.OFFLINE_BUILDERS[name](data_dir=data_dir, **_READ_KWARGS)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")
  return data_dir


class RecordSource:
  """Random-access view of one split, yielding our example dicts.

  Wraps a ``tfds`` array_record data source: drops extra features, converts
  labels to ``int``, and gives every example of a split the same shape (audio
  cropped/padded, variable-size images resized) so examples can be batched.
  """

  def __init__(self, data_source: Sequence[dict[str, Any]], info: DatasetInfo,
               split: str):
    self._source = data_source
    self.info = info
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"RecordSource({self.info.name!r}, split={self.split!r}, n={len(self)})"

  def _convert(self, record: dict[str, Any]) -> dict[str, Any]:
    label = int(record["label"])
    if self.info.kind == "audio":
      return {"audio": fit_length(record["audio"], self.info.shape[0]),
              "label": label}
    image = np.asarray(record["image"])
    if image.ndim == 2:
      image = image[..., None]
    if image.shape != self.info.shape:
      image = resize_center_crop(image, self.info.shape[:2])
    return {"image": image, "label": label}

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._convert(self._source[int(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    records = None
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is not None:
      try:
        records = getitems(indices)
      except TypeError:
        # tfds.testing.mock_data installs an unbound __getitems__.
        records = None
    if records is None:
      records = [self._source[i] for i in indices]
    return [self._convert(r) for r in records]


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
  """Centre-crops or right-zero-pads a waveform [T] to [length] (int16 kept)."""
  waveform = np.asarray(waveform)
  if waveform.ndim != 1:
    raise ValueError(f"Expected a mono waveform [T], got shape {waveform.shape}.")
  if np.issubdtype(waveform.dtype, np.integer):
    waveform = waveform.astype(np.int16)
  else:
    waveform = waveform.astype(np.float32)
  t = waveform.shape[0]
  if t >= length:
    start = (t - length) // 2
    return waveform[start : start + length]
  return np.pad(waveform, (0, length - t))


def resize_center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes the shorter side to fit ``size`` then centre-crops (uint8 kept)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  h, w = size
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  scale = max(h / image.shape[0], w / image.shape[1])
  new_w = max(w, int(round(image.shape[1] * scale)))
  new_h = max(h, int(round(image.shape[0] * scale)))
  pil = pil.resize((new_w, new_h), Image.BILINEAR)
  left, top = (new_w - w) // 2, (new_h - h) // 2
  out = np.asarray(pil.crop((left, top, left + w, top + h)), dtype=np.uint8)
  return out[..., None] if squeeze else out


def _tfds_data_source(name: str, split: str, data_dir: str, version: str | None):
  kwargs = dict(_READ_KWARGS)
  if version is not None:
    # An explicit version makes TFDS read the prepared files' metadata instead
    # of constructing the builder class (some need TensorFlow to construct).
    kwargs["version"] = version
  return tfds.data_source(
      name, split=split, data_dir=data_dir, download=False, builder_kwargs=kwargs
  )


def load_split(name: str, split: str, *, data_dir: str | None = None,
               in_memory: bool = False):
  """Returns a random-access source for one split of dataset ``name``.

  Args:
    name: a name from ``list_datasets()``.
    split: "train" or "test" (TFDS split names such as "validation" also work).
    data_dir: TFDS data directory; see the module docstring for the default.
    in_memory: read the whole split once into numpy arrays (an
      ``ArraySource``); much faster random access for small datasets.

  Returns:
    A ``RecordSource`` (or ``ArraySource``): ``len(src)``, ``src[i]`` -> dict
    of numpy values.

  Raises:
    ValueError: unknown dataset.
    DatasetNotPreparedError: stock dataset without prepared array_record files.
    FileNotFoundError: ``fashion_mnist_local`` without its Debian package.
  """
  info = get_info(name)
  data_dir = resolve_data_dir(data_dir)
  tfds_split = _SPLIT_ALIASES.get(name, {}).get(split, split)
  if is_offline(name):
    prepare_offline(name, data_dir)
    version = None
  else:
    version = find_prepared_version(name, data_dir)
    if version is None:
      raise DatasetNotPreparedError(
          f"Dataset {name!r} is not prepared in {data_dir} (no array_record "
          "files; downloads are not attempted at run time). Prepare it once on "
          f"a machine with internet access: {prepare_command(name, data_dir)}"
      )
  source = RecordSource(_tfds_data_source(name, tfds_split, data_dir, version),
                        info, split)
  return to_memory(source) if in_memory else source


def to_memory(source: Sequence[dict[str, Any]]):
  """Reads every example of ``source`` into an in-memory ``ArraySource``."""
  from projnce_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  getitems = getattr(source, "__getitems__", None)
  idx = list(range(len(source)))
  records = getitems(idx) if getitems else [source[i] for i in idx]
  return pipeline.ArraySource(
      {k: np.stack([r[k] for r in records]) for k in records[0]})


def source_labels(source: Sequence[dict[str, Any]]) -> np.ndarray:
  """All labels of a source, int64 [N] (reads every example once)."""
  getitems = getattr(source, "__getitems__", None)
  labels = np.empty(len(source), np.int64)
  chunk = 4096
  for start in range(0, len(source), chunk):
    idx = list(range(start, min(start + chunk, len(source))))
    records = getitems(idx) if getitems else [source[i] for i in idx]
    labels[start : start + len(idx)] = [r["label"] for r in records]
  return labels

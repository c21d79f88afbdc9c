"""Data: offline tfds builders, array_record sources, grain loader, augmentation.

Example::

  from projnce_jax import data
  info = data.get_info("mnist5k")
  train = data.load_split("mnist5k", "train")          # prepared on first use
  it = data.make_loader(train, batch_size=256, seed=0)
  batch = next(it)                                      # image uint8 [256, 28, 28, 1]
  s = data.make_splits("mnist5k", val_fraction=0.1)     # train 3,600 / validation 400 / test
  views = data.augment_images(key, batch["image"])      # float32 [256, 2, 28, 28, 1]
"""
from projnce_jax._extras import require as _require

_require("projnce_jax.data", "tensorflow_datasets", "grain", "array_record", "dm_pix", "sklearn")

from projnce_jax.data.augment import audio_features
from projnce_jax.data.augment import augment_audio
from projnce_jax.data.augment import augment_images
from projnce_jax.data.augment import log_mel
from projnce_jax.data.augment import mel_filterbank
from projnce_jax.data.augment import normalize_images
from projnce_jax.data.augment import sample_crop_params
from projnce_jax.data.noise import apply_label_noise
from projnce_jax.data.pipeline import ArraySource
from projnce_jax.data.pipeline import BatchIterator
from projnce_jax.data.pipeline import make_loader
from projnce_jax.data.pipeline import noisy_label_fn
from projnce_jax.data.sources import DatasetInfo
from projnce_jax.data.sources import DatasetNotPreparedError
from projnce_jax.data.sources import get_info
from projnce_jax.data.sources import list_datasets
from projnce_jax.data.sources import load_split
from projnce_jax.data.sources import prepare_offline
from projnce_jax.data.sources import resolve_data_dir
from projnce_jax.data.sources import source_labels
from projnce_jax.data.sources import to_memory
from projnce_jax.data.splits import Splits
from projnce_jax.data.splits import make_splits

__all__ = [
    "ArraySource",
    "BatchIterator",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "Splits",
    "apply_label_noise",
    "audio_features",
    "augment_audio",
    "augment_images",
    "get_info",
    "list_datasets",
    "load_split",
    "log_mel",
    "make_loader",
    "make_splits",
    "prepare_offline",
    "mel_filterbank",
    "noisy_label_fn",
    "normalize_images",
    "resolve_data_dir",
    "sample_crop_params",
    "source_labels",
    "to_memory",
]

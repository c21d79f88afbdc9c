"""Inputs of a run: its data splits, augmented views for training, clean inputs for evaluation.

`make_data(config)` builds the train / validation / test splits (`projnce_jax.data.splits`)
and says which split evaluation scores on (`config.eval_split`); `augment_kwargs(config)`
resolves the augmentation settings (dataset defaults such as no flip for digits).

Augmentation keys are per example: key_e = fold_in(step_key, index_e), with index_e the
example's position in the dataset. A batch therefore gets the same views whether it is
processed on one device or split across many.
"""
import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections

from projnce_jax import data as pjd
from projnce_jax.data import splits as splits_lib

Batch = Dict[str, jax.Array]
EVAL_SPLITS = ("test", "validation")
# Keyword arguments that only the image augmentation takes.
IMAGE_ONLY_AUGMENT = ("flip_prob", "brightness", "contrast", "saturation", "hue",
                      "jitter_prob", "gray_prob", "crop_scale", "image_size", "mean", "std")


def augment_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The augmentation keyword arguments of `config.dataset.augment`, defaults resolved.

  Unset (None) fields are dropped; an image dataset without `flip_prob` gets its
  dataset's default (`DatasetInfo.flip_prob`: 0 for digits and mnist5k, 0.5 otherwise).

  Raises:
    ValueError: an image-only setting (flip, jitter, crop, ...) on an audio dataset.
  """
  info = pjd.get_info(config.dataset.name)
  kwargs = {k: v for k, v in config.dataset.augment.to_dict().items() if v is not None}
  if info.kind == "image":
    kwargs.setdefault("flip_prob", info.flip_prob)
  else:
    bad = sorted(set(kwargs) & set(IMAGE_ONLY_AUGMENT))
    if bad:
      raise ValueError(f"config field(s) {['dataset.augment.' + k for k in bad]} apply to "
                       f"images only; {info.name!r} is an audio dataset")
  return kwargs


def check_data_config(config: ml_collections.ConfigDict) -> None:
  """Checks the split fields (`eval_split`, `dataset.val_fraction`, `train_subset`).

  Raises:
    ValueError, TypeError: naming the field.
  """
  if config.eval_split not in EVAL_SPLITS:
    raise ValueError(f"config field 'eval_split' must be one of {EVAL_SPLITS}, got "
                     f"{config.eval_split!r}")
  vf = config.dataset.val_fraction
  if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
    raise ValueError(f"config field 'dataset.val_fraction' must be a float in [0, 1), "
                     f"got {vf!r}")
  if config.eval_split == "validation" and vf == 0:
    raise ValueError("config field 'eval_split' is 'validation' but "
                     "'dataset.val_fraction' is 0: no validation split is held out")
  ts = config.dataset.train_subset
  if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 1):
    raise ValueError(f"config field 'dataset.train_subset' must be None or an int >= 1, "
                     f"got {ts!r}")


@dataclasses.dataclass
class RunData:
  """The data of one run.

  Attributes:
    splits: the dataset's `Splits` (train / validation / test, clean and noisy labels).
    eval_split: "test" or "validation", the split evaluation scores on.
    train: training source; `train_label_fn` gives its (possibly noisy) labels.
    eval: the evaluation source (`splits.source(eval_split)`); `eval_label_fn` gives the
      labels it is scored on (noisy for the validation split under label noise, so that
      tuning never sees a clean label; None for the test split, always clean).
    clean_fraction: fraction of training labels that are correct.
  """

  splits: splits_lib.Splits
  eval_split: str

  @property
  def train(self):
    return self.splits.train

  @property
  def train_label_fn(self):
    return self.splits.label_fn("train")

  @property
  def eval(self):
    return self.splits.source(self.eval_split)

  @property
  def eval_label_fn(self):
    return self.splits.label_fn(self.eval_split)

  @property
  def clean_fraction(self) -> float:
    return self.splits.clean_fraction


def make_data(config: ml_collections.ConfigDict) -> RunData:
  """Loads `config.dataset` and builds its splits; see `projnce_jax.data.splits`.

  Label noise is seeded by `config.seed`, the validation hold-out and training subset by
  `config.dataset.split_seed`.
  """
  check_data_config(config)
  d = config.dataset
  splits = splits_lib.make_splits(
      d.name, val_fraction=d.val_fraction, split_seed=d.split_seed,
      train_subset=d.train_subset, label_noise=d.label_noise,
      label_noise_kind=d.label_noise_kind, noise_seed=config.seed,
      data_dir=d.data_dir, in_memory=d.in_memory)
  return RunData(splits=splits, eval_split=config.eval_split)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """One key per example: index [b] int -> [b] keys (fold_in of the dataset index)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index.astype(jnp.uint32))


def input_key(kind: str) -> str:
  """The batch field holding raw inputs: "image" or "audio"."""
  if kind not in ("image", "audio"):
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'image' or 'audio'")
  return kind


def make_train_inputs(kind: str, *, num_views: int, sample_rate: int = 16000,
                      augment_kwargs: Optional[Dict[str, Any]] = None
                      ) -> Callable[[jax.Array, Batch], jax.Array]:
  """(key, batch) -> [b * num_views, ...] float32 model inputs (views of one example adjacent).

  Images become augmented [h, w, c] views; audio becomes augmented log-mel views
  [frames, mels, 1].

  Args:
    kind: "image" (batch["image"], uint8 [b, h, w, c]) or "audio" (batch["audio"], float
      [b, t]).
    num_views: augmented views per example (V).
    sample_rate: audio sample rate.
    augment_kwargs: extra keyword arguments for the augmentation function (see
      `augment_kwargs(config)`).
  """
  augment_kwargs = dict(augment_kwargs or {})
  field = input_key(kind)

  def one(key, x):
    if kind == "image":
      return pjd.augment_images(key, x[None], num_views=num_views, **augment_kwargs)[0]
    return pjd.augment_audio(key, x[None], num_views=num_views, sample_rate=sample_rate,
                             **augment_kwargs)[0]

  def fn(key: jax.Array, batch: Batch) -> jax.Array:
    x = batch[field]
    views = jax.vmap(one)(example_keys(key, batch["index"]), x)  # [b, V, ...]
    return views.reshape((-1,) + views.shape[2:]).astype(jnp.float32)  # [b * V, ...]

  return fn


# The log-mel settings among the audio augmentation's keyword arguments: evaluation
# features use the training views' ones.
AUDIO_FEATURE_KEYS = ("n_fft", "hop", "n_mels")


def make_eval_inputs(kind: str, *, sample_rate: int = 16000,
                     augment_kwargs: Optional[Dict[str, Any]] = None
                     ) -> Callable[[Batch], jax.Array]:
  """batch -> [b, ...] float32 model inputs without augmentation.

  Args:
    kind: "image" or "audio".
    sample_rate: audio sample rate.
    augment_kwargs: the training augmentation's keyword arguments; audio features take
      its `AUDIO_FEATURE_KEYS` (n_fft, hop, n_mels), so that evaluation sees the
      spectrogram the encoder was trained on.
  """
  field = input_key(kind)
  features = {k: v for k, v in (augment_kwargs or {}).items() if k in AUDIO_FEATURE_KEYS}

  def fn(batch: Batch) -> jax.Array:
    x = batch[field]
    if kind == "image":
      return pjd.normalize_images(x).astype(jnp.float32)
    return pjd.audio_features(x, sample_rate=sample_rate, **features).astype(jnp.float32)

  return fn

"""Train / validation / test splits of one dataset, label noise and training subsets.

Every dataset gets a validation split: a stratified, seeded fraction of its *training*
split, held out before anything trains, so that hyper-parameters are chosen without
looking at the test split. The test split is never touched here.

Order of operations (all deterministic):

1. Label noise (when ``label_noise > 0``) is drawn once for the whole original training
   split with ``noise_seed``, so an example's noisy label does not depend on the
   validation fraction or the subset.
2. ``val_fraction`` of the training split, stratified by the *clean* class and seeded with
   ``split_seed``, becomes the validation split. Its labels are noisy when noise is on
   (a noisy-label practitioner has no clean validation labels); the clean ones are kept.
3. ``train_subset`` (optional) keeps that many training examples, stratified by the clean
   class, seeded with ``split_seed``.

Example::

  s = make_splits("mnist5k", val_fraction=0.1, label_noise=0.4, noise_seed=0)
  len(s.train), len(s.validation), len(s.test)     # 3600, 400, 1000
  loader = make_loader(s.train, batch_size=256, seed=0,
                       label_fn=s.label_fn("train"))  # noisy training labels
  s.clean_labels["validation"]                       # int64 [400]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from projnce_jax.data import noise as noise_lib
from projnce_jax.data import pipeline
from projnce_jax.data import sources

SPLITS = ("train", "validation", "test")


class IndexedSource:
  """Random-access view of ``source`` restricted to ``indices`` (in that order).

  Args:
    source: ``len()``, ``[i]`` (and optionally ``__getitems__``).
    indices: int [n] positions in ``source``.
  """

  def __init__(self, source: Sequence[dict[str, Any]], indices: np.ndarray):
    self._source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __repr__(self) -> str:
    return f"IndexedSource({self._source!r}, n={len(self)})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[int(self.indices[int(index)])]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    mapped = [int(self.indices[int(i)]) for i in indices]
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is not None:
      return getitems(mapped)
    return [self._source[i] for i in mapped]


def subset(source: Sequence[dict[str, Any]], indices: np.ndarray):
  """``source`` restricted to ``indices``: a sliced ``ArraySource`` or an ``IndexedSource``."""
  indices = np.asarray(indices, np.int64)
  if isinstance(source, pipeline.ArraySource):
    return pipeline.ArraySource({k: v[indices] for k, v in source.arrays.items()})
  return IndexedSource(source, indices)


def _check_fraction(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise TypeError(f"{name} must be a float in [0, 1), got {value!r}.")
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value}.")
  return float(value)


def stratified_choice(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """``size`` positions of ``labels`` whose class proportions match the whole.

  Each class c gets ``size * n_c / n`` examples rounded by the largest-remainder rule (so
  the counts add up to ``size`` exactly), drawn uniformly within the class.

  Args:
    labels: int [n] class labels.
    size: how many positions to draw, 0 <= size <= n.
    seed: seed of the numpy generator.

  Returns:
    int64 [size] positions, sorted.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise TypeError(f"size must be an int, got {size!r}.")
  if not 0 <= size <= n:
    raise ValueError(f"size must be in [0, {n}], got {size}.")
  classes, counts = np.unique(labels, return_counts=True)
  exact = counts * (size / n) if n else counts * 0.0
  take = np.floor(exact).astype(np.int64)
  remainder = exact - take
  # Largest remainders first; ties broken by class order (deterministic).
  for j in np.argsort(-remainder, kind="stable")[: size - int(take.sum())]:
    take[j] += 1
  rng = np.random.default_rng(seed)
  chosen = []
  for c, k in zip(classes, take):
    idx = np.flatnonzero(labels == c)
    chosen.append(idx[rng.permutation(len(idx))[:k]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def holdout_split(labels: np.ndarray, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Stratified, seeded (keep, held_out) positions; held out: round(fraction * n), >= 1.

  Args:
    labels: int [n] class labels.
    fraction: in [0, 1); 0 holds out nothing.
    seed: seed of the numpy generator.

  Returns:
    (keep, held_out): int64 sorted positions, disjoint, together 0..n-1.
  """
  fraction = _check_fraction("val_fraction", fraction)
  n = len(labels)
  size = 0 if fraction == 0.0 else min(max(1, int(round(fraction * n))), n - 1)
  held_out = stratified_choice(labels, size, seed)
  keep = np.setdiff1d(np.arange(n), held_out)
  return keep, held_out


@dataclasses.dataclass
class Splits:
  """The three splits of a dataset with their clean and (possibly) noisy labels.

  Attributes:
    name: dataset name.
    train: source of the training examples (validation held out, subset applied).
    validation: source of the validation examples, or None when ``val_fraction == 0``.
    test: source of the test split (never used for any choice).
    clean_labels: {split: int64 [n]} the true labels, by position in the split's source.
    noisy_labels: {split: int64 [n]} the labels training and validation use: noisy when
      label noise is on (train and validation), else equal to ``clean_labels``; the test
      split's are always clean.
    train_positions, validation_positions: int64 positions of the examples in the
      dataset's original "train" split (disjoint).
    label_noise: the noise rate applied.
  """

  name: str
  train: Any
  validation: Any
  test: Any
  clean_labels: dict[str, np.ndarray]
  noisy_labels: dict[str, np.ndarray]
  train_positions: np.ndarray
  validation_positions: np.ndarray
  label_noise: float = 0.0

  def source(self, split: str):
    """The source of ``split`` ("train", "validation" or "test")."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    src = getattr(self, split)
    if src is None:
      raise ValueError(
          f"dataset {self.name!r} has no {split!r} split: dataset.val_fraction is 0; "
          "set it > 0 to hold out a validation split.")
    return src

  def label_fn(self, split: str):
    """``label_fn`` for ``make_loader`` giving ``split``'s noisy labels, or None (no noise)."""
    self.source(split)
    if self.label_noise == 0.0 or split == "test":
      return None
    return pipeline.noisy_label_fn(self.noisy_labels[split])

  @property
  def clean_fraction(self) -> float:
    """Fraction of training examples whose (possibly noisy) label is correct."""
    if not len(self.clean_labels["train"]):
      return 1.0
    return float(np.mean(self.clean_labels["train"] == self.noisy_labels["train"]))


def make_splits(name: str, *, val_fraction: float = 0.1, split_seed: int = 0,
                train_subset: int | None = None, label_noise: float = 0.0,
                label_noise_kind: str = "symmetric", noise_seed: int = 0,
                data_dir: str | None = None, in_memory: bool = False) -> Splits:
  """Loads ``name`` and builds its train / validation / test splits (see the module doc).

  Args:
    name: a name from ``list_datasets()``.
    val_fraction: fraction of the training split held out for validation, in [0, 1).
    split_seed: seed of the validation hold-out and of the training subset.
    train_subset: keep this many training examples (stratified), or None for all.
    label_noise: label-noise rate in [0, 1) for the training and validation labels.
    label_noise_kind: "symmetric" or "asymmetric".
    noise_seed: seed of the label noise.
    data_dir: as for ``load_split``.
    in_memory: as for ``load_split``.

  Returns:
    A ``Splits``.

  Raises:
    ValueError / TypeError: a setting out of range or of the wrong type (named).
  """
  val_fraction = _check_fraction("val_fraction", val_fraction)
  label_noise = _check_fraction("label_noise", label_noise)
  info = sources.get_info(name)
  full_train = sources.load_split(name, "train", data_dir=data_dir, in_memory=in_memory)
  test = sources.load_split(name, "test", data_dir=data_dir, in_memory=in_memory)
  clean = sources.source_labels(full_train)
  noisy = clean
  if label_noise > 0:
    noisy, _ = noise_lib.apply_label_noise(clean, rate=label_noise,
                                           num_classes=info.num_classes,
                                           kind=label_noise_kind, seed=noise_seed)
  keep, val_pos = holdout_split(clean, val_fraction, split_seed)
  if train_subset is not None:
    if isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)):
      raise TypeError(f"train_subset must be an int or None, got {train_subset!r}.")
    if not 0 < train_subset <= len(keep):
      raise ValueError(
          f"train_subset must be in [1, {len(keep)}] (the training examples left after "
          f"holding out validation), got {train_subset}.")
    keep = keep[stratified_choice(clean[keep], int(train_subset), split_seed + 1)]
  test_labels = sources.source_labels(test)
  return Splits(
      name=name,
      train=subset(full_train, keep),
      validation=subset(full_train, val_pos) if len(val_pos) else None,
      test=test,
      clean_labels={"train": clean[keep], "validation": clean[val_pos],
                    "test": test_labels},
      noisy_labels={"train": noisy[keep], "validation": noisy[val_pos],
                    "test": test_labels},
      train_positions=keep, validation_positions=val_pos, label_noise=label_noise)

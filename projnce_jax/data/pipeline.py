"""Grain input pipeline: seeded per-epoch shuffling, sharding, padding, state.

The order of examples is a function of (seed, epoch) only, and the global batch
``t`` is the same whatever the number of processes: process ``p`` of ``P``
reads the ``p``-th contiguous slice of ``batch_size // P`` rows of it. Each
epoch is a fresh permutation (grain's ``MapDataset.shuffle`` folds the epoch
into the seed). At the end of an epoch the last incomplete global batch is
either dropped (``drop_remainder=True``) or padded with repeated examples whose
``mask`` is False, so every example is seen exactly once per epoch.

Each element of the underlying ``grain.MapDataset`` is one local batch (indexed
by the global step), so the iterator state is a step counter: a resumed run
sees exactly the batches it would have seen.

Example::

  src = load_split("mnist5k", "train")
  it = make_loader(src, batch_size=256, seed=0)
  batch = next(it)   # {"image": uint8 [256, 28, 28, 1], "label": int32 [256],
                     #  "mask": bool [256], "index": int32 [256]}
  state = it.get_state()        # JSON-able dict, save it in the checkpoint
  it.set_state(state)           # later: continue from the same batch
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np

LabelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
_STATE_KEYS = ("seed", "batch_size", "num_records", "shuffle", "drop_remainder",
               "shard_count")


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {value!r}.")
  if value <= 0:
    raise ValueError(f"{name} must be positive, got {value}.")
  return int(value)


def noisy_label_fn(noisy_labels: np.ndarray) -> LabelFn:
  """A ``label_fn`` that replaces labels by ``noisy_labels[index]``.

  Args:
    noisy_labels: int [N], one label per source index (e.g. from
      ``apply_label_noise``).
  """
  table = np.asarray(noisy_labels)

  def label_fn(labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    del labels
    return table[index]

  return label_fn


class BatchIterator:
  """Iterator over batches of a random-access source; see ``make_loader``."""

  def __init__(
      self,
      source: Sequence[dict[str, Any]],
      *,
      batch_size: int,
      seed: int,
      shuffle: bool = True,
      num_epochs: int | None = None,
      drop_remainder: bool = True,
      shard_index: int | None = None,
      shard_count: int | None = None,
      sharding: jax.sharding.Sharding | None = None,
      label_fn: LabelFn | None = None,
      num_threads: int = 2,
      prefetch: int = 4,
  ):
    self.batch_size = _check_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise TypeError(f"seed must be an int, got {seed!r}.")
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
    self.seed = int(seed)
    self.num_records = len(source)
    if self.num_records == 0:
      raise ValueError("The source is empty (len(source) == 0).")
    self.shard_count = _check_positive_int(
        "shard_count", jax.process_count() if shard_count is None else shard_count
    )
    shard_index = jax.process_index() if shard_index is None else shard_index
    if not 0 <= shard_index < self.shard_count:
      raise ValueError(
          f"shard_index must be in [0, {self.shard_count}), got {shard_index}."
      )
    self.shard_index = int(shard_index)
    if self.batch_size % self.shard_count:
      raise ValueError(
          f"batch_size {self.batch_size} is not divisible by shard_count "
          f"{self.shard_count}."
      )
    self.local_batch_size = self.batch_size // self.shard_count
    self.shuffle = bool(shuffle)
    self.drop_remainder = bool(drop_remainder)
    if drop_remainder:
      self.steps_per_epoch = self.num_records // self.batch_size
    else:
      self.steps_per_epoch = math.ceil(self.num_records / self.batch_size)
    if self.steps_per_epoch == 0:
      raise ValueError(
          f"batch_size {self.batch_size} exceeds the {self.num_records} records "
          "with drop_remainder=True: an epoch would have no batch."
      )
    if num_epochs is not None:
      num_epochs = _check_positive_int("num_epochs", num_epochs)
    self.num_epochs = num_epochs
    self.sharding = sharding
    self._source = source
    self._label_fn = label_fn

    order = grain.MapDataset.range(self.num_records)
    if self.shuffle:
      order = order.shuffle(seed=self.seed)
    self._order = order
    steps = grain.MapDataset.range(self.steps_per_epoch).repeat(num_epochs)
    self._dataset = steps.map_with_index(lambda step, _: self.local_batch(step))
    self._read_options = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch
    )
    self._iterator = iter(self._dataset.to_iter_dataset(self._read_options))

  @property
  def num_steps(self) -> int | None:
    """Total number of batches (None when repeating forever)."""
    if self.num_epochs is None:
      return None
    return self.num_epochs * self.steps_per_epoch

  def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and validity of this process's rows of batch ``step``.

    Returns:
      (index, mask): int64 [local_batch_size], bool [local_batch_size].
    """
    epoch, step_in_epoch = divmod(int(step), self.steps_per_epoch)
    start = step_in_epoch * self.batch_size + self.shard_index * self.local_batch_size
    position = start + np.arange(self.local_batch_size)
    mask = position < self.num_records
    position = np.where(mask, position, position % self.num_records)
    base = epoch * self.num_records
    index = np.fromiter(
        (self._order[base + int(p)] for p in position), np.int64, len(position)
    )
    return index % self.num_records, mask

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch ``step``, as numpy arrays."""
    index, mask = self.indices(step)
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is not None:
      records = getitems(index.tolist())
    else:
      records = [self._source[int(i)] for i in index]
    batch = {
        key: np.stack([r[key] for r in records])
        for key in records[0]
        if key != "label"
    }
    labels = np.asarray([r["label"] for r in records], np.int64)
    if self._label_fn is not None:
      labels = np.asarray(self._label_fn(labels, index))
    batch["label"] = labels.astype(np.int32)
    batch["mask"] = mask
    batch["index"] = index.astype(np.int32)
    return batch

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, Any]:
    batch = next(self._iterator)
    if self.sharding is None:
      return batch
    return {
        k: jax.make_array_from_process_local_data(self.sharding, v)
        for k, v in batch.items()
    }

  def _config(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in _STATE_KEYS}

  def get_state(self) -> dict[str, Any]:
    """JSON-able state: the next step and the settings it is valid for."""
    return {"grain": dict(self._iterator.get_state()), **self._config()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a state from ``get_state`` (same source size and settings).

    Raises:
      ValueError: the state was saved with different settings.
    """
    mismatched = {
        k: (state.get(k), v) for k, v in self._config().items() if state.get(k) != v
    }
    if mismatched:
      raise ValueError(
          f"Iterator state does not match this loader: {mismatched} "
          "(saved, current)."
      )
    self._iterator.set_state(state["grain"])


def make_loader(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    label_fn: LabelFn | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> BatchIterator:
  """Batches a random-access source; global batches, sharded by process.

  Args:
    source: ``len()`` and ``[i]`` -> dict with "label" and one data key
      ("image" or "audio"); e.g. from ``load_split``.
    batch_size: global batch size B, divisible by ``shard_count``.
    seed: shuffle seed in [0, 2**32); epoch e uses a permutation seeded by
      (seed, e).
    shuffle: shuffle each epoch; False keeps the source order.
    num_epochs: number of passes; None repeats forever.
    drop_remainder: drop the last incomplete batch of each epoch; if False, pad
      it with repeated examples marked ``mask=False``.
    shard_index: this process's shard; default ``jax.process_index()``.
    shard_count: number of shards; default ``jax.process_count()``.
    sharding: if given, each value becomes a global ``jax.Array`` [B, ...]
      made with ``jax.make_array_from_process_local_data``; else numpy arrays
      of the local rows [B // shard_count, ...].
    label_fn: optional ``label_fn(labels int64 [b], index int64 [b]) -> int [b]``
      applied to the local rows, e.g. ``noisy_label_fn(noisy_labels)``.
    num_threads: grain reader threads (0 reads in the calling thread).
    prefetch: batches buffered ahead.

  Returns:
    A ``BatchIterator`` yielding {data key: [b, ...], "label": int32 [b],
    "mask": bool [b], "index": int32 [b]}, with ``get_state``/``set_state``.
  """
  return BatchIterator(
      source,
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      drop_remainder=drop_remainder,
      shard_index=shard_index,
      shard_count=shard_count,
      sharding=sharding,
      label_fn=label_fn,
      num_threads=num_threads,
      prefetch=prefetch,
  )


class ArraySource:
  """In-memory source over numpy arrays (tests, benchmarks, small datasets).

  Args:
    data: {key: array [N, ...]}; must include "label".
  """

  def __init__(self, data: dict[str, np.ndarray]):
    if "label" not in data:
      raise ValueError(f"ArraySource needs a 'label' array, got keys {list(data)}.")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource arrays differ in length: {lengths}.")
    self._data = {k: np.asarray(v) for k, v in data.items()}
    self._n = next(iter(lengths.values()))

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    """The underlying {key: array [N, ...]} (not copied)."""
    return self._data

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict[str, Any]:
    out = {k: v[index] for k, v in self._data.items()}
    out["label"] = int(out["label"])
    return out

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]

"""Synthetic label noise for training labels, deterministic by seed.

* symmetric: each label is flipped with probability ``rate`` to a class drawn
  uniformly from the M - 1 *other* classes.
* asymmetric: each label c is flipped with probability ``rate`` to its pair
  class (c + 1) % M.

Only training labels should be corrupted; evaluation uses the clean labels.
Apply the result in the loader by source index with
``make_loader(..., label_fn=noisy_label_fn(noisy))``.

Example::

  noisy, is_clean = apply_label_noise(labels, rate=0.3, num_classes=10, seed=0)
"""

from __future__ import annotations

import numpy as np

NOISE_KINDS = ("symmetric", "asymmetric")


def apply_label_noise(
    labels: np.ndarray,
    *,
    rate: float,
    num_classes: int,
    kind: str = "symmetric",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Corrupts labels with symmetric or pair-flip noise.

  Args:
    labels: int [N] clean labels in [0, num_classes).
    rate: flip probability p in [0, 1].
    num_classes: number of classes M >= 2.
    kind: "symmetric" or "asymmetric".
    seed: seed of the numpy generator; same seed -> same result.

  Returns:
    (noisy_labels, is_clean): int64 [N], bool [N] with
    ``is_clean == (noisy_labels == labels)``.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(
        f"labels must be a 1-D integer array, got shape {labels.shape} "
        f"dtype {labels.dtype}."
    )
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must be in [0, 1], got {rate}.")
  if kind not in NOISE_KINDS:
    raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f"labels must be in [0, {num_classes}), got range "
        f"[{labels.min()}, {labels.max()}]."
    )
  labels = labels.astype(np.int64)
  rng = np.random.default_rng(seed)
  flip = rng.random(labels.shape) < rate
  if kind == "symmetric":
    offset = rng.integers(1, num_classes, size=labels.shape)  # never 0
  else:
    offset = np.ones_like(labels)
  noisy = np.where(flip, (labels + offset) % num_classes, labels)
  return noisy, noisy == labels

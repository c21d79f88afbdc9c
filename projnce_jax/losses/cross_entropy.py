"""Softmax cross-entropy for the supervised baseline (a linear classifier on the encoder)."""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax.losses._common import compute_dtype


def cross_entropy(logits: jax.Array, labels: jax.Array, *, mask: Optional[jax.Array] = None,
                  axis_name: Optional[str] = None, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy over the (global) batch, computed in >= float32.

  Args:
    logits: [n, M] class scores of the local rows.
    labels: [n] int labels in [0, M).
    mask: optional [n] bool; False rows are ignored.
    axis_name: data-parallel axis: the mean is over the global batch, equal on every
      device.
    label_smoothing: optional smoothing in [0, 1).

  Returns:
    (loss, aux) with aux = {"accuracy": top-1 accuracy, "num_anchors": rows counted}.

  Example:
    >>> loss, aux = cross_entropy(jnp.zeros((4, 10)), jnp.arange(4))
  """
  if logits.ndim != 2:
    raise ValueError(f"logits must have rank 2 [n, M], got shape {tuple(logits.shape)}.")
  if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
    raise ValueError(f"labels must have shape [{logits.shape[0]}], got {tuple(labels.shape)}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  num_classes = logits.shape[1]
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    values = np.asarray(labels)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}].")
  logits = logits.astype(compute_dtype(logits.dtype))
  # optax.smooth_labels and optax.softmax_cross_entropy, inline (optax is not a core
  # dependency): targets (1 - s) onehot + s / M, loss -sum targets * log_softmax(logits).
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  targets = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
  per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  correct = (jnp.argmax(logits, axis=1) == labels).astype(logits.dtype)
  w = jnp.ones_like(per_row) if mask is None else jnp.asarray(mask, logits.dtype)
  sums = jnp.stack([jnp.sum(per_row * w), jnp.sum(correct * w), jnp.sum(w)])
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  denom = jnp.maximum(sums[2], 1.0)
  return sums[0] / denom, {"accuracy": sums[1] / denom, "num_anchors": sums[2].astype(jnp.int32)}

"""On-device input functions: augmented views for training, clean inputs for evaluation.

Augmentation keys are per example: key_e = fold_in(step_key, index_e), with index_e the
example's position in the dataset. A batch therefore gets the same views whether it is
processed on one device or split across many.
"""
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp

from projnce_jax import data as pjd

Batch = Dict[str, jax.Array]


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """One key per example: index [b] int -> [b] keys (fold_in of the dataset index)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index.astype(jnp.uint32))


def input_key(kind: str) -> str:
  """The batch field holding raw inputs: "image" or "audio"."""
  if kind not in ("image", "audio"):
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'image' or 'audio'")
  return kind


def make_train_inputs(kind: str, *, num_views: int, sample_rate: int = 16000,
                      augment_kwargs: Dict[str, Any] = None
                      ) -> Callable[[jax.Array, Batch], jax.Array]:
  """(key, batch) -> [b * num_views, ...] float32 model inputs (views of one example adjacent).

  Images become augmented [h, w, c] views; audio becomes augmented log-mel views
  [frames, mels, 1].

  Args:
    kind: "image" (batch["image"] uint8 [b, h, w, c]) or "audio" (batch["audio"] [b, t]).
    num_views: augmented views per example (V).
    sample_rate: audio sample rate.
    augment_kwargs: extra keyword arguments for the augmentation function.
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


def make_eval_inputs(kind: str, *, sample_rate: int = 16000
                     ) -> Callable[[Batch], jax.Array]:
  """batch -> [b, ...] float32 model inputs without augmentation."""
  field = input_key(kind)

  def fn(batch: Batch) -> jax.Array:
    x = batch[field]
    if kind == "image":
      return pjd.normalize_images(x).astype(jnp.float32)
    return pjd.audio_features(x, sample_rate=sample_rate).astype(jnp.float32)

  return fn

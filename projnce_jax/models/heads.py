"""Projection head, linear classifier and the encoder + heads wrapper."""
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of x: [n, d] scaled to unit L2 norm (zero rows stay zero)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class ProjectionHead(nn.Module):
  """MLP head of SupCon (Khosla et al. 2020): Dense -> ReLU -> Dense -> L2-normalise.

  Attributes:
    hidden_dim: width of the hidden layer (SupCon uses the feature width).
    out_dim: embedding size (128).
    dtype: compute dtype; the output is float32.
  """
  hidden_dim: int
  out_dim: int = 128
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    """h: [b, f] -> [b, out_dim] float32 unit vectors."""
    x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype)(h))
    x = nn.Dense(self.out_dim, dtype=self.dtype)(x)
    return l2_normalize(x.astype(jnp.float32))


class LinearClassifier(nn.Module):
  """A linear layer computed in float32: h [b, f] -> logits [b, num_classes]."""
  num_classes: int

  @nn.compact
  def __call__(self, h):
    return nn.Dense(self.num_classes, dtype=jnp.float32)(h.astype(jnp.float32))


class ContrastiveModel(nn.Module):
  """Encoder with an optional projection head and an optional linear classifier.

  Contrastive methods use the head (`z`), the cross-entropy baseline the classifier
  (`logits`); evaluation uses the encoder features (`features`).

  Attributes:
    encoder: module mapping (x, train=...) -> [b, f].
    proj_hidden_dim: hidden width of the head; None -> the feature width.
    proj_dim: embedding size; 0 disables the head.
    num_classes: classifier outputs; 0 disables the classifier.
    dtype: compute dtype of the head.
  """
  encoder: nn.Module
  proj_hidden_dim: Optional[int] = None
  proj_dim: int = 128
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> Dict[str, jax.Array]:
    """Runs the encoder and heads.

    Args:
      x: [b, ...] inputs for the encoder.
      train: BatchNorm mode.

    Returns:
      {"features": [b, f] float32, "z": [b, proj_dim] float32 unit vectors (if the head
      is on), "logits": [b, num_classes] float32 (if the classifier is on)}.
    """
    h = self.encoder(x, train=train)
    out = {"features": h.astype(jnp.float32)}
    if self.proj_dim:
      hidden = self.proj_hidden_dim or h.shape[-1]
      out["z"] = ProjectionHead(hidden, self.proj_dim, dtype=self.dtype, name="head")(h)
    if self.num_classes:
      out["logits"] = LinearClassifier(self.num_classes, name="classifier")(h)
    return out

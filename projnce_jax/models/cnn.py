"""A small convolutional encoder for 8x8 (digits) and 28x28 (MNIST-like) images."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class SmallCNN(nn.Module):
  """Conv-BN-ReLU stages, each halving the resolution by default.

  Striding from the first stage keeps the convolutions cheap on CPU (28x28 -> 14 -> 7 -> 4);
  the backward pass of full-resolution convolutions dominates the step time otherwise.

  Attributes:
    widths: channels per stage.
    strides: stride per stage (default 2 for every stage).
    extra_convs: stride-1 Conv-BN-ReLU layers added to every stage after the first
      (deeper receptive field at low resolution, where convolutions are cheap).
    dtype: compute dtype.
    bn_axis_name: BatchNorm statistics axis (e.g. "data"), or None on one device.
    bn_momentum: running-average momentum.
  """
  widths: Sequence[int] = (32, 64, 128)
  strides: Optional[Sequence[int]] = None
  extra_convs: int = 0
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Encodes images.

    Args:
      x: [b, h, w, c] float images.
      train: batch statistics (True) or running averages (False).

    Returns:
      [b, widths[-1]] features in `dtype`.
    """
    x = x.astype(self.dtype)
    strides = self.strides or (2,) * len(self.widths)
    for i, (width, stride) in enumerate(zip(self.widths, strides)):
      for j in range(1 + (self.extra_convs if i > 0 else 0)):
        x = nn.Conv(width, (3, 3), strides=stride if j == 0 else 1, padding=1,
                    use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         dtype=self.dtype, axis_name=self.bn_axis_name)(x)
        x = nn.relu(x)
    return jnp.mean(x, axis=(1, 2))

"""A CNN over log-mel spectrograms (speech commands, CREMA-D)."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class AudioCNN(nn.Module):
  """Conv-BN-ReLU-pool stages over [time, mel] maps, then mean over both axes.

  Attributes:
    widths: channels per stage; each stage ends with 2x2 max-pooling while the map is
      larger than 1 along an axis.
    dtype: compute dtype.
    bn_axis_name: BatchNorm statistics axis (e.g. "data"), or None on one device.
    bn_momentum: running-average momentum.
  """
  widths: Sequence[int] = (32, 64, 128, 256)
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Encodes spectrograms.

    Args:
      x: [b, t, m] or [b, t, m, 1] log-mel features.
      train: batch statistics (True) or running averages (False).

    Returns:
      [b, widths[-1]] features in `dtype`.
    """
    if x.ndim == 3:
      x = x[..., None]
    x = x.astype(self.dtype)
    # Per-example standardisation makes the encoder insensitive to recording gain.
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / (std + 1e-5)
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       dtype=self.dtype, axis_name=self.bn_axis_name)(x)
      x = nn.relu(x)
      window = (2 if x.shape[1] > 1 else 1, 2 if x.shape[2] > 1 else 1)
      x = nn.max_pool(x, window, strides=window)
    return jnp.mean(x, axis=(1, 2))

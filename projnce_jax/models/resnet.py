"""CIFAR-style ResNets (He et al. 2016) as used by SupCon and solo-learn.

The CIFAR variant replaces the ImageNet stem (7x7 stride-2 conv + max-pool) by a single
3x3 stride-1 conv, so 32x32 inputs keep a 4x4 map in the last stage.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut.

  Attributes:
    filters: output channels.
    strides: stride of the first convolution.
    norm: a partially applied BatchNorm.
    dtype: compute dtype.
  """
  filters: int
  norm: Any
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [b, h, w, c] -> [b, h / s, w / s, filters]."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.filters, (3, 3), strides=self.strides, padding=1)(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.filters, (3, 3), padding=1)(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.filters or self.strides != 1:
      x = conv(self.filters, (1, 1), strides=self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 -> 1x1 bottleneck with expansion 4.

  Attributes:
    filters: bottleneck channels (output has 4 * filters).
    strides: stride of the 3x3 convolution.
    norm: a partially applied BatchNorm.
    dtype: compute dtype.
  """
  filters: int
  norm: Any
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [b, h, w, c] -> [b, h / s, w / s, 4 * filters]."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
    y = conv(self.filters, (3, 3), strides=self.strides, padding=1)(y)
    y = nn.relu(self.norm()(y))
    y = self.norm(scale_init=nn.initializers.zeros)(conv(4 * self.filters, (1, 1))(y))
    if x.shape[-1] != 4 * self.filters or self.strides != 1:
      x = conv(4 * self.filters, (1, 1), strides=self.strides, name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """ResNet with a 3x3 stem and no max-pool; returns pooled features.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: BasicBlock or BottleneckBlock.
    width: channels of the first stage (doubles per stage).
    dtype: compute dtype (float32 on CPU, bfloat16 on TPU/GPU).
    bn_axis_name: mapped axis over which BatchNorm averages batch statistics
      (e.g. "data" under shard_map), or None on one device.
    bn_momentum: running-average momentum.
  """
  stage_sizes: Sequence[int]
  block: Any = BasicBlock
  width: int = 64
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
      [b, f] features, f = 8 * width (basic) or 32 * width (bottleneck), in `dtype`.
    """
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name)
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(self.width * 2**i, norm=norm, strides=strides, dtype=self.dtype)(x)
    return jnp.mean(x, axis=(1, 2))


ResNet18 = functools.partial(CifarResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet50 = functools.partial(CifarResNet, stage_sizes=(3, 4, 6, 3), block=BottleneckBlock)

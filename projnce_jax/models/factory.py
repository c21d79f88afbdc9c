"""Builds models from names (the config's `model` block)."""
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from projnce_jax.models.audio import AudioCNN
from projnce_jax.models.cnn import SmallCNN
from projnce_jax.models.heads import ContrastiveModel
from projnce_jax.models.resnet import ResNet18
from projnce_jax.models.resnet import ResNet50

ENCODERS = {
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "small_cnn": SmallCNN,
    "audio_cnn": AudioCNN,
}


def resolve_dtype(dtype: Any) -> Any:
  """"float32" / "bfloat16" / "float16" / "auto" / a numpy dtype -> a jnp dtype.

  "auto" is bfloat16 on TPU and GPU, float32 on CPU.
  """
  if dtype == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("tpu", "gpu") else jnp.float32
  if isinstance(dtype, str):
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if dtype not in names:
      raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]
  return dtype


def create_encoder(name: str, *, dtype: Any = "float32", bn_axis_name: Optional[str] = None,
                   widths: Optional[Sequence[int]] = None, width: Optional[int] = None,
                   extra_convs: int = 0):
  """An encoder module by name.

  Args:
    name: one of ENCODERS.
    dtype: compute dtype.
    bn_axis_name: BatchNorm statistics axis ("data" under shard_map) or None.
    widths: channel list for small_cnn / audio_cnn.
    width: first-stage width for the ResNets (64 by default).
    extra_convs: stride-1 layers per stage after the first (small_cnn).

  Returns:
    A flax module called as encoder(x, train=...) -> [b, f].
  """
  if name not in ENCODERS:
    raise ValueError(f"unknown encoder {name!r}; expected one of {sorted(ENCODERS)}")
  kwargs = dict(dtype=resolve_dtype(dtype), bn_axis_name=bn_axis_name)
  if name.startswith("resnet"):
    if width:
      kwargs["width"] = width
  else:
    if widths:
      kwargs["widths"] = tuple(widths)
    if name == "small_cnn":
      kwargs["extra_convs"] = extra_convs
  return ENCODERS[name](**kwargs)


def create_model(name: str, *, num_classes: int = 0, proj_dim: int = 128,
                 proj_hidden_dim: Optional[int] = None, dtype: Any = "float32",
                 bn_axis_name: Optional[str] = None, widths: Optional[Sequence[int]] = None,
                 width: Optional[int] = None, extra_convs: int = 0) -> ContrastiveModel:
  """Encoder + projection head (proj_dim > 0) + classifier (num_classes > 0).

  Example:
    >>> model = create_model("small_cnn", proj_dim=128)
    >>> images = jnp.zeros([2, 28, 28, 1])
    >>> variables = model.init(jax.random.key(0), images, train=False)
    >>> model.apply(variables, images, train=False)["z"].shape
    (2, 128)
  """
  encoder = create_encoder(name, dtype=dtype, bn_axis_name=bn_axis_name, widths=widths,
                           width=width, extra_convs=extra_convs)
  return ContrastiveModel(encoder=encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim,
                          num_classes=num_classes, dtype=resolve_dtype(dtype))

"""Encoders and heads for contrastive pretraining.

Example:
  >>> import projnce_jax.models as pjm
  >>> model = pjm.create_model("small_cnn", num_classes=10, dtype="float32")
  >>> variables = model.init(key, jnp.zeros([2, 28, 28, 1]), train=False)
"""
from projnce_jax._extras import require as _require

_require("projnce_jax.models", "flax")
from projnce_jax.models.audio import AudioCNN
from projnce_jax.models.cnn import SmallCNN
from projnce_jax.models.heads import ContrastiveModel
from projnce_jax.models.heads import LinearClassifier
from projnce_jax.models.heads import ProjectionHead
from projnce_jax.models.resnet import CifarResNet
from projnce_jax.models.resnet import ResNet18
from projnce_jax.models.resnet import ResNet50
from projnce_jax.models.factory import ENCODERS
from projnce_jax.models.factory import create_encoder
from projnce_jax.models.factory import create_model
from projnce_jax.models.factory import resolve_dtype

__all__ = [
    "AudioCNN", "CifarResNet", "ContrastiveModel", "ENCODERS", "LinearClassifier",
    "ProjectionHead", "ResNet18", "ResNet50", "SmallCNN", "create_encoder",
    "create_model", "resolve_dtype",
]

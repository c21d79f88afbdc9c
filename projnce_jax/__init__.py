"""projnce_jax: the ProjNCE contrastive loss family and a Flax trainer, in JAX."""

from projnce_jax import losses

__version__ = "0.1.0"
__all__ = ["losses"]

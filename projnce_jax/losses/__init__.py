"""The ProjNCE loss family: ProjNCE, SupCon, InfoNCE / NT-Xent and cross-entropy.

Pure functions (no jit, no config objects). See `projnce` for the definitions.

    import projnce_jax as pj
    loss, aux = pj.losses.projnce(z, labels, temperature=0.1, positive="centroid")
"""

from projnce_jax.losses._common import normalize
from projnce_jax.losses.checks import checked
from projnce_jax.losses.cross_entropy import cross_entropy
from projnce_jax.losses.dispersion import dispersion_control
from projnce_jax.losses.projections import CLASS_TABLE
from projnce_jax.losses.projections import DATA_DEPENDENT
from projnce_jax.losses.projections import MLP_INITS
from projnce_jax.losses.projections import NEGATIVES
from projnce_jax.losses.projections import PROJECTIONS
from projnce_jax.losses.projections import init_mlp_params
from projnce_jax.losses.projections import mean_offdiagonal_cosine
from projnce_jax.losses.projections import mlp_table
from projnce_jax.losses.projections import orthogonal_table
from projnce_jax.losses.projections import simplex_table
from projnce_jax.losses.projnce import AUX_KEYS
from projnce_jax.losses.projnce import infonce
from projnce_jax.losses.projnce import projnce
from projnce_jax.losses.projnce import supcon
from projnce_jax.losses.sample import IMPLS
from projnce_jax.losses.sample import auto_block_size

__all__ = [
    "AUX_KEYS", "CLASS_TABLE", "ClassEmbeddingMLP", "DATA_DEPENDENT", "IMPLS", "MLP_INITS",
    "NEGATIVES", "PROJECTIONS", "auto_block_size", "checked", "cross_entropy",
    "dispersion_control", "infonce", "init_mlp_params", "mean_offdiagonal_cosine",
    "mlp_table", "normalize", "orthogonal_table", "projnce", "simplex_table", "supcon",
]


def __getattr__(name):
  # `ClassEmbeddingMLP` is a flax module (flax comes with the `[train]` extra); the losses
  # themselves use the plain-JAX `init_mlp_params` / `mlp_table`.
  if name == "ClassEmbeddingMLP":
    from projnce_jax.losses import projections  # pylint: disable=g-import-not-at-top
    return projections.ClassEmbeddingMLP
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

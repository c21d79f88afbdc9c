"""Optional dependencies: the core (losses, parallel) needs jax and numpy only.

The trainer, data pipeline, models and report come with the `[train]` extra; importing
one of them without it fails at once with the command that installs it.
"""
import importlib

TRAIN_INSTALL = "pip install 'projnce_jax[train]'"


def require(module: str, *packages: str) -> None:
  """Raises ImportError naming the `[train]` extra when a package of `module` is missing."""
  for name in packages:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ImportError(f"{module} needs the training dependencies ({name} is missing: "
                        f"{e}); install them with: {TRAIN_INSTALL}") from e

"""PyTorch losses a user would otherwise pick, for the side-by-side loss benchmark.

- `supcon_formula`: the SupContrast `SupConLoss` formula (benchmarks/supcon_torch.py).
- `pml_supcon`: pytorch-metric-learning `losses.SupConLoss` (embeddings [N, d], labels [N]).
- `lightly_ntxent`: lightly `loss.NTXentLoss` (two views [b, d] each).

lightly's package `__init__` imports torchvision (absent with a CPU-only torch install, and
not needed by its losses). `load_lightly_ntxent` therefore registers empty placeholder
packages for `lightly`, `lightly.loss`, `lightly.models`, `lightly.models.modules` and
`lightly.utils` (pointing at the installed directories) and imports only the modules
NTXentLoss needs: `lightly.loss.ntx_ent_loss`, `lightly.models.modules.memory_bank`,
`lightly.models.utils` and `lightly.utils.dist`. Of torchvision, `lightly.models.utils`
imports only the name `torchvision.ops.StochasticDepth` (used by ViT helpers, never by the
loss); when torchvision is absent a placeholder module supplies that name as a class that
raises if instantiated, so nothing of torchvision is silently emulated.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types


def load_lightly_ntxent():
  """lightly's NTXentLoss class without running lightly's package __init__ files."""
  spec = importlib.util.find_spec("lightly")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("lightly is not installed (pip install -e .[bench])")
  root = list(spec.submodule_search_locations)[0]
  if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
    class StochasticDepth:  # pylint: disable=too-few-public-methods
      def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is not installed (placeholder for lightly's import)")

    vision = types.ModuleType("torchvision")
    vision.__path__ = []
    ops = types.ModuleType("torchvision.ops")
    ops.StochasticDepth = StochasticDepth
    vision.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = vision, ops
  for name in ("lightly", "lightly.loss", "lightly.models", "lightly.models.modules",
               "lightly.utils"):
    if name in sys.modules:
      continue
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(root, *name.split(".")[1:])]
    sys.modules[name] = module
  return importlib.import_module("lightly.loss.ntx_ent_loss").NTXentLoss


def load_pml_supcon():
  """pytorch-metric-learning's SupConLoss class."""
  from pytorch_metric_learning.losses import SupConLoss  # pylint: disable=g-import-not-at-top
  return SupConLoss

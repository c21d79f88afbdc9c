"""Helpers shared by the ablation scripts: the sibling experiments' modules, formatting.

The cell runner, config builder, machine info and statistics come from
experiments/paper_comparison/run.py (`pc`), the geometry measures from
experiments/beta_geometry/run.py (`bg`, which loads `pc` itself).
"""
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, module_name: str):
  path = os.path.join(_HERE, "..", name, "run.py")
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up by name
  spec.loader.exec_module(module)
  return module


bg = sys.modules.get("beta_geometry_run") or _load("beta_geometry", "beta_geometry_run")
pc = bg.pc
fmt_ms = bg._ms  # pylint: disable=protected-access
sweep = sys.modules["_sweep"]  # experiments/_sweep.py, loaded by pc: the resumable cell cache

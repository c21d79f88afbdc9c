"""Shared pieces of the experiment sweeps: machine record, resumable cells, paired statistics.

A sweep is a list of cells; each cell is one call of the trainer
(`projnce_jax.train.train_and_evaluate`) with its own config. `CellCache` keeps every finished
cell as a small JSON file (OUT/cells/<key>.json, meant to be committed) next to the trainer's
working folder (OUT/runs/<key>-<hash>, checkpoints, ignored by git). A later invocation -- in
another sitting, or after an interruption -- reads the finished cells instead of training
them again, and a half-trained cell resumes from its last checkpoint. The key's file also
stores a hash of the full config, so a cell whose config has changed is trained again rather
than silently reused.

Usage::

  cache = CellCache(out, budget=Budget(max_cells=10, time_budget_s=3600))
  record = cache.get_or_run("stage2/mnist5k/noise0.4/supcon/seed0", config, extract)
  # None: not finished and the budget does not allow running it now.

Several processes may work through one sweep side by side (e.g. one per core, each pinned
with `taskset`): a process claims a cell before training it (OUT/runs/<key>-<hash>.claim,
created atomically) and the others pass over a cell that a live process holds. A claim left by
a process that died is taken over, and its cell resumes from the last checkpoint.

Parts of one sweep can be pinned to different code versions (`pins`: key prefix -> code
hash), each run from its own checkout: a pinned cell is read only if that code made it, and
trained only by a process that runs it.

Statistics: `mean_std` (mean and sample sd over seeds) and `paired_difference` (mean of the
per-seed differences with a two-sided t confidence interval).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import socket
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


def load_module(path: str, name: str):
  """Imports the Python file `path` as module `name` (registered in sys.modules)."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ImportError(f"cannot import {path!r}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------------------
# Machine and JAX set-up.


def machine_info() -> Dict[str, Any]:
  """Architecture, CPU count, load average and JAX devices of this machine."""
  import jax  # pylint: disable=g-import-not-at-top
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return {"machine": platform.machine(), "node": platform.node(),
          "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in load],
          "python": platform.python_version(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()]}


def load_average() -> list:
  """The 1, 5 and 15 minute load averages, rounded."""
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def enable_compilation_cache(path: str) -> None:
  """Caches compiled XLA programs on disk: the cells share shapes, so most load, not compile.

  A cache folder set in the environment (JAX_COMPILATION_CACHE_DIR) is kept instead of `path`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or path
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ----------------------------------------------------------------------------------------
# Cells.


def run_cell(config, workdir: str, *, hooks: Sequence[Callable] = (),
             done: Optional[Callable[[str], bool]] = None) -> Tuple[Dict[str, Any], bool]:
  """Trains and evaluates one cell in `workdir` unless it has finished there before.

  Args:
    config: the cell's (locked) trainer config.
    workdir: its folder; a results.json there marks it finished.
    hooks: trainer hooks (hook(step, state, record)).
    done: extra completion test on the folder (besides results.json).

  Returns:
    (the trainer's results dict plus "status" and "wall_seconds", whether it ran now).
    A diverged cell (FloatingPointError) is a result with status "diverged".
  """
  from projnce_jax import train  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    if done is None or done(workdir):
      with open(path) as f:
        return json.load(f), False
    shutil.rmtree(workdir)  # finished training but not the extra outputs: start over
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  try:
    res = train.train_and_evaluate(config, workdir, hooks=hooks)
    res["status"] = "ok"
  except FloatingPointError as e:  # a diverged cell is a result, not a crash of the sweep
    res = {"status": "diverged", "error": str(e)}
  res["wall_seconds"] = time.perf_counter() - t0
  _write_json(path, res)
  return res, True


def config_hash(config, code: Optional[str] = None) -> str:
  """A short, stable hash of every field of a trainer config (and of `code`, if given)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  if code is not None:
    text += "\ncode:" + code
  return hashlib.sha256(text.encode()).hexdigest()[:10]


# The source that decides what a cell computes: the package and the trainer configs.
CODE_PATHS = ("projnce_jax", "configs")


def code_version(root: str, paths: Sequence[str] = CODE_PATHS) -> Dict[str, Any]:
  """The version of the code a cell runs: a hash of its source files, and the git commit.

  The hash covers the content of every ``*.py`` file under `paths` (relative to `root`),
  so it changes with the code a cell runs -- committed or not -- and with nothing else (a
  change to the docs or to another experiment keeps it). The commit and whether those paths
  differ from it are recorded beside it for provenance.

  Returns:
    {"sha256": 16 hex digits, "commit": HEAD or None, "dirty": bool or None}.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for top in paths:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
      for name in sorted(filenames):
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          h.update(os.path.relpath(path, root).encode() + b"\0")
          with open(path, "rb") as f:
            h.update(f.read() + b"\0")
  commit = dirty = None
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", root, "status", "--porcelain", "--", *paths],
                                check=True, capture_output=True, text=True).stdout.strip())
  except (OSError, subprocess.CalledProcessError):
    pass
  return {"sha256": h.hexdigest()[:16], "commit": commit, "dirty": dirty}


def environment() -> Dict[str, Any]:
  """What else decides a cell's rounding: library versions, CPU model, threads, XLA flags."""
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  versions = {}
  for dist in ("jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      versions[dist] = md.version(dist)
    except md.PackageNotFoundError:
      versions[dist] = None
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count())
  return {**versions, "python": platform.python_version(), "cpu_model": cpu,
          "cpu_threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _process_alive(holder: Mapping[str, Any]) -> bool:
  """Whether the process that wrote a claim still runs (one on another host counts as alive)."""
  if holder.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, TypeError, ValueError):
    return True
  return True


def _write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


@dataclasses.dataclass
class Budget:
  """How many new cells this invocation may train (cached cells are always read).

  Attributes:
    max_cells: cells to train now at most (None: no limit).
    time_budget_s: no new cell starts after this many seconds (None: no limit).
  """
  max_cells: Optional[int] = None
  time_budget_s: Optional[float] = None
  started: float = dataclasses.field(default_factory=time.perf_counter)
  cells_run: int = 0

  def allows(self) -> bool:
    if self.max_cells is not None and self.cells_run >= self.max_cells:
      return False
    if (self.time_budget_s is not None
        and time.perf_counter() - self.started >= self.time_budget_s):
      return False
    return True


class CellCache:
  """Finished cells as JSON files under OUT/cells/, trainer folders under OUT/runs/.

  Args:
    out: the sweep's output folder.
    budget: limits on new cells (default: none).
    log: called with one line per cell (default: print).
    code: `code_version()` of the running code; its hash joins the config hash.
    env: `environment()`, stored with each new cell.
  """

  def hash(self, config, key: Optional[str] = None) -> str:
    """The config hash a cell must have: its config and the code version it is made by
    (the version pinned for `key`, else this process's)."""
    code = self.pinned_code(key) if key is not None else None
    if code is None and self.code is not None:
      code = self.code["sha256"]
    return config_hash(config, code)

  def __init__(self, out: str, budget: Optional[Budget] = None,
               log: Callable[[str], None] = lambda s: print(s, flush=True),
               code: Optional[Mapping[str, Any]] = None,
               env: Optional[Mapping[str, Any]] = None,
               pins: Optional[Mapping[str, str]] = None):
    self.out = out
    self.budget = budget or Budget()
    # With `code` (a `code_version()`), the config hash covers the code's hash: a cell made
    # by other code is trained again. Both are stored in every new cell's record.
    self.code = dict(code) if code is not None else None
    self.env = dict(env) if env is not None else None
    # Key prefix -> the code hash its cells are made by (one sweep whose parts run different
    # code versions, each from its own checkout): such a cell is read only if made by that
    # code, and trained only by a process running it.
    self.pins = dict(pins or {})
    self.log = log
    self.reused = 0
    self.stale = 0
    self.passed_over = 0

  def pinned_code(self, key: str) -> Optional[str]:
    """The code hash pinned for `key` (longest matching prefix), or None."""
    match = [p for p in self.pins if key.startswith(p)]
    return self.pins[max(match, key=len)] if match else None

  def runs_pinned_code(self, key: str) -> bool:
    """Whether this process may train `key`: no pin, or the pin is this process's code."""
    pin = self.pinned_code(key)
    return pin is None or (self.code is not None and self.code["sha256"] == pin)

  def cell_path(self, key: str) -> str:
    return os.path.join(self.out, "cells", key + ".json")

  def workdir(self, key: str, chash: str) -> str:
    return os.path.join(self.out, "runs", f"{key}-{chash}")

  def claim_path(self, key: str, chash: str) -> str:
    return self.workdir(key, chash) + ".claim"

  def _claim(self, key: str, chash: str) -> bool:
    """Claims the cell for this process; False when another live process holds it."""
    path = self.claim_path(key, chash)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
      except FileExistsError:
        try:
          with open(path) as f:
            holder = json.load(f)
        except (OSError, ValueError):
          return False  # being written by its holder right now
        if holder == me or not _process_alive(holder):
          os.remove(path)  # ours already, or left by a process that is gone
          continue
        return False
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      return True
    return False

  def lookup(self, key: str, config) -> Optional[Dict[str, Any]]:
    """The stored record of `key` if it was made with this exact config, else None."""
    path = self.cell_path(key)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      stored = json.load(f)
    if stored.get("config_hash") != self.hash(config, key):
      return None
    return stored["record"]

  def get_or_run(self, key: str, config,
                 extract: Callable[[Dict[str, Any]], Dict[str, Any]],
                 hooks: Sequence[Callable] = (),
                 done: Optional[Callable[[str], bool]] = None) -> Optional[Dict[str, Any]]:
    """The cell's record: stored, or trained now if the budget allows, else None.

    Args:
      key: a path-like name, unique within the sweep ("stage2/mnist5k/noise0.4/...").
      config: the cell's trainer config.
      extract: trainer results dict -> the small record stored and returned.
      hooks: trainer hooks.
      done: extra completion test on the trainer folder (`run_cell`'s), e.g. the outputs
        that `hooks` write and `extract` reads.

    Returns:
      The record, with "status", "wall_seconds", "config_hash" and "reused" added; None
      when the cell is not finished and the budget forbids training it now.
    """
    chash = self.hash(config, key)
    record = self.lookup(key, config)
    if record is not None:
      self.reused += 1
      return dict(record, reused=True)
    if not self.runs_pinned_code(key):
      self.passed_over += 1  # another checkout's code makes this cell
      return None
    if os.path.exists(self.cell_path(key)):
      self.stale += 1  # made with another config: train again
    if not self.budget.allows():
      return None
    if not self._claim(key, chash):
      self.log(f"  {key}: held by another live process ({self.claim_path(key, chash)}), "
               "passed over")
      return None
    try:
      record = self.lookup(key, config)  # finished while we were getting here
      if record is not None:
        self.reused += 1
        return dict(record, reused=True)
      load = load_average()
      res, ran = run_cell(config, self.workdir(key, chash), hooks=hooks, done=done)
      self.budget.cells_run += 1
      record = dict(extract(res), status=res.get("status", "ok"),
                    wall_seconds=res.get("wall_seconds"), config_hash=chash,
                    load_average_at_start=load, trained_now=ran,
                    **({"code": self.code} if self.code is not None else {}),
                    **({"environment": self.env} if self.env is not None else {}))
      _write_json(self.cell_path(key), {"key": key, "config_hash": chash,
                                        "config": json.loads(json.dumps(
                                            config.to_dict(), default=str)),
                                        "record": record})
    finally:
      os.remove(self.claim_path(key, chash))
    self.log(f"  ran {key}: {record['status']} ({record['wall_seconds'] or 0:.1f} s)")
    return dict(record, reused=False)


# ----------------------------------------------------------------------------------------
# Statistics.


def _finite(values: Sequence[Optional[float]]) -> np.ndarray:
  return np.array([x for x in values if x is not None and math.isfinite(x)], np.float64)


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Any]:
  """Mean and sample standard deviation (ddof=1) of the finite values."""
  v = _finite(values)
  if v.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
          "n": int(v.size)}


def paired_difference(a: Mapping[Any, Optional[float]], b: Mapping[Any, Optional[float]],
                      confidence: float = 0.95) -> Dict[str, Any]:
  """Mean of a[s] - b[s] over the seeds s both have, with a t confidence interval.

  Args:
    a, b: seed -> value (None or non-finite values are left out, with their pair).
    confidence: two-sided level of the interval.

  Returns:
    {"n", "seeds", "diffs", "mean", "sd", "ci_low", "ci_high", "t_crit"}; the interval is
    mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n), None with fewer than 2 pairs.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None
                 and math.isfinite(a[s]) and math.isfinite(b[s]))
  diffs = [float(a[s]) - float(b[s]) for s in seeds]
  out = {"n": len(seeds), "seeds": seeds, "diffs": diffs, "mean": None, "sd": None,
         "ci_low": None, "ci_high": None, "t_crit": None}
  if not diffs:
    return out
  d = np.array(diffs, np.float64)
  out["mean"] = float(d.mean())
  if d.size >= 2:
    sd = float(d.std(ddof=1))
    t = float(stats.t.ppf((1.0 + confidence) / 2.0, d.size - 1))
    half = t * sd / math.sqrt(d.size)
    out.update(sd=sd, t_crit=t, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
  return out


def unpaired_difference(a: Mapping[Any, Optional[float]], b: Mapping[Any, Optional[float]],
                        confidence: float = 0.95) -> Dict[str, Any]:
  """mean(a) - mean(b) with a Welch t interval, ignoring which seed each value came from.

  Beside `paired_difference`: pairing removes the variance the seeds share (initialisation,
  data order); this interval keeps it.

  Returns:
    {"n_a", "n_b", "mean", "ci_low", "ci_high", "df"} (interval None with < 2 values each).
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  va, vb = _finite(list(a.values())), _finite(list(b.values()))
  out = {"n_a": int(va.size), "n_b": int(vb.size), "mean": None, "ci_low": None,
         "ci_high": None, "df": None}
  if va.size == 0 or vb.size == 0:
    return out
  out["mean"] = float(va.mean() - vb.mean())
  if va.size < 2 or vb.size < 2:
    return out
  qa, qb = va.var(ddof=1) / va.size, vb.var(ddof=1) / vb.size
  se = math.sqrt(qa + qb)
  if se == 0.0:
    out.update(ci_low=out["mean"], ci_high=out["mean"], df=float("inf"))
    return out
  df = (qa + qb) ** 2 / (qa ** 2 / (va.size - 1) + qb ** 2 / (vb.size - 1))
  half = float(stats.t.ppf((1.0 + confidence) / 2.0, df)) * se
  out.update(ci_low=out["mean"] - half, ci_high=out["mean"] + half, df=float(df))
  return out


def rounding_variance(original: Mapping[Any, float], rerun: Mapping[Any, float]
                      ) -> Dict[str, Any]:
  """The variance of one paired difference that a change of rounding alone causes.

  `original[s]` and `rerun[s]` are the same seed's paired difference computed twice, the
  second under a perturbation that changes only floating-point rounding (another device
  count for the same global batch). If both are draws around the seed's expectation,
  Var(original - rerun) = 2 sigma_r^2, so sigma_r^2 = mean((original - rerun)^2) / 2.

  Returns:
    {"n", "seeds", "deltas", "var"} (var None without a seed in both).
  """
  seeds = sorted(s for s in original if s in rerun and original[s] is not None
                 and rerun[s] is not None)
  deltas = [float(original[s]) - float(rerun[s]) for s in seeds]
  var = float(np.mean(np.square(deltas)) / 2.0) if deltas else None
  return {"n": len(seeds), "seeds": seeds, "deltas": deltas, "var": var}


def widened_interval(diff: Mapping[str, Any], rounding_var: Optional[float]
                     ) -> Tuple[Optional[float], Optional[float]]:
  """The paired interval with the rounding variance added to each seed's difference.

  sd' = sqrt(sd^2 + sigma_r^2), same t quantile and n. The seeds' sd already holds part of
  the rounding variance, so this counts it twice at most: it errs wide.
  """
  if diff.get("sd") is None or rounding_var is None:
    return None, None
  half = diff["t_crit"] * math.sqrt(diff["sd"] ** 2 + rounding_var) / math.sqrt(diff["n"])
  return diff["mean"] - half, diff["mean"] + half

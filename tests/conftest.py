"""Test set-up: 8 fake CPU devices, configured before jax is imported."""
import os

_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# The suite compiles several hundred small programs and runs each a few times: LLVM's
# optimisation passes dominate its time. Level 0 compiled subsets about 20% faster (2-core
# CPU, fresh caches, side by side at load average ~3: 86 -> 66 s for test_projnce's gradient
# checks, 208 -> 169 s for the property and mlp training tests; not rerun idle).
# XLA_FLAGS=--xla_backend_optimization_level=2 runs the suite at XLA's default level instead;
# benchmarks and experiments run outside the suite always use the default.
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One on-disk XLA cache for the session, its xdist workers and the processes the tests
# start (main.py, experiment scripts, the notebook's kernel): every program compiled once
# is loaded after, the sub-second ones too (at level 0 most compile in under a second, and
# each of these processes would otherwise compile them again).
# The cache lives inside this checkout (.cache/ is git-ignored), never shared with another
# checkout whose code may differ.
TEST_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              ".cache", "xla-tests")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", TEST_CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

# `make test` runs `pytest -n 2 --dist loadscope`: each module goes whole to one worker, so
# its module-scoped fixtures (a real sweep, reference runs) and its compiled programs are
# made once. Workers take modules in collection order; the longest are put first so that
# none is left to run alone at the end.
_LONGEST_FIRST = (
    "train/test_kill_resume.py", "experiments/test_paper_comparison.py",
    "losses/test_properties.py", "train/test_trainer.py", "experiments/test_mi_bound.py",
    "test_notebook.py", "train/test_mlp_projection.py", "experiments/test_ablations.py",
    "losses/test_accelerator_check.py", "experiments/test_beta_geometry.py",
    "train/test_workdir_integrity.py", "losses/test_fused.py", "test_doctests.py",
    "losses/test_core_install.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {m: i for i, m in enumerate(_LONGEST_FIRST)}
  tests_dir = os.path.dirname(os.path.abspath(__file__))

  def key(item):
    rel = os.path.relpath(str(item.path), tests_dir).replace(os.sep, "/")
    return rank.get(rel, len(rank))

  items.sort(key=key)  # stable: every module keeps its own order


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats enabled (float64 references)."""
  if hasattr(jax, "enable_x64"):
    enable = jax.enable_x64
  else:  # JAX < 0.8
    from jax.experimental import enable_x64 as enable  # pylint: disable=g-import-not-at-top
  with enable(True):
    yield

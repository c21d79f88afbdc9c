"""Test set-up: 8 fake CPU devices, configured before jax is imported."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One on-disk XLA cache for the session, its xdist workers and the processes the tests
# start (main.py, experiment scripts): programs compiled (>= 1 s) once are loaded after.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"projnce_jax_test_xla_cache_{getattr(os, 'getuid', lambda: 0)()}"))

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats enabled (float64 references)."""
  with jax.enable_x64(True):
    yield

"""Test set-up: 8 fake CPU devices, configured before jax is imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats enabled (float64 references)."""
  with jax.enable_x64(True):
    yield

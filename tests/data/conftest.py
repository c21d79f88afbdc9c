"""Fixtures for the data tests: temporary data dirs, digits prepared once."""
import pytest

from projnce_jax.data import sources


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
  """Every test defaults to its own empty data dir, never the user's cache."""
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "tfds"))


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
  """A data dir with Fashion-MNIST prepared once per session (skips without the package)."""
  from projnce_jax.data import builders  # pylint: disable=g-import-not-at-top
  if not builders.fashion_mnist_available():
    pytest.skip(f"apt package {builders.FASHION_MNIST_APT_PACKAGE} not installed "
                "(`make data` installs it)")
  data_dir = str(tmp_path_factory.mktemp("fashion_tfds"))
  sources.prepare_offline("fashion_mnist_local", data_dir)
  return data_dir


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """A data dir with the digits dataset prepared once per test session."""
  data_dir = str(tmp_path_factory.mktemp("digits_tfds"))
  sources.prepare_offline("digits", data_dir)
  return data_dir

"""Fixtures for the data tests: temporary data dirs, digits prepared once."""
import pytest

from projnce_jax.data import sources


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
  """Every test defaults to its own empty data dir, never the user's cache."""
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "tfds"))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """A data dir with the digits dataset prepared once per test session."""
  data_dir = str(tmp_path_factory.mktemp("digits_tfds"))
  sources.prepare_offline("digits", data_dir)
  return data_dir

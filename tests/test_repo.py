"""Repository hygiene: licence and citation files, one version, the test cache's place."""
import configparser
import os
import subprocess

import projnce_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_licence_changelog_and_citation():
  with open(os.path.join(ROOT, "LICENSE")) as f:
    licence = f.read()
  assert "Apache License" in licence and "Version 2.0" in licence
  assert "END OF TERMS AND CONDITIONS" in licence
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  assert cfg["metadata"]["license"] == "Apache-2.0"
  with open(os.path.join(ROOT, "CITATION.cff")) as f:
    citation = f.read()
  assert "cff-version: 1.2.0" in citation and "2506.09810" in citation
  assert f"version: {projnce_jax.__version__}" in citation
  with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
    assert f"## {projnce_jax.__version__}" in f.read()


def test_version_is_single_sourced():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  assert cfg["metadata"]["version"] == "attr: projnce_jax.__version__"


def test_compilation_cache_is_inside_this_checkout_and_ignored():
  from tests.conftest import TEST_CACHE_DIR as cache  # pylint: disable=g-import-not-at-top
  assert os.path.commonpath([cache, ROOT]) == ROOT
  if os.path.isdir(os.path.join(ROOT, ".git")):
    probe = os.path.relpath(os.path.join(cache, "entry"), ROOT)
    assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0

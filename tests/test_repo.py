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


def test_lock_pins_every_requirement_within_setup_cfg():
  """requirements/constraints.txt pins each dependency of the core, train and test sets to
  a version that setup.cfg admits, and the make targets install through it."""
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "requirements", "constraints.txt")) as f:
    pins = dict(line.strip().split("==") for line in f
                if line.strip() and not line.startswith("#"))
  pins = {canonicalize_name(k): v for k, v in pins.items()}
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  reqs = cfg["options"]["install_requires"].split("\n")
  extras = cfg["options.extras_require"]
  reqs += extras["train"].split("\n") + extras["test"].split("\n") + extras["docs"].split("\n")
  for line in filter(None, (r.strip() for r in reqs)):
    req = Requirement(line)
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not in the lock"
    assert req.specifier.contains(pins[name], prereleases=True), (line, pins[name])
  with open(os.path.join(ROOT, "Makefile")) as f:
    assert "CONSTRAINTS ?= requirements/constraints.txt" in f.read()

"""Start-up checks: every bad config field or workdir is an error naming it, before loading."""
import copy
import os
import subprocess
import sys

import pytest

from projnce_jax.train import ConfigError
from projnce_jax.train import apply_overrides
from projnce_jax.train import base_config
from projnce_jax.train import run
from projnce_jax.train import trainer
from projnce_jax.train import validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _with(config, key, value):
  """A copy of `config` with `key` (dotted) set to `value`, bypassing type safety."""
  out = copy.deepcopy(config)
  *parents, leaf = key.split(".")
  node = out
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  return out


def test_valid_configs_pass(tiny_config):
  validate_config(tiny_config())
  validate_config(tiny_config(num_devices=2, loss={"impl": "ring"}))
  validate_config(tiny_config(method="cross_entropy", model={"proj_dim": 4}))


def test_unknown_fields_are_rejected(tiny_config):
  with pytest.raises(KeyError, match=r"unknown config field 'loss\.betta'"):
    apply_overrides(tiny_config(), {"loss": {"betta": 0.5}})
  unlocked = base_config()
  unlocked.loss.tempreature = 0.2       # a typo in a config file, before it is locked
  with pytest.raises(KeyError, match=r"unknown config field 'loss\.tempreature'"):
    validate_config(unlocked)


def test_unknown_override_on_the_command_line_is_rejected(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "main.py"),
       "--config=" + os.path.join(ROOT, "configs", "digits.py") + ":runlocal",
       f"--workdir={tmp_path}", "--config.loss.betta=0.5"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().split("\n")[-1] == (
      "error: unknown config key 'loss.betta' in --config.loss.betta; did you mean "
      "'loss.beta'?")
  assert not os.listdir(tmp_path)


BAD_FIELDS = [
    ("batch_size", "64", TypeError, ["'batch_size'", "int", "'64'"]),
    ("batch_size", True, TypeError, ["'batch_size'", "int"]),
    ("loss.temperature", 0.0, ConfigError, ["'loss.temperature'", "> 0", "0.0"]),
    ("loss.temperature", -0.1, ConfigError, ["'loss.temperature'", "-0.1"]),
    ("method", "simclr", ConfigError, ["'method'", "'simclr'", "projnce"]),
    ("loss.positive", "centre", ConfigError, ["'loss.positive'", "'centre'", "centroid"]),
    ("loss.negative", "anchor", ConfigError, ["'loss.negative'", "'anchor'"]),
    ("loss.impl", "sparse", ConfigError, ["'loss.impl'", "'sparse'", "blockwise"]),
    ("optimizer.name", "adam", ConfigError, ["'optimizer.name'", "'adam'", "adamw"]),
    ("model.name", "vit", ConfigError, ["'model.name'", "'vit'"]),
    ("dataset.name", "mnist", ConfigError, ["'dataset.name'", "'mnist'"]),
    ("dataset.label_noise", 1.0, ConfigError, ["'dataset.label_noise'", "[0, 1)", "1.0"]),
    ("dataset.label_noise", -0.1, ConfigError, ["'dataset.label_noise'", "-0.1"]),
    ("num_steps", 0, ConfigError, ["'num_steps'", ">= 1", "0"]),
    ("skip_nonfinite_updates", "yes", TypeError, ["'skip_nonfinite_updates'", "bool"]),
    ("loss.mlp_init", "eye", ConfigError, ["'loss.mlp_init'", "'eye'", "simplex"]),
    ("loss.mlp_lr", 0.0, ConfigError, ["'loss.mlp_lr'", "> 0"]),
    ("loss.dispersion", -1.0, ConfigError, ["'loss.dispersion'", ">= 0"]),
    ("heldout_mi.batch_size", 1, ConfigError, ["'heldout_mi.batch_size'"]),
]


@pytest.mark.parametrize("key,value,error,words", BAD_FIELDS,
                         ids=[f"{k}={v!r}" for k, v, _, _ in BAD_FIELDS])
def test_bad_field_is_named(tiny_config, key, value, error, words):
  with pytest.raises(error) as info:
    validate_config(_with(tiny_config(), key, value))
  for word in words:
    assert word in str(info.value), (word, str(info.value))


BAD_COMBINATIONS = [
    ({"loss": {"positive": "orthogonal"}, "model": {"proj_dim": 4}},
     ["'loss.positive'", "'orthogonal'", "model.proj_dim=4", "10 classes"]),
    ({"loss": {"negative": "orthogonal"}, "model": {"proj_dim": 8}},
     ["'loss.negative'", "model.proj_dim=8"]),
    ({"loss": {"impl": "ring"}, "num_devices": 1}, ["'loss.impl'", "'ring'", "1 device"]),
    ({"batch_size": 60, "num_devices": 8}, ["'batch_size'", "(60)", "(8)"]),
    ({"num_devices": 16}, ["'num_devices'", "16", "only 8"]),
    ({"batch_size": 4096}, ["'batch_size'", "4096", "training examples"]),
    ({"method": "infonce", "dataset": {"num_views": 1}}, ["'dataset.num_views'", "infonce"]),
    ({"method": "projnce", "loss": {"dispersion": 1.0}}, ["'loss.dispersion'", "'supcon'"]),
]


@pytest.mark.parametrize("overrides,words", BAD_COMBINATIONS,
                         ids=[str(o) for o, _ in BAD_COMBINATIONS])
def test_impossible_combination_is_named(tiny_config, overrides, words):
  with pytest.raises(ConfigError) as info:
    validate_config(tiny_config(**overrides))
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_bad_run_entry_is_named(tiny_config):
  config = tiny_config()
  with config.unlocked():
    config.runs = ({"name": "ok"}, {"name": "cold", "loss": {"temperature": -1.0}})
  with pytest.raises(ConfigError, match=r"run 'cold'.*'loss\.temperature'"):
    validate_config(config)
  with config.unlocked():
    config.runs = ({"name": "a"}, {"name": "a"})
  with pytest.raises(ConfigError, match=r"'runs' repeats the names \['a'\]"):
    validate_config(config)


@pytest.fixture
def no_loading(monkeypatch):
  """Fails the test if an Experiment (data loading, compilation) is ever built."""
  def fail(*args, **kwargs):
    raise AssertionError("an Experiment was built before the start-up checks failed")
  monkeypatch.setattr(trainer, "Experiment", fail)


def test_run_checks_config_before_loading(tiny_config, tmp_path, no_loading):
  with pytest.raises(ConfigError, match="'loss.temperature'"):
    run(tiny_config(loss={"temperature": 0.0}), str(tmp_path))


def test_unwritable_workdir_is_named_before_loading(tiny_config, tmp_path, no_loading):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  workdir = str(blocker / "run")        # a folder below a regular file cannot exist
  with pytest.raises(OSError, match=rf"workdir {workdir} is not writable"):
    run(tiny_config(), workdir)


def test_full_workdir_is_named_before_loading(tiny_config, tmp_path, no_loading):
  with pytest.raises(OSError, match=rf"workdir {tmp_path} has only .* MiB free.*"
                                    r"'min_free_disk_mb'"):
    run(tiny_config(min_free_disk_mb=1e12), str(tmp_path))
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".write_probe")]

"""Reruns never destroy work: config checks, restore errors, torn and later metric lines."""
import json
import logging
import os
import shutil

import pytest

from projnce_jax.train import ConfigError
from projnce_jax.train import checkpoint as ckpt_lib
from projnce_jax.train import trainer
from projnce_jax.train import train_and_evaluate
from projnce_jax.train.validate import RESUME_SAFE_KEYS
from projnce_jax.train.validate import config_differences
from projnce_jax.train.writers import SET_ASIDE
from projnce_jax.train.writers import read_metrics
from tests.train.conftest import Interrupt
from tests.train.conftest import interrupt_after
from tests.train.conftest import tiny_digits_config

RUN = dict(num_steps=10, checkpoint_every=5, log_every=1, keep_checkpoints=5)


@pytest.fixture(scope="module")
def interrupted(digits_dir, tmp_path_factory):
  """A workdir stopped (a crash) at step 7: config.json, checkpoint 5, metrics 1..7."""
  workdir = str(tmp_path_factory.mktemp("interrupted"))
  with pytest.raises(Interrupt):
    train_and_evaluate(tiny_digits_config(digits_dir, **RUN), workdir,
                       hooks=[interrupt_after(7)])
  return workdir


@pytest.fixture
def workdir(interrupted, tmp_path):
  path = str(tmp_path / "run")
  shutil.copytree(interrupted, path)
  return path


def _snapshot(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for dirpath, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_a_changed_config_is_refused_naming_the_keys_and_nothing_changes(
    workdir, tiny_config):
  before = _snapshot(workdir)
  assert "checkpoints/5/manifest.json" in before and "metrics.jsonl" in before
  changed = tiny_config(**dict(RUN, batch_size=32, model={"proj_dim": 16}, num_steps=20))
  with pytest.raises(ConfigError) as info:
    train_and_evaluate(changed, workdir)
  message = str(info.value)
  assert "refusing to resume and nothing was changed" in message
  assert "batch_size: 64 (checkpoints) vs 32 (now)" in message
  assert "model.proj_dim: 32 (checkpoints) vs 16 (now)" in message
  assert "num_steps" not in message.split("Differing fields:")[1].split(". Rerun")[0]
  assert _snapshot(workdir) == before     # checkpoints, metrics, config: byte-identical


def test_a_changed_config_in_a_multi_run_is_refused_before_any_run(digits_dir, tmp_path):
  base = tiny_digits_config(digits_dir, **RUN)
  sub = os.path.join(tmp_path, "b")
  os.makedirs(os.path.join(sub, "checkpoints", "5"))
  trainer.write_json(os.path.join(sub, "config.json"),
                     json.loads(trainer.apply_overrides(base, {"name": "b"})
                                .to_json_best_effort()))
  with base.unlocked():
    base.runs = ({"name": "a"}, {"name": "b", "loss": {"temperature": 0.5}})
  with pytest.raises(ConfigError, match=r"loss.temperature: 0.1 \(checkpoints\) vs 0.5"):
    trainer.run(base, str(tmp_path))
  assert not os.path.exists(tmp_path / "a")   # the first run did not start


def test_config_differences_split_safe_and_unsafe_fields():
  saved = {"num_steps": 10, "log_every": 1, "model": {"proj_dim": 32}, "old": 1}
  new = {"num_steps": 20, "log_every": 1, "model": {"proj_dim": 16}, "extra": {"a": 2}}
  safe, unsafe = config_differences(saved, new)
  assert safe == [("num_steps", 10, 20)]
  assert unsafe == [("extra.a", "<absent>", 2), ("model.proj_dim", 32, 16),
                    ("old", 1, "<absent>")]
  assert set(RESUME_SAFE_KEYS) >= {"num_steps", "num_epochs", "log_every",
                                   "checkpoint_every", "progress"}


def test_an_injected_restore_error_stops_the_run_and_moves_nothing(
    workdir, tiny_config, monkeypatch):
  before = _snapshot(workdir)

  def failing_restore(self, step, target):
    raise OSError(f"injected I/O error reading step {step}")

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore", failing_restore)
  with pytest.raises(ckpt_lib.CheckpointRestoreError) as info:
    train_and_evaluate(tiny_config(**RUN), workdir)
  message = str(info.value)
  assert os.path.join(workdir, "checkpoints", "5") in message
  assert "OSError: injected I/O error reading step 5" in message
  assert "nothing was moved" in message
  assert isinstance(info.value.__cause__, OSError)
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))
  assert _snapshot(workdir) == before


def test_find_damage_needs_evidence(workdir):
  folder = os.path.join(workdir, "checkpoints", "5")
  assert ckpt_lib.find_damage(folder) is None
  data_file = next(os.path.join(folder, rel) for rel in ckpt_lib._files(folder)
                   if rel.startswith("data" + os.sep))
  with open(data_file, "ab") as f:
    f.write(b" ")
  assert "bytes" in ckpt_lib.find_damage(folder)
  os.remove(data_file)
  assert "is missing" in ckpt_lib.find_damage(folder)
  os.remove(os.path.join(folder, ckpt_lib.MANIFEST))
  assert ckpt_lib.find_damage(folder) is None         # no manifest: nothing shown
  os.remove(os.path.join(folder, ckpt_lib.COMMIT_RECORD))
  assert "commit record" in ckpt_lib.find_damage(folder)


def test_torn_and_later_metric_lines_are_set_aside_and_the_resume_goes_on(
    workdir, tiny_config, caplog):
  metrics = os.path.join(workdir, "metrics.jsonl")
  with open(metrics) as f:
    lines = f.read().splitlines()
  assert [json.loads(l)["step"] for l in lines] == list(range(1, 8))
  with open(metrics, "a") as f:
    f.write('{"step": 8, "loss": 0.')            # a crash in the middle of an append
  with caplog.at_level(logging.WARNING):
    results = train_and_evaluate(tiny_config(**RUN), workdir)
  warnings = " ".join(r.getMessage() for r in caplog.records)
  assert "1 unreadable line(s)" in warnings and "2 record(s) after the restored step 5" in warnings
  records = read_metrics(metrics)
  assert [r["step"] for r in records] == list(range(1, 11))
  with open(metrics) as f:
    assert f.read().splitlines()[:5] == lines[:5]  # the kept lines, byte for byte
  aside = [json.loads(l) for l in open(os.path.join(workdir, SET_ASIDE))]
  assert [a["record"] for a in aside[:2]] == [json.loads(l) for l in lines[5:7]]
  assert aside[2]["unreadable_line"] == '{"step": 8, "loss": 0.'
  assert all(a["resumed_from_step"] == 5 for a in aside)
  assert results["steps"] == 10 and results["knn_accuracy"] > 0


def test_safe_changes_resume_and_are_logged(workdir, tiny_config, caplog):
  with caplog.at_level(logging.WARNING):
    results = train_and_evaluate(tiny_config(**dict(RUN, num_steps=12, log_every=3)),
                                 workdir)
  warnings = [r.getMessage() for r in caplog.records]
  assert any("num_steps changed: 10 -> 12" in w for w in warnings), warnings
  assert any("log_every changed: 1 -> 3" in w for w in warnings), warnings
  assert results["steps"] == 12
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["num_steps"] == 12

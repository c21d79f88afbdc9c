"""The pipeline end to end on digits: learning, outputs, resume, sharding, NaN stop."""
import json
import os

import jax
import numpy as np
import pytest

from projnce_jax.train import run
from projnce_jax.train import train_and_evaluate
from projnce_jax.train.writers import read_metrics

LOGGED = ("loss", "infonce_term", "adjustment", "mi_lower_bound", "learning_rate",
          "probe_accuracy", "examples_per_sec_per_device", "step_time_s")
FINAL = ("linear_probe_accuracy", "knn_accuracy", "online_probe_accuracy", "final_loss",
         "infonce_term", "adjustment", "mi_lower_bound")


def test_digits_loss_falls_and_probe_beats_chance(tiny_config, tmp_path):
  config = tiny_config(num_steps=150, batch_size=128, log_every=10, checkpoint_every=150,
                       linear_probe={"epochs": 20})
  results = train_and_evaluate(config, str(tmp_path))
  records = read_metrics(str(tmp_path / "metrics.jsonl"))
  first, last = records[:2], records[-2:]
  assert np.mean([r["loss"] for r in last]) < np.mean([r["loss"] for r in first]) - 0.3
  assert np.mean([r["probe_accuracy"] for r in last]) > 0.5      # chance: 0.1
  assert results["linear_probe_accuracy"] > 0.6
  assert results["knn_accuracy"] > 0.6


def test_outputs_and_logged_metrics(tiny_config, tmp_path):
  results = train_and_evaluate(tiny_config(num_steps=4, log_every=2), str(tmp_path))
  records = read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [2, 4]
  for key in LOGGED:
    assert all(np.isfinite(r[key]) for r in records), key
  for name in ("config.json", "results.json", "report.md", "curves.png"):
    assert (tmp_path / name).exists(), name
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["linear_probe_accuracy"] == results["linear_probe_accuracy"]
  assert "| linear probe (%) |" in (tmp_path / "report.md").read_text()


class Interrupt(Exception):
  pass


def _interrupt_after(k):
  def hook(step, state, record):
    del state, record
    if step == k:
      raise Interrupt(step)
  return hook


@pytest.mark.parametrize("method", ["projnce", "cross_entropy"])
def test_interrupted_run_resumes_to_identical_results(tiny_config, tmp_path, method):
  config = tiny_config(method=method, num_steps=12, checkpoint_every=5, log_every=1)
  ref = train_and_evaluate(config, str(tmp_path / "ref"))

  workdir = str(tmp_path / "run")
  with pytest.raises(Interrupt):
    train_and_evaluate(config, workdir, hooks=[_interrupt_after(7)])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["5"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  resumed = train_and_evaluate(config, workdir)

  for key in FINAL:
    assert resumed[key] == ref[key], (key, resumed[key], ref[key])
  ref_log = read_metrics(str(tmp_path / "ref" / "metrics.jsonl"))
  run_log = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in run_log] == list(range(1, 13))
  assert [r["loss"] for r in run_log] == [r["loss"] for r in ref_log]
  # A finished run rerun on its workdir evaluates again without training.
  again = train_and_evaluate(config, workdir)
  assert again["linear_probe_accuracy"] == ref["linear_probe_accuracy"]


def test_data_parallel_run_on_eight_devices(tiny_config, tmp_path):
  assert jax.device_count() == 8
  results = train_and_evaluate(tiny_config(num_devices=None, num_steps=3, log_every=1),
                               str(tmp_path))
  assert results["num_devices"] == 8
  assert np.isfinite(results["final_loss"]) and results["knn_accuracy"] > 0


def test_several_runs_write_a_comparison(tiny_config, tmp_path):
  config = tiny_config(num_steps=2, log_every=1)
  with config.unlocked():
    config.runs = ({"name": "pj", "method": "projnce", "loss": {"beta": 0.5}},
                   {"name": "ce", "method": "cross_entropy"})
  summary = run(config, str(tmp_path))
  assert [r["name"] for r in summary["runs"]] == ["pj", "ce"]
  assert summary["runs"][0]["method"] == "projnce (centroid/sample, beta=0.5)"
  text = (tmp_path / "report.md").read_text()
  assert "| pj |" in text and "| ce |" in text
  assert json.loads((tmp_path / "results.json").read_text())["runs"][1]["name"] == "ce"
  assert (tmp_path / "pj" / "results.json").exists()


def test_non_finite_loss_stops_with_step_and_checkpoint(tiny_config, tmp_path):
  config = tiny_config(num_steps=6, log_every=1, checkpoint_every=1,
                       optimizer={"base_lr": float("inf"), "warmup_epochs": 0.0})
  with pytest.raises(FloatingPointError, match=r"at step 2; last good checkpoint: .*1"):
    train_and_evaluate(config, str(tmp_path))

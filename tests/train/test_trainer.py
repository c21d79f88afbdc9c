"""The pipeline end to end on digits: learning, outputs, resume, sharding, NaN stop."""
import json
import os

import jax
import numpy as np
import pytest

from projnce_jax.train import apply_overrides
from projnce_jax.train import trainer
from projnce_jax.train import train_and_evaluate
from projnce_jax.train.trainer import method_label
from projnce_jax.train.writers import read_metrics
from tests.train.conftest import Interrupt
from tests.train.conftest import interrupt_after

LOGGED = ("loss", "infonce_term", "adjustment", "mi_lower_bound", "learning_rate",
          "probe_accuracy", "examples_per_sec_per_device", "step_time_s")
FINAL = ("linear_probe_accuracy", "knn_accuracy", "online_probe_accuracy", "final_loss",
         "infonce_term", "adjustment", "train_batch_mi_estimate", "heldout_mi_bound")


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

  # Outputs of the run.
  assert [r["step"] for r in records] == list(range(10, 151, 10))
  for key in LOGGED:
    assert all(np.isfinite(r[key]) for r in records), key
  for name in ("config.json", "results.json", "report.md", "curves.png"):
    assert (tmp_path / name).exists(), name
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["150"]
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["linear_probe_accuracy"] == results["linear_probe_accuracy"]
  assert "| linear probe (%) |" in (tmp_path / "report.md").read_text()


def test_interrupted_run_resumes_to_identical_results(tiny_config, tmp_path):
  config = tiny_config(num_steps=12, checkpoint_every=5, log_every=1)
  ref = train_and_evaluate(config, str(tmp_path / "ref"))

  workdir = str(tmp_path / "run")
  with pytest.raises(Interrupt):
    train_and_evaluate(config, workdir, hooks=[interrupt_after(7)])
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


def test_run_overrides_and_method_labels(tiny_config):
  config = tiny_config()
  sub = apply_overrides(config, {"name": "pj", "method": "projnce", "loss": {"beta": 0.5}})
  assert sub.loss.beta == 0.5 and config.loss.beta == 1.0 and sub.runs == ()
  assert method_label(sub) == "projnce (centroid/sample, beta=0.5)"
  assert method_label(apply_overrides(config, {"method": "supcon"})) == "supcon"
  with pytest.raises(KeyError, match="loss.betta"):
    apply_overrides(config, {"loss": {"betta": 0.5}})


def _poison_at(monkeypatch, step_to_poison, *, metrics_too):
  """Makes the compiled step return NaN parameters (and loss) from a given step on."""
  original = trainer.Experiment.compiled_step

  def compiled_step(self):
    step_fn = original(self)

    def poisoned(state, batch):
      state, metrics = step_fn(state, batch)
      if int(state.step) >= step_to_poison:
        state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
        if metrics_too:
          metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return state, metrics
    return poisoned

  monkeypatch.setattr(trainer.Experiment, "compiled_step", compiled_step)


@pytest.mark.parametrize("step,metrics_too,what", [(3, True, "non-finite metrics"),
                                                   (4, False, "non-finite parameters")])
def test_non_finite_stops_with_step_and_last_good_checkpoint(tiny_config, tmp_path,
                                                             monkeypatch, step, metrics_too,
                                                             what):
  """NaN loss (step 3) or NaN parameters at a save (step 4): stop, name checkpoint 2."""
  _poison_at(monkeypatch, step, metrics_too=metrics_too)
  config = tiny_config(num_steps=6, log_every=1, checkpoint_every=2)
  with pytest.raises(FloatingPointError,
                     match=rf"{what}.* at step {step}; last good checkpoint: .*checkpoints/2$"):
    train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_noisy_labels_also_probe_on_clean_labels(tiny_config, tmp_path):
  config = tiny_config(num_steps=4, dataset={"label_noise": 0.6}, eval_split="validation")
  exp = trainer.Experiment(config)
  state = trainer.train(exp, str(tmp_path), desc="noisy")["state"]
  ev = trainer.evaluate(exp, state)
  splits = exp.data.splits
  test = ev["test_features"]
  # Eval rows are scored on the validation split's noisy labels and carry the clean ones.
  np.testing.assert_array_equal(test["label"], splits.noisy_labels["validation"][test["index"]])
  np.testing.assert_array_equal(test["clean_label"],
                                splits.clean_labels["validation"][test["index"]])
  assert np.mean(test["label"] != test["clean_label"]) > 0.3   # noise 0.6 flips many
  assert ev["probe_train_labels"] == "noisy"
  for key in ("linear_probe_accuracy_clean_labels", "knn_accuracy_clean_labels",
              "linear_probe_accuracy_clean_eval_labels", "knn_accuracy_clean_eval_labels"):
    assert 0.0 <= ev[key] <= 1.0, key
  # The same kNN scored against the clean validation labels: recomputed from its predictions.
  eval_lib = trainer.eval_lib
  train_ev = eval_lib.extract_features(
      eval_lib.make_feature_fn(exp.model, exp.eval_inputs), state.params["model"],
      state.batch_stats, exp.eval_loader(exp.train_source, exp.label_fn))
  predicted = eval_lib.knn_predict(train_ev["features"], train_ev["label"], test["features"],
                                   num_classes=exp.num_classes, k=config.knn.k,
                                   temperature=config.knn.temperature)
  assert ev["knn_accuracy_clean_eval_labels"] == float(
      np.mean(predicted == test["clean_label"]))
  assert ev["knn_accuracy"] == float(np.mean(predicted == test["label"]))

  clean = trainer.evaluate(trainer.Experiment(tiny_config(num_steps=4)), state)
  assert clean["probe_train_labels"] == "clean"
  assert "linear_probe_accuracy_clean_labels" not in clean
  assert "linear_probe_accuracy_clean_eval_labels" not in clean


def _tensorboard_scalars(folder):
  """{tag: [(step, value)]} from the event files in `folder` (TFRecord framing)."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(folder)):
    if "tfevents" not in name:
      continue
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          out.setdefault(value.tag, []).append((event.step, value.simple_value))
        else:
          out.setdefault(value.tag, [])
  return out


def test_tensorboard_gets_the_final_results_and_hparams(tiny_config, tmp_path):
  config = tiny_config(num_steps=20, batch_size=64, log_every=10, checkpoint_every=20,
                       linear_probe={"epochs": 2})
  results = train_and_evaluate(config, str(tmp_path))
  scalars = _tensorboard_scalars(str(tmp_path / "tensorboard"))
  for key in ("linear_probe_accuracy", "knn_accuracy", "heldout_mi_bound"):
    assert scalars[f"final/{key}"] == [(20, pytest.approx(results[key], rel=1e-6))], key
  assert [s for s, _ in scalars["loss"]] == [10, 20]
  assert os.listdir(tmp_path / "tensorboard" / "hparams")
  hparams = _tensorboard_scalars(str(tmp_path / "tensorboard" / "hparams"))
  assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams


def test_evaluation_shows_each_phase(tiny_config, tmp_path, capfd):
  config = tiny_config(num_steps=10, batch_size=64, log_every=10, checkpoint_every=10,
                       linear_probe={"epochs": 2}, progress=True)
  train_and_evaluate(config, str(tmp_path))
  err = capfd.readouterr().err
  for phase in ("features of the training split", "linear probe (2 epochs", "kNN (k =",
                "held-out MI bound", "report (t-SNE)"):
    assert phase in err, phase
  assert "evaluation: 100%" in err

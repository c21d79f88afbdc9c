"""Training faults: non-finite updates, unreadable checkpoints, SIGTERM; nothing is lost."""
import logging
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projnce_jax.train import Preempted
from projnce_jax.train import step as step_lib
from projnce_jax.train import trainer
from projnce_jax.train import train_and_evaluate
from projnce_jax.train.writers import read_metrics
from tests.train.conftest import tiny_digits_config

RESUME = dict(num_steps=12, checkpoint_every=5, log_every=1, keep_checkpoints=5)


@pytest.fixture(scope="module")
def experiment(digits_dir):
  """One Experiment (its step compiled once) shared by the resume tests."""
  return trainer.Experiment(tiny_digits_config(digits_dir, **RESUME))


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory):
  """An uninterrupted training run: final parameters and logged metrics."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  out = trainer.train(experiment, workdir)
  return {"params": jax.device_get(out["state"].params),
          "metrics": read_metrics(os.path.join(workdir, "metrics.jsonl"))}


def _assert_same_as_reference(out, workdir, reference):
  """Bitwise-equal final parameters and identical logged metrics (timings aside)."""
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["state"].params),
               reference["params"])
  strip = lambda rs: [{k: v for k, v in r.items()
                       if k not in ("step_time_s", "examples_per_sec_per_device")} for r in rs]
  got = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert strip(got) == strip(reference["metrics"])


# -- non-finite loss or gradients -------------------------------------------------------


@jax.custom_vjp
def _nan_gradient(x):
  return x


_nan_gradient.defvjp(lambda x: (x, None),
                     lambda _, g: (jnp.where(g != 0, jnp.nan, g),))


def _poison_steps(monkeypatch, *, nan_loss=(), nan_grads=()):
  """Makes the real loss NaN (value and gradients) or only its gradients at given steps."""
  current = {}
  original_loss = step_lib.method_loss
  original_make = trainer.make_train_step

  def method_loss(*args, **kwargs):
    loss, aux = original_loss(*args, **kwargs)
    step = current["step"]
    bad_loss = jnp.isin(step, jnp.asarray(nan_loss or [-1]))
    bad_grads = jnp.isin(step, jnp.asarray(nan_grads or [-1]))
    loss = jnp.where(bad_loss, jnp.nan, 1.0) * loss
    return jnp.where(bad_grads, _nan_gradient(loss), loss), aux

  def make_train_step(**kwargs):
    inner = original_make(**kwargs)

    def step(state, batch):
      current["step"] = state.step + 1       # the 1-based step being computed
      return inner(state, batch)
    return step

  monkeypatch.setattr(step_lib, "method_loss", method_loss)
  monkeypatch.setattr(trainer, "make_train_step", make_train_step)


def test_non_finite_gradient_stops_naming_step_metrics_and_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  """Finite loss, NaN gradients from step 3: detected at the step-4 log, step 3 named."""
  _poison_steps(monkeypatch, nan_grads=range(3, 7))
  config = tiny_config(num_steps=6, log_every=2, checkpoint_every=2)
  with pytest.raises(FloatingPointError) as info:
    train_and_evaluate(config, str(tmp_path))
  message = str(info.value)
  assert message.startswith("non-finite loss or gradients at step 3 ")
  assert "updates not applied: 2 by step 4" in message
  assert "metrics at step 4: {" in message and "'loss': " in message
  assert message.endswith(os.path.join(str(tmp_path), "checkpoints", "2"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_skip_nonfinite_updates_counts_and_continues(tiny_config, tmp_path, monkeypatch):
  _poison_steps(monkeypatch, nan_loss=[3], nan_grads=[5])
  config = tiny_config(num_steps=6, log_every=1, checkpoint_every=3,
                       skip_nonfinite_updates=True)
  results = train_and_evaluate(config, str(tmp_path))
  records = read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["skipped_updates"] for r in records] == [0, 0, 1, 1, 2, 2]
  assert np.isnan(records[2]["loss"]) and np.isfinite(records[4]["loss"])
  assert "update_skipped" not in records[0]
  assert np.isfinite(results["final_loss"]) and results["knn_accuracy"] > 0
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


# -- unreadable newest checkpoint ---------------------------------------------------------


def _truncate_files(folder):
  count = 0
  for dirpath, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(dirpath, name), "w"):
        count += 1
  return count


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(
    experiment, tmp_path, reference, caplog):
  workdir = tmp_path / "run"
  with pytest.raises(Preempted):            # stop at step 11: checkpoints 5, 10, 11
    trainer.train(experiment, str(workdir), hooks=[_sigterm_at(11)])
  ckpts = workdir / "checkpoints"
  assert sorted(os.listdir(ckpts), key=int) == ["5", "10", "11"]
  assert _truncate_files(ckpts / "11") > 0   # a partially written newest checkpoint
  for name in os.listdir(ckpts / "10" / "state"):   # and files deleted from the next one
    path = ckpts / "10" / "state" / name
    if path.is_file():
      path.unlink()

  with caplog.at_level(logging.WARNING):
    resumed = trainer.train(experiment, str(workdir))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  for step in ("11", "10"):
    # Found by the manifest check before orbax reads it.
    assert any(f"checkpoint {ckpts / step} is damaged" in w for w in warnings), (
        step, warnings)
  assert sorted(os.listdir(workdir / "checkpoints_unreadable")) == ["10", "11"]
  _assert_same_as_reference(resumed, str(workdir), reference)


# -- SIGTERM (preemption) ------------------------------------------------------------------


def _sigterm_at(k):
  def hook(step, state, record):
    del state, record
    if step == k:
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches(experiment, tmp_path, reference):
  workdir = tmp_path / "run"
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Preempted, match=r"stopped by SIGTERM at step 7; saved checkpoint "
                                      rf"{workdir}/checkpoints/7; rerun") as info:
    trainer.train(experiment, str(workdir), hooks=[_sigterm_at(7)])
  assert info.value.step == 7
  assert signal.getsignal(signal.SIGTERM) is before     # the handler is uninstalled
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["5", "7"]

  resumed = trainer.train(experiment, str(workdir))
  _assert_same_as_reference(resumed, str(workdir), reference)

"""A `main.py` process stopped by a signal resumes to the results of an uninterrupted run.

SIGKILL (a crash) resumes from the last periodic checkpoint; SIGTERM (preemption) first
saves a checkpoint at the step it stopped and exits with status 143. Both are slow
(three main.py runs each); `test_trainer.py` and `test_faults.py` cover the same resume
paths in-process in the default run.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINAL = ("linear_probe_accuracy", "knn_accuracy", "online_probe_accuracy", "final_loss",
         "train_batch_mi_estimate", "heldout_mi_bound")


def _command(workdir, data_dir):
  return [sys.executable, os.path.join(ROOT, "main.py"),
          "--config=" + os.path.join(ROOT, "configs", "digits.py") + ":runlocal",
          f"--workdir={workdir}", "--config.num_steps=300", "--config.checkpoint_every=25",
          "--config.log_every=25", "--config.num_devices=1",
          f"--config.dataset.data_dir={data_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_signal_then_rerun_reaches_the_same_results(sig, digits_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
  subprocess.run(_command(ref_dir, digits_dir), check=True, env=env, cwd=ROOT,
                 capture_output=True)

  proc = subprocess.Popen(_command(run_dir, digits_dir), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  ckpt_dir = run_dir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.exists() and any(p.isdigit() for p in os.listdir(ckpt_dir)):
      break
    time.sleep(0.02)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  if sig == signal.SIGKILL:
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  else:
    assert proc.returncode == 143, stderr
    assert "preempted: stopped by SIGTERM at step" in stderr
    step = int(stderr.split("SIGTERM at step ")[1].split(";")[0])
    assert 25 <= step < 300 and (ckpt_dir / str(step)).is_dir()
  assert not (run_dir / "results.json").exists()

  subprocess.run(_command(run_dir, digits_dir), check=True, env=env, cwd=ROOT,
                 capture_output=True)
  ref = json.loads((ref_dir / "results.json").read_text())
  got = json.loads((run_dir / "results.json").read_text())
  for key in FINAL:
    assert got[key] == ref[key], (key, got[key], ref[key])

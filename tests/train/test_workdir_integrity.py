"""One writer per workdir, refused reruns that change nothing, one-line user errors."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from projnce_jax import train
from projnce_jax.train import workdir_lock
from projnce_jax.train.trainer import train_and_evaluate

from .test_rerun import _snapshot  # {relative path: bytes} of a folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_one(tmp_path, caplog):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from projnce_jax.train import workdir_lock;"
       "l = workdir_lock.WorkdirLock(sys.argv[1]).__enter__(); print('held', flush=True);"
       "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=ROOT))
  try:
    assert holder.stdout.readline().strip() == "held"
    before = _snapshot(tmp_path)
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {holder.pid} on host"):
      with workdir_lock.WorkdirLock(str(tmp_path)):
        pass
    assert _snapshot(tmp_path) == before
  finally:
    holder.kill()
    holder.wait()
  # The holder died without releasing: its record is still in the file; taken over.
  assert str(holder.pid) in (tmp_path / ".lock").read_text()
  with workdir_lock.WorkdirLock(str(tmp_path)):
    record = json.loads((tmp_path / ".lock").read_text())
    assert record["pid"] == os.getpid()
    with workdir_lock.WorkdirLock(str(tmp_path)):   # re-entrant in one process
      pass
  assert "taking over the lock" in caplog.text and str(holder.pid) in caplog.text
  assert (tmp_path / ".lock").read_text() == ""   # a clean release leaves no holder


def _main(workdir, *extra, prefix=(), **popen):
  args = [*prefix, sys.executable, os.path.join(ROOT, "main.py"),
          "--config=configs/digits.py:runlocal", f"--workdir={workdir}", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen)


def test_two_main_processes_into_one_workdir(tmp_path, digits_dir):
  """The second is refused within seconds, naming the first; the first's metrics appear
  once each. Then a permission-denied restore: one line, nothing moved or changed."""
  workdir = tmp_path / "run"
  data = f"--config.dataset.data_dir={digits_dir}"
  first = _main(workdir, "--config.num_steps=40", "--config.checkpoint_every=40", data)
  deadline = time.time() + 120
  while not (workdir / ".lock").exists() or not (workdir / ".lock").read_text():
    assert time.time() < deadline and first.poll() is None, first.communicate()
    time.sleep(0.2)
  start = time.time()
  second = _main(workdir, "--config.num_steps=40", "--config.checkpoint_every=40", data)
  _, err = second.communicate(timeout=120)
  assert second.returncode == 1, err
  assert time.time() - start < 60
  lines = [l for l in err.strip().split("\n") if l.startswith("error:")]
  assert len(lines) == 1 and "in use by another run" in lines[0]
  assert f"pid {first.pid}" in lines[0]
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-2000:]
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().split("\n")
           if l.strip()]
  assert steps == list(range(1, 41))

  # Then the newest checkpoint becomes unreadable for real (mode 000; as root, the rerun
  # runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH under setpriv): the rerun, which
  # must restore it, stops with one line naming the path and the cause, exit 1, and the
  # workdir is unchanged byte for byte (nothing set aside).
  before = _snapshot(str(workdir))
  newest = workdir / "checkpoints" / "40"
  prefix = []
  if os.geteuid() == 0:
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop root's override"
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
  os.chmod(newest, 0)
  try:
    proc = _main(workdir, "--config.num_steps=50", "--config.checkpoint_every=40", data,
                 prefix=prefix)
    _, err = proc.communicate(timeout=300)
  finally:
    os.chmod(newest, 0o755)
  assert proc.returncode == 1, err[-3000:]
  errors = [l for l in err.strip().split("\n") if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
  assert str(newest) in errors[0] and "Permission denied" in errors[0], errors[0]
  assert _snapshot(str(workdir)) == before


def test_one_line_errors_and_verbose(tmp_path):
  proc = _main(tmp_path / "w", "--config.optimizer.lr=0.1")
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert err.strip().split("\n")[-1] == (
      "error: unknown config key 'optimizer.lr' in --config.optimizer.lr; optimizer has: "
      "base_lr, grad_clip_norm, momentum, name, nesterov, warmup_epochs, weight_decay")
  assert "Traceback" not in err
  proc = _main(tmp_path / "w", "--config.batch_size=-3", "--verbose")
  _, err = proc.communicate(timeout=120)
  assert proc.returncode != 0 and "Traceback" in err and "ConfigError" in err
  assert not (tmp_path / "w").exists()   # a refused config touches nothing


def test_override_errors_name_the_path_and_nearest_keys():
  """The message main.py prints for a mistyped --config key (in-process)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("projnce_main", os.path.join(ROOT, "main.py"))
  main = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(main)
  config = f"--config={os.path.join(ROOT, 'configs', 'digits.py')}:runlocal"
  assert main._override_error(["main.py", config, "--config.optimiser.base_lr=0.1"]) == (
      "unknown config key 'optimiser.base_lr' in --config.optimiser.base_lr; did you mean "
      "'optimizer'?")
  assert main._override_error(["main.py", config, "--config.batch_size.x=1"]).endswith(
      "; batch_size is a value, not a block of fields")
  assert main._override_error(["main.py", config, "--config.batch_size=3"]) is None
  # An unknown field found by validation names the nearest field too.
  from projnce_jax.train import validate  # pylint: disable=g-import-not-at-top
  with pytest.raises(validate.ConfigKeyError, match="did you mean 'beta'"):
    validate.validate_config(_with_unknown_field())


def _with_unknown_field():
  from projnce_jax.train.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.unlock()
  c.loss.betta = 0.5
  return c


def test_rerun_below_the_checkpoint_is_refused_and_changes_are_recorded(tiny_config, tmp_path,
                                                                        caplog):
  workdir = str(tmp_path)
  train_and_evaluate(tiny_config(num_steps=10, checkpoint_every=10), workdir)
  before = _snapshot(workdir)
  with pytest.raises(train.ConfigError, match="newest checkpoint .* is at step 10"):
    train_and_evaluate(tiny_config(num_steps=6, checkpoint_every=10), workdir)
  assert _snapshot(workdir) == before   # nothing changed, byte for byte
  results = train_and_evaluate(tiny_config(num_steps=14, checkpoint_every=10), workdir)
  history = results["settings_history"]
  assert [h["resumed_from_step"] for h in history] == [None, 10]
  assert history[1]["changes"] == {"num_steps": [10, 14]} and history[1]["total_steps"] == 14
  assert "learning-rate schedule is recomputed for 14 steps" in caplog.text
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["settings_history"] == history


def _largest_file(folder):
  files = [os.path.join(r, n) for r, _, ns in os.walk(folder) for n in ns
           if n != "manifest.json"]
  return max(files, key=os.path.getsize)


def test_a_flipped_byte_is_found_before_restoring(tiny_config, tmp_path, caplog):
  """One flipped byte in the newest checkpoint's array data: set aside with a warning
  naming the file, the previous checkpoint used, and the rerun ends at the same step."""
  workdir = str(tmp_path)
  config = tiny_config(num_steps=10, checkpoint_every=5)
  train_and_evaluate(config, workdir)
  victim = _largest_file(tmp_path / "checkpoints" / "10")
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  results = train_and_evaluate(config, workdir)
  assert results["steps"] == 10
  assert (tmp_path / "checkpoints_unreadable" / "10").exists()
  rel = os.path.relpath(victim, tmp_path / "checkpoints" / "10")
  assert f"file {rel} differs from what was written" in caplog.text
  assert results["settings_history"][-1]["resumed_from_step"] == 5


def test_an_unreadable_checkpoint_moves_nothing(tiny_config, tmp_path, monkeypatch):
  """A permission error while checking the newest checkpoint is not evidence of damage:
  CheckpointRestoreError names the path and the cause, and nothing is moved."""
  from projnce_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  config = tiny_config(num_steps=10, checkpoint_every=5)
  train_and_evaluate(config, workdir)
  before = _snapshot(workdir)
  real_stat = os.stat
  locked = str(tmp_path / "checkpoints" / "10")

  def stat(path, *a, **k):
    if str(path).startswith(locked + os.sep):
      raise PermissionError(13, "Permission denied", str(path))
    return real_stat(path, *a, **k)

  monkeypatch.setattr(checkpoint.os, "stat", stat)
  with pytest.raises(train.CheckpointRestoreError, match="cannot be read .*Permission denied"):
    train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert _snapshot(workdir) == before
  assert not (tmp_path / "checkpoints_unreadable").exists()


def test_a_full_disk_ends_the_run_with_one_line(tiny_config, tmp_path, monkeypatch):
  """ENOSPC during a save: WorkdirError naming the last good checkpoint (main.py prints it
  as one line); too little free space before a save: the same, before writing."""
  import errno  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import trainer  # pylint: disable=g-import-not-at-top
  real_save = checkpoint.Checkpointer.save

  def save(self, step, *a, **k):
    if step == 10:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  workdir = tmp_path / "a"
  with pytest.raises(train.WorkdirError, match=r"disk filled up while saving the checkpoint "
                     r"of step 10; the last good checkpoint is .*checkpoints/5;"):
    train_and_evaluate(tiny_config(num_steps=10, checkpoint_every=5), str(workdir))
  monkeypatch.undo()

  real_usage = trainer.shutil.disk_usage
  calls = []

  def usage(path):
    u = real_usage(path)
    if not str(path).endswith("checkpoints"):
      return u
    calls.append(path)
    return u._replace(free=0) if len(calls) > 1 else u   # full after the first save

  monkeypatch.setattr(trainer.shutil, "disk_usage", usage)
  with pytest.raises(train.WorkdirError, match=r"only 0 MiB free for the checkpoint of "
                     r"step 10 .*last good checkpoint is .*checkpoints/5;"):
    train_and_evaluate(tiny_config(num_steps=10, checkpoint_every=5), str(tmp_path / "b"))


def test_half_deleted_old_checkpoints_are_finished_off(tiny_config, tmp_path, caplog):
  workdir = str(tmp_path)
  config = tiny_config(num_steps=10, checkpoint_every=5, keep_checkpoints=3)
  train_and_evaluate(config, workdir)
  old = tmp_path / "checkpoints" / "5"
  (old / "_CHECKPOINT_METADATA").unlink()   # a cleanup killed half-way
  os.remove(_largest_file(old))
  results = train_and_evaluate(config, workdir)
  assert not old.exists() and (tmp_path / "checkpoints" / "10").exists()
  assert "finished deleting old checkpoint(s) [5]" in caplog.text
  assert results["settings_history"][-1]["resumed_from_step"] == 10
  assert not (tmp_path / "checkpoints_unreadable").exists()


def test_sigint_on_one_process_saves_and_stops(tiny_config, tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import trainer  # pylint: disable=g-import-not-at-top

  def interrupt(step, state, record):
    del state, record
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)

  exp = trainer.Experiment(tiny_config(num_steps=10, checkpoint_every=5))
  with pytest.raises(trainer.Preempted, match="stopped by SIGINT at step 3") as info:
    trainer.train(exp, str(tmp_path), hooks=[interrupt])
  assert info.value.signum == signal.SIGINT
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


def test_a_signal_during_evaluation_lets_it_finish(tiny_config, tmp_path, monkeypatch, caplog):
  """SIGTERM or SIGINT during the final evaluation: logged, evaluation finishes, results are
  written and the run returns normally (documented in docs/reliability.md)."""
  import signal  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import trainer  # pylint: disable=g-import-not-at-top
  real_probe = trainer.eval_lib.linear_probe
  sent = []

  def probe(*a, **k):
    for signum in (signal.SIGTERM, signal.SIGINT):
      os.kill(os.getpid(), signum)
      sent.append(signum)
    return real_probe(*a, **k)

  monkeypatch.setattr(trainer.eval_lib, "linear_probe", probe)
  before = signal.getsignal(signal.SIGINT)   # SIG_IGN in a pytest-xdist worker
  results = train_and_evaluate(tiny_config(num_steps=6, checkpoint_every=6), str(tmp_path))
  assert len(sent) == 2 and results["linear_probe_accuracy"] > 0
  assert (tmp_path / "results.json").exists()
  assert caplog.text.count("during the evaluation: finishing it") == 2
  assert signal.getsignal(signal.SIGINT) == before   # restored


def test_edited_iterator_metadata_is_set_aside(tiny_config, tmp_path, caplog):
  """`next_index` edited in the newest checkpoint's data-iterator state: the manifest
  check finds it and the run resumes from the previous checkpoint."""
  workdir = str(tmp_path)
  config = tiny_config(num_steps=10, checkpoint_every=5)
  train_and_evaluate(config, workdir)
  data_files = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path / "checkpoints" / "10")
                for n in ns if "next_index" in open(os.path.join(r, n), "rb").read(
                    1 << 16).decode("utf-8", "ignore")]
  assert data_files, "the loader's state holds next_index"
  text = open(data_files[0]).read()
  value = json.loads(text)
  edited = json.dumps(_bump_next_index(value))
  with open(data_files[0], "w") as f:
    f.write(edited)
  results = train_and_evaluate(config, workdir)
  assert (tmp_path / "checkpoints_unreadable" / "10").exists()
  assert "differs from what was written" in caplog.text or "bytes" in caplog.text
  assert results["settings_history"][-1]["resumed_from_step"] == 5


def _bump_next_index(value):
  if isinstance(value, dict):
    return {k: (v + 1 if k == "next_index" and isinstance(v, int) else _bump_next_index(v))
            for k, v in value.items()}
  if isinstance(value, list):
    return [_bump_next_index(v) for v in value]
  return value


def test_a_newest_checkpoint_without_manifest_yields_to_a_verified_one(tiny_config, tmp_path,
                                                                       caplog):
  """Killed between the save and its manifest: the newest is unverified, not damaged; the
  newest verified checkpoint is used, with a warning, and nothing is set aside."""
  workdir = str(tmp_path)
  config = tiny_config(num_steps=10, checkpoint_every=5)
  train_and_evaluate(config, workdir)
  os.remove(tmp_path / "checkpoints" / "10" / "manifest.json")
  results = train_and_evaluate(config, workdir)
  assert "have no manifest (unverified" in caplog.text
  assert results["settings_history"][-1]["resumed_from_step"] == 5
  assert not (tmp_path / "checkpoints_unreadable").exists()
  assert (tmp_path / "checkpoints_unverified" / "10").exists()   # kept
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int)[-1] == "10"   # re-made


@pytest.mark.parametrize("async_save", [True, False])
def test_the_manifest_is_written_before_the_commit(tmp_path, monkeypatch, async_save):
  """The manifest goes into orbax's temporary folder before the rename that commits the
  checkpoint: no committed checkpoint can lack one."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  assert ckpt_lib._ManifestedRename is not None  # this orbax offers the hook
  calls = []
  real = ckpt_lib.write_manifest

  def spy(folder, exclude=()):
    calls.append((folder, os.path.exists(tmp_path / "ckpt" / "3"),
                  sorted(os.listdir(folder))))
    real(folder, exclude)

  monkeypatch.setattr(ckpt_lib, "write_manifest", spy)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=async_save)
  state = {"w": jnp.arange(6.0)}
  assert ckpt.save(3, state, {"next_index": 7})
  ckpt.close()
  # One call, on the step's temporary folder (its items already in place), while the
  # final folder did not exist yet.
  assert len(calls) == 1 and calls[0][1] is False
  assert os.path.basename(calls[0][0]) != "3" and {"state", "data"} <= set(calls[0][2])
  folder = str(tmp_path / "ckpt" / "3")
  listed = json.load(open(os.path.join(folder, "manifest.json")))["files"]
  assert listed and ckpt_lib.COMMIT_RECORD not in listed
  assert any(name.startswith("state") for name in listed)
  assert ckpt_lib.find_damage(folder) is None and ckpt_lib.is_verified(folder)

"""benchmarks/accelerator_check.sh: the GPU host's one-shot check, smoke-run on this CPU.

The host has jax, flax, optax, orbax-checkpoint, chex and numpy only, so the smoke run
happens with the training-data stack made unimportable; on a CPU without --small the check
must refuse within seconds instead of timing the CPU.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.sh")
ABSENT_ON_HOST = ("ml_collections", "tensorflow_datasets", "grain", "dm_pix", "librosa",
                  "tensorflow", "tensorboardX", "mlxtend", "sklearn")


def _env(tmp_path):
  """A CPU environment in which the packages the GPU host lacks cannot be imported."""
  blocked = tmp_path / "blocked"
  for name in ABSENT_ON_HOST:
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on the GPU host')\n")
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu",
             PYTHONPATH=str(blocked))
  env.pop("OUT", None)
  # One CPU device, as on a single-chip host; the suite's other XLA flags are kept.
  env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  return env


def test_small_run_without_the_data_stack_writes_every_item(tmp_path):
  out = tmp_path / "accel.json"
  env = _env(tmp_path)
  check = subprocess.run([sys.executable, "-c", "import ml_collections"], env=env,
                         capture_output=True, text=True)
  assert check.returncode != 0 and "not installed on the GPU host" in check.stderr
  proc = subprocess.run(["bash", SCRIPT, "--small", "--out", str(out)], env=env,
                        timeout=300, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["small"] and report["platform"] == "cpu" and not report["errors"], report
  assert report["versions"]["jax"] and report["gemm"]["flops_per_s"] > 0
  assert {(c["path"], c["n"]) for c in report["loss"]} == {
      (p, n) for p in ("fused", "xla", "dense_nxn") for n in (256, 512)}
  for case in report["loss"] + report["block_sweep"]:
    assert "error" not in case and "skipped" not in case, case
    assert case["time_s"] > 0 and case["fraction_of_gemm"] > 0, case
  assert all(c["planned_bytes"] > 0 for c in report["loss"])
  assert len(report["block_sweep"]) >= 2
  steps = {c["method"]: c for c in report["train_step"]}
  assert set(steps) == {"projnce", "cross_entropy"}
  assert all(c["images_per_s"] > 0 for c in steps.values()), steps
  assert "accelerator check:" in proc.stdout and "of GEMM" in proc.stdout


def test_json_goes_to_out_dir_when_set(tmp_path):
  env = _env(tmp_path)
  env["OUT"] = str(tmp_path / "out")
  proc = subprocess.run(["bash", SCRIPT, "--small", "--budget-s", "0"], env=env, timeout=120,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((tmp_path / "out" / "accelerator_check.json").read_text())
  # A spent budget: everything after the GEMM rate is recorded as skipped, nothing is lost.
  assert all(c.get("skipped") == "time budget"
             for c in report["loss"] + report["block_sweep"] + report["train_step"])


def test_refuses_a_cpu_backend_within_seconds(tmp_path):
  out = tmp_path / "accel.json"
  start = time.perf_counter()
  proc = subprocess.run(["bash", SCRIPT, "--out", str(out)], env=_env(tmp_path), timeout=120,
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert time.perf_counter() - start < 30
  assert "not a GPU or TPU" in proc.stderr
  report = json.loads(out.read_text())
  assert report["loss"] == [] and "not a GPU or TPU" in report["errors"][0]

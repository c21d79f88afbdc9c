"""Tests of the experiment scripts; `run_smallest` runs one as a user would."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_smallest(script: str, out_dir, *extra, timeout: int = 600) -> str:
  """Runs `script --smallest --out out_dir *extra` on one CPU device; returns its stdout.

  One device, as the experiments run outside the test suite (whose conftest asks XLA for
  8 fake devices). Fails the test with the end of stderr when the script fails.
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, script, "--smallest", "--out", str(out_dir), *extra],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout

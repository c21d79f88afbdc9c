"""benchmarks/accelerator_check.sh --small runs on CPU and writes the full JSON report."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_accelerator_check_small_writes_every_item(tmp_path):
  out = tmp_path / "accel.json"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  # One CPU device, as on a single-chip host; the suite's other XLA flags are kept.
  env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "accelerator_check.sh"),
                  "--small", "--out", str(out)], env=env, check=True, timeout=300,
                 capture_output=True)
  report = json.loads(out.read_text())
  assert report["small"] and report["dtype"] == "bfloat16" and not report["errors"]
  assert report["matmul"]["flops"] > 0
  paths = {(c["path"], c["n"]) for c in report["loss"]}
  assert paths == {(p, n) for p in ("dense", "blockwise", "classpath", "infonce")
                   for n in (256, 512)}
  for case in report["loss"]:
    assert "error" not in case and case["time_s"] > 0, case
    if case["path"] != "classpath":
      assert case["fraction_of_matmul_rate"] > 0
  step = report["train_step"]
  assert "error" not in step, step
  assert step["projnce_images_per_s"] > 0 and step["cross_entropy_images_per_s"] > 0

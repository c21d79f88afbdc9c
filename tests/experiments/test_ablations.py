"""End-to-end check of experiments/ablations/run.py in its --smallest setting."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "ablations", "run.py")


def _run(out_dir, *extra):
  # One CPU device, as the experiment runs outside the test suite.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, SCRIPT, "--smallest", "--out", str(out_dir), *extra],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, json.loads((out_dir / "results.json").read_text())


def test_smallest_partial_then_resumed_to_complete(tmp_path):
  # A budget of 3 cells: partial results, said so.
  _, part = _run(tmp_path, "--max_cells", "3")
  assert part["cells_planned"] == 8 and part["cells_done"] == 3 and part["cells_run_now"] == 3
  text = (tmp_path / "results.md").read_text()
  assert "3 / 8 done" in text and "PARTIAL" in text

  # The rest: the finished cells are reused from their cache, not trained again.
  stdout, full = _run(tmp_path)
  assert stdout.count("reused") == 3 and full["cells_run_now"] == 5
  assert full["cells_done"] == 8
  groups = {(c["group"], c["cell"]) for c in full["cells"]}
  assert groups == {("centroid", "beta0_tau0.1"), ("centroid", "beta1_tau0.1"),
                    ("kernel", "h0.5"), ("control", "beta1_tau0.1")}
  for c in full["cells"]:
    assert c["status"] == "ok" and 0.0 <= c["linear_probe_accuracy"] <= 1.0
    assert c["intra_z"] > 0.0 and c["heldout_mi_bound"] is not None
  # Paired comparisons over both seeds, each with a 95% t-interval around its mean.
  kinds = {c["kind"] for c in full["comparisons"]}
  assert kinds == {"R_vs_supcon", "R_vs_control", "control_vs_supcon", "kernel"}
  for comp in full["comparisons"]:
    ci = comp["linear_probe_accuracy"]
    assert ci["n"] == 2 and comp["linear_probe_accuracy"]["seeds"] == [0, 1]
    assert ci["lo"] <= ci["mean"] <= ci["hi"]
  text = (tmp_path / "results.md").read_text()
  assert "8 / 8 done" in text and "PARTIAL" not in text
  assert "95% t-interval" in text and "## Verdict (computed)" in text
  assert (tmp_path / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

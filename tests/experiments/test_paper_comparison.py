"""End-to-end check of experiments/paper_comparison/run.py in its --small setting."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "paper_comparison", "run.py")


def _run_small(out_dir):
  # One CPU device, as the experiment runs outside the test suite (whose conftest asks XLA
  # for 8 fake devices).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(out_dir)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_small_setting_end_to_end_and_resume(tmp_path):
  _run_small(tmp_path)
  for name in ("results.md", "results.json", "accuracy.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  result = json.loads((tmp_path / "results.json").read_text())

  # Two cells, each trained by the trainer in its own folder, with both accuracies.
  assert len(result["cells"]) == 2 and result["cells_run_now"] == 2
  for cell in result["cells"]:
    assert cell["status"] == "ok"
    assert 0.0 <= cell["linear_probe_accuracy"] <= 1.0
    assert 0.0 <= cell["knn_accuracy"] <= 1.0
    assert cell["heldout_mi_bound"] is not None  # both cells are contrastive
    assert cell["train_batch_mi_estimate"] is not None
    workdir = (tmp_path / "runs" / "mnist5k" / f"noise{cell['noise']:g}" / cell["method"]
               / f"seed{cell['seed']}")
    assert (workdir / "results.json").exists() and (workdir / "metrics.jsonl").exists()
  assert set(result["summary"]) == {"mnist5k|0.3|supcon", "mnist5k|0.3|projnce_centroid"}
  assert result["verdict"]["rule"].startswith("|mean difference| > 2")
  assert {p["reference"] for p in result["verdict"]["pairs"]} == {"supcon"}

  text = (tmp_path / "results.md").read_text()
  assert "Command: `" in text and "Machine: " in text and "CPU cores" in text
  table = [l for l in text.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| method | probe, noise 0.3 | kNN, noise 0.3 | held-out MI bound, noise 0.3")
  assert any(l.startswith("| supcon |") for l in table)
  assert any(l.startswith("| projnce_centroid |") for l in table)
  assert "## Verdict" in text

  # A second invocation reuses the finished cells instead of training them again.
  stdout = _run_small(tmp_path)
  assert stdout.count("reused") == 2
  assert json.loads((tmp_path / "results.json").read_text())["cells_run_now"] == 0

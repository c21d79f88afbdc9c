"""scripts/demo_table.py writes the README demo table from results.json, nothing else."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "demo_table.py")


def _results(tmp_path, **extra):
  runs = [{"name": n, "method": m, "linear_probe_accuracy": a, "knn_accuracy": k,
           "train_seconds": s, "steps": 280, "batch_size": 256, "dataset": "mnist5k",
           "eval_split": "test", "mi_lower_bound": 9.99, **extra}
          for n, m, a, k, s in (("projnce", "projnce (centroid/sample, beta=1)", 0.9712,
                                 0.9601, 99.4), ("cross_entropy", "cross_entropy", 0.9745,
                                                 0.9662, 88.6))]
  work = tmp_path / "demo"
  work.mkdir()
  (work / "results.json").write_text(json.dumps({"dataset": "mnist5k", "runs": runs}))
  return work


def test_table_is_written_between_the_markers_only(tmp_path):
  work = _results(tmp_path)
  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- demo-table:begin -->\nold | 1 |\n<!-- demo-table:end -->\nrest\n")
  subprocess.run([sys.executable, SCRIPT, str(work), "--readme", str(readme),
                  "--load", "load average: 1.00, 1.00, 1.00"], check=True,
                 capture_output=True)
  text = readme.read_text()
  assert text.startswith("intro\n<!-- demo-table:begin -->\n") and text.endswith(
      "<!-- demo-table:end -->\nrest\n")
  assert "old | 1 |" not in text
  assert "| projnce (centroid/sample, beta=1) | 97.1 | 96.0 | 99 |" in text
  assert "| cross_entropy | 97.5 | 96.6 | 89 |" in text
  assert "load average: 1.00" in text and "results.json" in text
  assert "9.99" not in text   # the training-batch estimate is not shown as a bound


def test_heldout_bound_column_and_missing_markers(tmp_path):
  work = _results(tmp_path, heldout_mi_bound=1.234)
  readme = tmp_path / "README.md"
  readme.write_text("<!-- demo-table:begin -->\n<!-- demo-table:end -->\n")
  subprocess.run([sys.executable, SCRIPT, str(work), "--readme", str(readme)], check=True,
                 capture_output=True)
  assert "| 97.1 | 96.0 | 1.234 | 99 |" in readme.read_text()
  readme.write_text("no markers\n")
  proc = subprocess.run([sys.executable, SCRIPT, str(work), "--readme", str(readme)],
                        capture_output=True, text=True)
  assert proc.returncode != 0 and "demo-table:begin" in proc.stderr
  assert readme.read_text() == "no markers\n"


def test_keep_copies_the_results_and_cites_the_copy(tmp_path):
  work = _results(tmp_path)
  readme = tmp_path / "README.md"
  readme.write_text("<!-- demo-table:begin -->\n<!-- demo-table:end -->\n")
  kept = tmp_path / "docs" / "demo" / "results.json"
  subprocess.run([sys.executable, SCRIPT, str(work), "--readme", str(readme), "--keep",
                  str(kept)], check=True, capture_output=True)
  assert kept.read_text() == (work / "results.json").read_text()
  assert str(kept) in readme.read_text()


def test_make_demo_outputs_are_untracked():
  """`make demo` writes only under runs/, which git ignores and tracks nothing of."""
  if not os.path.isdir(os.path.join(ROOT, ".git")):
    pytest.skip("not a git checkout")
  tracked = subprocess.run(["git", "ls-files", "runs"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
  assert tracked == ""
  ignored = subprocess.run(["git", "check-ignore", "runs/demo/results.json",
                            "runs/demo/report.md"], cwd=ROOT, capture_output=True, text=True)
  assert ignored.returncode == 0 and len(ignored.stdout.split()) == 2
  with open(os.path.join(ROOT, "Makefile")) as f:
    makefile = f.read()
  demo = makefile.split("\ndemo: ")[1].split("\n\n")[0]
  assert "--workdir=runs/demo" in demo and "README" not in demo

"""End-to-end check of experiments/mi_bound/run.py in its --small setting."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "mi_bound", "run.py")


def _run_small(out_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(out_dir)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out_dir / "results.json") as f:
    return json.load(f)


def _means(result, key):
  return np.array([c["stats"][key]["mean"] for c in result["cells"].values()])


def test_small_setting_end_to_end(tmp_path):
  result = _run_small(tmp_path)
  for name in ("results.md", "results.json", "mi_bound.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert (tmp_path / "mi_bound.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  truth = result["truth"]
  assert 0.5 < truth["mi"] < truth["log_m"]
  rows = {r["key"]: r for r in result["rows"]}
  assert len(result["cells"]) == 4

  # Every ProjNCE bound with g- = sample (R included) stays below I(X;C) in every cell.
  bound_rows = [k for k, r in rows.items() if r["kind"] == "bound" and r["negatives"] == "sample"]
  assert {f"bound/{p}" for p in ("centroid", "median", "kernel", "orthogonal", "mlp")} <= set(
      bound_rows)
  for key in bound_rows:
    assert np.all(_means(result, key) < truth["mi"]), key
  assert result["verdict"]["all_bounds_below"]

  # The scaled-up g+ without R exceeds I(X;C), and log M, in every cell; with R it does not.
  alpha = max(result["setting"]["alphas"])
  assert np.all(_means(result, f"scaled{alpha:g}/no_r") > truth["log_m"])
  assert np.all(_means(result, f"scaled{alpha:g}/bound") < truth["mi"])
  assert f"scaled{alpha:g}/no_r" in result["verdict"]["exceeded"]

  # SupCon is the no-R centroid row; the markdown carries the computed verdict.
  assert result["verdict"]["supcon_vs_no_r_centroid_max_abs_diff"] < 1e-9
  text = (tmp_path / "results.md").read_text()
  assert "## Verdict" in text and "**yes**" in text and "log(N-1)" in text

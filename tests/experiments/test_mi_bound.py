"""End-to-end check of experiments/mi_bound/run.py in its --small setting."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "mi_bound", "run.py")


def _run_small(out_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(out_dir)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out_dir / "results.json") as f:
    return json.load(f)


def _means(result, key):
  return np.array([c["stats"][key]["mean"] for c in result["cells"].values()])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(out dir, results.json) of one --small run shared by the tests of this module."""
  out = tmp_path_factory.mktemp("mi_bound_small")
  return out, _run_small(out)


def test_small_setting_end_to_end(small):
  tmp_path, result = small
  for name in ("results.md", "results.json", "mi_bound.png", "trained_critics.png"):
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


def test_trained_critic_heldout_bound_stays_below_truth(small):
  tmp_path, result = small
  truth = result["truth"]
  tc = result["trained_critics"]
  assert len(tc["summary"]) == 2 and len(tc["runs"]) == 4
  for cell in tc["summary"].values():
    # The held-out bound of a trained critic stays below I(X;C) + 3 standard errors.
    assert cell["heldout"] < truth["mi"] + 3 * np.hypot(cell["heldout_se"], truth["se"])
    # The training-batch figure is optimistic: above the held-out bound of the same critic.
    assert cell["train_estimate"] > cell["heldout"]
  # The critics are trained: more data gives a tighter held-out bound.
  small, large = (tc["summary"][k]["heldout"] for k in ("tau=0.5,n=64", "tau=0.5,n=1024"))
  assert large > small + 0.1
  assert tc["all_heldout_below"]
  text = (tmp_path / "results.md").read_text()
  assert "## Trained critics" in text and "training-batch estimate passes I(X;C)" in text

"""End-to-end check of experiments/ablations/run.py in its --smallest setting."""
import json
import os
import shutil
import sys

import numpy as np

from tests.experiments import run_smallest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "ablations", "run.py")


def _run(out_dir, *extra):
  stdout = run_smallest(SCRIPT, out_dir, *extra, timeout=900)
  return stdout, json.loads((out_dir / "results.json").read_text())


def test_smallest_partial_then_resumed_to_complete(tmp_path):
  # A budget of 2 cells: partial results, said so.
  _, part = _run(tmp_path, "--max_cells", "2")
  assert part["cells_planned"] == 4 and part["cells_done"] == 2 and part["cells_run_now"] == 2
  text = (tmp_path / "results.md").read_text()
  assert "2 / 4 done" in text and "PARTIAL" in text
  stored = sorted(p.relative_to(tmp_path / "cells").as_posix()
                  for p in (tmp_path / "cells").rglob("*.json"))
  assert stored == ["noise0/centroid/beta0_tau0.1/seed0.json",
                    "noise0/centroid/beta1_tau0.1/seed0.json"]

  # The rest, in a fresh checkout (trainer folders are not committed): the finished cells
  # are read from cells/, not trained again.
  shutil.rmtree(tmp_path / "runs")
  stdout, full = _run(tmp_path)
  assert stdout.count("reused") == 2 and full["cells_run_now"] == 2
  assert full["cells_done"] == 4
  groups = {(c["group"], c["cell"]) for c in full["cells"]}
  assert groups == {("centroid", "beta0_tau0.1"), ("centroid", "beta1_tau0.1"),
                    ("kernel", "h0.5"), ("control", "beta1_tau0.1")}
  for c in full["cells"]:
    assert c["status"] == "ok" and 0.0 <= c["linear_probe_accuracy"] <= 1.0
    assert c["intra_z"] > 0.0 and c["heldout_mi_bound"] is not None
  kinds = {c["kind"] for c in full["comparisons"]}
  assert kinds == {"R_vs_supcon", "R_vs_control", "control_vs_supcon", "kernel"}
  for comp in full["comparisons"]:  # one seed: a difference, no interval
    assert comp["linear_probe_accuracy"]["n"] == 1
    assert comp["linear_probe_accuracy"]["lo"] is None
  text = (tmp_path / "results.md").read_text()
  assert "4 / 4 done" in text and "PARTIAL" not in text
  assert "95% t-interval" in text and "## Verdict (computed)" in text
  assert (tmp_path / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _module():
  sys.path.insert(0, os.path.dirname(SCRIPT))
  try:
    import run as ablations  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(os.path.dirname(SCRIPT))
    sys.modules.pop("run", None)
  return ablations


def test_paired_t_interval_and_comparisons():
  from scipy import stats  # pylint: disable=import-outside-toplevel
  ab = _module()
  d = [0.02, 0.03, 0.025]
  ci = ab.t_interval(d)
  half = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
  np.testing.assert_allclose([ci["lo"], ci["hi"]], [np.mean(d) - half, np.mean(d) + half])
  assert ci["excludes_zero"] and not ab.t_interval([0.1, -0.1, 0.05])["excludes_zero"]
  assert ab.t_interval([0.1])["lo"] is None
  # Three equal differences: no spread, so no interval and nothing called significant.
  flat = ab.t_interval([0.0025, 0.0025, 0.0025])
  assert flat["degenerate"] and not flat["excludes_zero"]
  assert "no interval" in ab._ci(flat, 100) and "**" not in ab._ci(flat, 100)
  assert ab._ci(ci, 100).startswith("**")

  grid = ab.Grid(betas=(0.0, 1.0), temperatures=(0.1,), bandwidths=(0.5,))
  # Each control cell follows its centroid cell, so partial sweeps hold whole comparisons.
  assert [(c.group, c.name) for c in ab.cells_for(grid)] == [
      ("centroid", "beta0_tau0.1"), ("centroid", "beta1_tau0.1"),
      ("control", "beta1_tau0.1"), ("kernel", "h0.5")]
  full = [(c.group, c.name) for c in ab.cells_for(ab.FULL_GRID)]
  assert len(full) == 37  # the kernel cells follow the 11 cells at tau = 0.1
  assert full[11:15] == [("kernel", f"h{h:g}") for h in (0.25, 0.5, 1, 2)]
  off_grid = ab.Grid(betas=(0.0,), temperatures=(0.2,), bandwidths=(1.0,), kernel_tau=0.1)
  assert [c.group for c in ab.cells_for(off_grid)] == ["centroid", "kernel"]
  acc = {("centroid", "beta0_tau0.1"): [0.90, 0.91, 0.92],
         ("centroid", "beta1_tau0.1"): [0.93, 0.93, 0.95],
         ("control", "beta1_tau0.1"): [0.90, 0.92, 0.91],
         ("kernel", "h0.5"): [0.93, 0.94, 0.95]}
  records = {k: {s: {"linear_probe_accuracy": v, "knn_accuracy": v, "intra_z": 0.1}
                 for s, v in enumerate(vals)} for k, vals in acc.items()}
  del records[("kernel", "h0.5")][2]  # a missing seed: pairs use the common seeds only
  comps = {c["label"]: c for c in ab.comparisons(grid, records)}
  r = comps["centroid beta=1 - beta=0, tau=0.1"]["linear_probe_accuracy"]
  np.testing.assert_allclose(r["mean"], np.mean([0.03, 0.02, 0.03]))
  k = comps["kernel h=0.5 - centroid (beta=1, tau=0.1)"]["linear_probe_accuracy"]
  assert k["n"] == 2 and k["seeds"] == [0, 1]

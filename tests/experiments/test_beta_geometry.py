"""End-to-end check of experiments/beta_geometry/run.py in its --small setting."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = os.path.join(ROOT, "experiments", "beta_geometry")
SCRIPT = os.path.join(EXP, "run.py")


def _module():
  sys.path.insert(0, EXP)
  try:
    import run as bg  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(EXP)
    sys.modules.pop("run", None)
  return bg


def test_cluster_spread_measures():
  bg = _module()
  labels = np.repeat(np.arange(3), 50)
  centers = np.eye(3, 8) * 10
  rng = np.random.default_rng(0)
  tight = centers[labels] + 0.1 * rng.standard_normal((150, 8))
  loose = centers[labels] + 3.0 * rng.standard_normal((150, 8))
  t, l = bg.cluster_spread(tight, labels), bg.cluster_spread(loose, labels)
  assert 0 < t["intra"] < l["intra"]
  assert abs(t["inter"] - 1.0) < 0.01  # orthogonal class means: cosine distance 1
  assert t["ratio"] == t["intra"] / t["inter"]
  # Collapsed classes: every point on its class-mean direction.
  assert bg.cluster_spread(centers[labels], labels)["intra"] < 1e-12


def test_small_setting_end_to_end(tmp_path):
  # One CPU device, as the experiment runs outside the test suite (whose conftest asks XLA
  # for 8 fake devices).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.md", "results.json", "tsne.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  assert (tmp_path / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  result = json.loads((tmp_path / "results.json").read_text())

  assert [c["run"] for c in result["cells"]] == ["beta0", "beta5"]
  for cell in result["cells"]:
    assert cell["status"] == "ok"
    # Every cell records the code version and the environment it ran with.
    assert len(cell["code"]["sha256"]) == 16 and cell["environment"]["jax"]
    key = f"noise0.3/{cell['run']}/seed0"
    emb = np.load(tmp_path / "runs" / f"{key}-{cell['config_hash']}" / "embeddings.npz")
    assert emb["z"].shape == (1000, 128) and emb["label"].shape == (1000,)
    np.testing.assert_allclose(np.linalg.norm(emb["z"], axis=1), 1.0, atol=1e-4)
    for space in ("z", "features"):
      g = cell["geometry"][space]
      assert g["intra"] >= 0 and g["inter"] > 0
      assert abs(g["ratio"] - g["intra"] / g["inter"]) < 1e-12
  assert [c["beta"] for c in result["cells"]] == [0.0, 5.0]

  text = (tmp_path / "results.md").read_text()
  assert "Command: `" in text and "Machine: " in text and "CPU cores" in text
  assert "Code: commit " in text
  table = [l for l in text.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| run | seeds | probe | kNN | held-out MI bound (nats) | "
                             "mean R (train batch) | intra (z)")
  assert all(c["heldout_mi_bound"] is not None for c in result["cells"])
  assert any(l.startswith("| beta0 | 1 |") for l in table)
  assert any(l.startswith("| beta5 | 1 |") for l in table)
  assert "## Verdict" in text and "![t-SNE](tsne.png)" in text
  assert "Not enough paired seeds" in text  # one seed: no interval, no verdict

  # A second invocation trains nothing: the finished cells are read back.
  again = subprocess.run([sys.executable, SCRIPT, "--small", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.loads((tmp_path / "results.json").read_text())
  assert rerun["cells_run_now"] == 0 and rerun["cells_done"] == 2
  assert [c["linear_probe_accuracy"] for c in rerun["cells"]] == [
      c["linear_probe_accuracy"] for c in result["cells"]]


def _cell(run, beta, seed, probe, intra, inter):
  return {"run": run, "beta": beta, "seed": seed, "status": "ok",
          "linear_probe_accuracy": probe, "knn_accuracy": probe, "heldout_mi_bound": 0.1,
          "adjustment": 0.0,
          "geometry": {sp: {"intra": intra, "inter": inter, "ratio": intra / inter}
                       for sp in ("z", "features")}}


def test_verdict_is_a_paired_interval_over_seeds():
  bg = _module()
  rng = np.random.default_rng(1)
  base = 0.05 + 0.01 * rng.standard_normal(5)
  lift = 0.03 + 0.002 * rng.standard_normal(5)  # beta 10 spreads every seed's classes
  cells = []
  for s in range(5):
    cells.append(_cell("beta0", 0.0, s, 0.8 + 0.01 * s, base[s], 0.5))
    cells.append(_cell("beta10", 10.0, s, 0.8 + 0.01 * s + (0.002 if s % 2 else -0.002),
                       base[s] + lift[s], 0.5))
  v = bg.verdict(cells, (0.0, 10.0))
  intra = v["measures"]["z/intra"]["vs_beta0"]["10"]
  diffs = lift
  t = 2.7764451051977987  # t_0.975 with 4 degrees of freedom
  half = t * diffs.std(ddof=1) / np.sqrt(5)
  np.testing.assert_allclose([intra["mean"], intra["ci_low"], intra["ci_high"]],
                             [diffs.mean(), diffs.mean() - half, diffs.mean() + half],
                             rtol=1e-12)
  assert intra["reading"] == "above 0"
  # The unpaired interval keeps the seeds' shared spread: wider than the paired one here.
  un = intra["unpaired"]
  assert un["ci_high"] - un["ci_low"] > intra["ci_high"] - intra["ci_low"]
  assert v["measures"]["linear_probe_accuracy"]["vs_beta0"]["10"]["reading"] == (
      "not resolved")
  assert v["spread_claim"]["intra"]["reading"] == "above 0"
  text = "\n".join(bg.claim_sentences(v, (0.0, 10.0)))
  assert text.startswith("**Holds** in the intra-class sense: beta = 10")
  # A diverged seed leaves its pair out.
  cells[-1] = dict(cells[-1], status="diverged")
  assert bg.verdict(cells, (0.0, 10.0))["measures"]["z/intra"]["vs_beta0"]["10"]["n"] == 4


def test_values_come_from_paper_comparisons_stage_1(tmp_path):
  bg = _module()
  tuned = {"mnist5k": {"num_epochs": 30, "by_noise": {
      "0": {}, "0.4": {"projnce_centroid": {"temperature": 0.2, "lr_factor": 1.0,
                                            "beta": 1.0}}}}}
  path = tmp_path / "tuned.json"
  path.write_text(json.dumps(tuned))
  v = bg.protocol_values(str(path))
  assert v["hyperparameters"] == {"temperature": 0.2, "lr_factor": 1.0}  # beta is studied
  assert v["num_epochs"] == 30 and v["tuned_at_noise"] == 0.4
  del tuned["mnist5k"]["num_epochs"]
  path.write_text(json.dumps(tuned))
  with pytest.raises(ValueError, match="has not chosen"):
    bg.protocol_values(str(path))
  with pytest.raises(ValueError, match="run experiments/paper_comparison"):
    bg.protocol_values(str(tmp_path / "missing.json"))

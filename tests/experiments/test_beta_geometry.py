"""End-to-end check of experiments/beta_geometry/run.py in its --small setting."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = os.path.join(ROOT, "experiments", "beta_geometry")
SCRIPT = os.path.join(EXP, "run.py")


def test_cluster_spread_measures():
  sys.path.insert(0, EXP)
  try:
    import run as bg  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(EXP)
    sys.modules.pop("run", None)
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

  assert [c["run"] for c in result["cells"]] == ["supcon", "beta5"]
  for cell in result["cells"]:
    assert cell["status"] == "ok"
    emb = np.load(tmp_path / "runs" / cell["run"] / "seed0" / "embeddings.npz")
    assert emb["z"].shape == (1000, 128) and emb["label"].shape == (1000,)
    np.testing.assert_allclose(np.linalg.norm(emb["z"], axis=1), 1.0, atol=1e-4)
    for space in ("z", "features"):
      g = cell["geometry"][space]
      assert g["intra"] >= 0 and g["inter"] > 0
      assert abs(g["ratio"] - g["intra"] / g["inter"]) < 1e-12
  assert result["cells"][1]["beta"] == 5.0

  text = (tmp_path / "results.md").read_text()
  assert "Command: `" in text and "Machine: " in text and "CPU cores" in text
  table = [l for l in text.splitlines() if l.startswith("| ")]
  assert table[0].startswith("| run | probe | kNN | held-out MI bound (nats) | "
                             "mean R (train batch) | intra (z)")
  assert all(c["heldout_mi_bound"] is not None for c in result["cells"])
  assert any(l.startswith("| supcon |") for l in table)
  assert any(l.startswith("| beta5 |") for l in table)
  assert "## Verdict" in text and "![t-SNE](tsne.png)" in text

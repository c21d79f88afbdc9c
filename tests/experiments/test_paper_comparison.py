"""experiments/paper_comparison/run.py: its smallest setting end to end, resuming, and the
statistics, stage-1 selection and cell cache on their own."""
import json
import math
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from scipy import stats

from tests.experiments import run_smallest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "experiments", "paper_comparison", "run.py")
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import _sweep  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

pc = _sweep.load_module(SCRIPT, "paper_comparison_run")


def _run(out_dir, *extra):
  return run_smallest(SCRIPT, out_dir, *extra)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """The smallest sweep in three sittings: 2 cells, then the rest, then nothing new."""
  out = tmp_path_factory.mktemp("pc")
  _run(out, "--max_cells", "2")
  first = {"json": json.loads((out / "results.json").read_text()),
           "md": (out / "results.md").read_text()}
  _run(out)
  second = json.loads((out / "results.json").read_text())
  third_stdout = _run(out)
  third = json.loads((out / "results.json").read_text())
  return {"out": out, "first": first, "second": second, "third": third,
          "third_stdout": third_stdout}


def test_partial_sitting_is_reported_honestly(sweep):
  first = sweep["first"]
  planned = len(pc.SMALLEST.seeds) * len(pc.SMALLEST.methods_by_dataset["mnist5k"])
  assert first["json"]["progress"]["stage2_planned"] == planned
  assert first["json"]["cells_run_now"] == 2
  assert first["json"]["progress"]["stage2_done"] <= 2
  assert f"stage 2 {first['json']['progress']['stage2_done']} of {planned} done" in first["md"]
  # The preregistration is the constant, ahead of any result.
  assert pc.PREREGISTRATION in first["md"]
  assert first["md"].index("Preregistration") < first["md"].index("## Stage 2")


def test_full_smallest_sweep_outputs(sweep):
  out, result = sweep["out"], sweep["second"]
  for name in ("results.md", "results.json", "results.png", "tuned.json"):
    assert (out / name).stat().st_size > 0, name
  assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  methods = pc.SMALLEST.methods_by_dataset["mnist5k"]
  assert result["progress"]["stage2_done"] == result["progress"]["stage2_planned"] == (
      len(methods) * len(pc.SMALLEST.seeds))
  for cell in result["cells"]:
    assert cell["status"] == "ok"
    assert 0.0 <= cell["linear_probe_accuracy"] <= 1.0
    assert 0.0 <= cell["knn_accuracy"] <= 1.0
    assert cell["steps"] == pc.SMALLEST.num_steps
    stored = json.loads((out / "cells" / (cell["key"] + ".json")).read_text())
    assert stored["record"]["linear_probe_accuracy"] == cell["linear_probe_accuracy"]
    # Each cell records the code that made it and what decides its rounding.
    assert stored["record"]["code"] == result["code"]
    assert len(stored["record"]["code"]["sha256"]) == 16
    env = stored["record"]["environment"]
    assert env["jax"] and env["jaxlib"] and env["flax"] and env["cpu_model"]
    assert env["cpu_threads"] >= 1
  # Paired: the primary contrasts use the same seeds on both sides, and the interval is
  # the t-interval of the per-seed differences.
  prim = [c for c in result["contrasts"] if c["primary"]]
  assert {c["reference"] for c in prim} == {"supcon", "cross_entropy"}
  by = {(c["method"], c["seed"]): c["linear_probe_accuracy"] for c in result["cells"]}
  for c in prim:
    diffs = [by[("projnce_centroid", s)] - by[(c["reference"], s)] for s in pc.SMALLEST.seeds]
    np.testing.assert_allclose(c["diffs"], diffs, rtol=1e-12)
    half = stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs))
    np.testing.assert_allclose([c["ci_low"], c["ci_high"]],
                               [np.mean(diffs) - half, np.mean(diffs) + half], rtol=1e-9)
    assert c["verdict"].startswith("not tested at adequate scale")  # 2 seeds, 3 steps
  text = (out / "results.md").read_text()
  assert "Command: `" in text and "Machine: " in text and "load average" in text
  assert "projnce_centroid - supcon **(primary)**" in text
  assert result["train_examples"] == {"mnist5k": 3600} and "mnist5k 3,600" in text

  # Stage 1: run on the validation split where the trainer has `eval_split`, otherwise
  # skipped with the reason (never tuned on the test split).
  tuned = json.loads((out / "tuned.json").read_text())["mnist5k"]
  if "eval_split" in pc.available_fields():
    assert tuned["complete"] and set(tuned["by_noise"]["0.4"]) == set(methods)
    assert result["progress"]["stage1_done"] == result["progress"]["stage1_planned"] > 0
    assert all(c["tuned"] for c in result["cells"])
  else:
    assert "eval_split" in tuned["stage1_skipped"]
    assert "stage 1 not run (the trainer config has no `eval_split` field" in text
    assert not any(c["tuned"] for c in result["cells"])
    assert "hyperparameters not tuned on validation" in prim[0]["verdict"]


def test_resume_reads_every_cell(sweep):
  assert sweep["third"]["cells_run_now"] == 0
  assert sweep["third"]["cells_reused"] >= sweep["third"]["progress"]["stage2_done"]
  assert "  ran " not in sweep["third_stdout"]
  key = lambda r: sorted((c["key"], c["linear_probe_accuracy"]) for c in r["cells"])
  assert key(sweep["third"]) == key(sweep["second"])


def test_readme_tables_from_results_json(sweep):
  proc = subprocess.run([sys.executable, SCRIPT, "--out", str(sweep["out"]), "--readme"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == pc.readme_tables(sweep["third"]).strip()
  rows = [l for l in proc.stdout.splitlines() if l.startswith("| supcon | 0.4 |")]
  assert len(rows) == 1
  mean = np.mean([c["linear_probe_accuracy"] for c in sweep["second"]["cells"]
                  if c["method"] == "supcon"])
  assert f"{100 * mean:.2f} +- " in rows[0]


# ----------------------------------------------------------------------------------------
# Pieces on their own.


def test_paired_difference_matches_scipy():
  rng = np.random.default_rng(0)
  a = {s: float(x) for s, x in enumerate(rng.normal(0.9, 0.02, 5))}
  b = {s: float(x) for s, x in enumerate(rng.normal(0.88, 0.02, 5))}
  b[7] = 0.5  # a seed only one side has is not paired
  d = _sweep.paired_difference(a, b)
  ref = stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)])
  ci = ref.confidence_interval(0.95)
  assert d["n"] == 5 and d["seeds"] == list(range(5))
  np.testing.assert_allclose([d["ci_low"], d["ci_high"]], [ci.low, ci.high], rtol=1e-10)
  one = _sweep.paired_difference({0: 0.9}, {0: 0.8, 1: 0.7})
  assert one["n"] == 1 and one["ci_low"] is None
  assert one["mean"] == pytest.approx(0.1)
  with pytest.raises(ValueError, match="confidence"):
    _sweep.paired_difference(a, b, confidence=1.5)


@pytest.mark.parametrize("lo,hi,adequate,expected", [
    (0.01, 0.03, True, "better"),
    (-0.03, -0.01, True, "worse"),
    (-0.01, 0.02, True, "no difference resolved"),
    (0.01, 0.03, False, "not tested at adequate scale"),
])
def test_contrast_verdict(lo, hi, adequate, expected):
  diff = {"n": 5, "ci_low": lo, "ci_high": hi}
  assert pc.contrast_verdict(diff, (adequate, "2 of 5 paired seeds")).startswith(expected)
  assert pc.contrast_verdict({"n": 1, "ci_low": None, "ci_high": None},
                             (True, "")).startswith("not tested: 1 paired")


class _FakeCache:
  """Scores a stage-1 cell from its config; None once `budget` cells are exhausted."""

  def __init__(self, score, budget=None):
    self.score, self.budget, self.keys, self.configs = score, budget, [], {}

  def get_or_run(self, key, config, extract):
    del extract
    self.keys.append(key)
    self.configs[key] = config
    if self.budget is not None and len(set(self.keys)) > self.budget:
      return None
    return {"status": "ok", "linear_probe_accuracy": self.score(config)}


def _fake_config(setting, dataset, overrides, noise, seed, *, eval_split=None,
                 num_epochs=None):
  assert eval_split == "validation" and seed == setting.tune_seed
  loss = overrides.get("loss", {})
  return ml_collections.ConfigDict(dict(
      method=overrides["method"], positive=loss.get("positive", ""),
      temperature=loss.get("temperature", 0.1), beta=loss.get("beta", 1.0),
      bandwidth=loss.get("bandwidth", 1.0),
      lr=overrides.get("optimizer", {}).get("base_lr", 0.2),
      epochs=num_epochs or setting.num_epochs, noise=noise))


def _fake_both_stages_config(setting, dataset, overrides, noise, seed, *, eval_split=None,
                             num_epochs=None):
  """`_fake_config` for stage-1 cells; a stage-2 cell's config holds its overrides, seed
  and length."""
  if eval_split == "validation":
    return _fake_config(setting, dataset, overrides, noise, seed,
                        eval_split=eval_split, num_epochs=num_epochs)
  return ml_collections.ConfigDict({"overrides": json.dumps(overrides, sort_keys=True),
                                    "seed": seed, "epochs": num_epochs})


def _score(c):
  """Best: lr 0.4 (factor 2), temperature 0.2, beta 2, bandwidth 0.5 -- each at the end of
  its initial grid -- and 40 epochs (the longest initial length), 0.4 points over 20."""
  s = 0.9 - abs(c.temperature - 0.2) - 0.01 * abs(c.beta - 2.0)
  s -= 0.01 * abs(c.bandwidth - 0.5) + abs(c.lr - 0.4)
  return s + {20: 0.0, 30: 0.003, 40: 0.004, 50: 0.002}[c.epochs]


def test_stage1_selection(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  setting = pc.FULL
  planned = []
  entry = pc.tune_dataset(_FakeCache(_score), setting, "mnist5k", planned)
  assert entry["complete"]
  chosen = entry["by_noise"]["0.4"]
  assert chosen["cross_entropy"] == {"lr_factor": 2.0}
  assert chosen["supcon"] == {"temperature": 0.2, "lr_factor": 2.0}
  assert chosen["projnce_centroid"] == {"temperature": 0.2, "lr_factor": 2.0, "beta": 2.0}
  assert chosen["projnce_kernel"] == {"temperature": 0.2, "lr_factor": 2.0, "beta": 2.0,
                                      "bandwidth": 0.5}
  assert entry["by_noise"]["0"] == chosen
  # Every optimum sat at the end of its initial grid: each grid grew by one value past it,
  # and every choice is now interior.
  search = entry["search"]["0.4"]
  assert search["cross_entropy"]["lr_factor"]["grid"] == [0.5, 1.0, 2.0, 4.0]
  assert search["supcon"]["temperature"]["grid"] == [0.05, 0.1, 0.2, 0.4]
  assert search["supcon"]["lr_factor"]["grid"] == [0.5, 1.0, 2.0, 4.0]
  assert search["projnce_centroid"]["beta"]["grid"] == [0.5, 1.0, 2.0, 4.0]
  assert search["projnce_kernel"]["bandwidth"]["grid"] == [0.25, 0.5, 1.0, 2.0]
  assert all(rec["interior"] for by_hp in search.values() for rec in by_hp.values())
  # Budgets: distinct cells per method (shared cells count once).
  budget = entry["budget"]["0.4"]
  assert budget["cross_entropy"] == 4 and budget["supcon"] == 4 + 3
  assert budget["projnce_kernel"] == 4 + 3 + 3 + 3
  # 40 epochs (the longest initial length) scored best, so 50 was tried; 30-50 gain at most
  # 0.4 points, within the 0.5-point tolerance, so the shortest length is kept.
  assert entry["length"]["grid"] == [20, 30, 40, 50] and entry["length"]["interior"]
  assert entry["num_epochs"] == 20
  assert all(k.startswith("stage1/mnist5k/") and k.endswith("/seed100") for k in planned)
  # The default-valued steps reuse a cell: beta 1 after the temperature step, etc.
  assert "stage1/mnist5k/noise0.4/projnce_centroid_t0.2/seed100" in planned
  assert len(planned) == len(set(planned))  # a reused cell is planned (and counted) once
  assert not any("_b1_" in k or k.endswith("_b1/seed100") for k in planned)


@pytest.mark.parametrize("grid,scores,expected", [
    ([0.5, 1.0, 2.0], [0.1, 0.3, 0.2], None),          # interior: done
    ([0.5, 1.0, 2.0], [0.1, 0.2, 0.3], 4.0),           # best at the top: one more above
    ([0.05, 0.1, 0.2], [0.3, 0.2, 0.1], 0.025),        # at the bottom: one more below
    ([0.5, 1.0, 2.0], [0.2, 0.2, 0.1], 0.25),          # a tie goes to the smaller value
    ([2.0, 4.0, 8.0], [0.1, 0.2, 0.3], None),          # 16 would pass the limit 10
    ([1.0, 2.0, 4.0, 8.0], [0.1, 0.2, 0.3, 0.4], None),  # the grid is full (max 4)
])
def test_extend_grid(grid, scores, expected):
  assert pc.extend_grid(grid, scores, 2.0, (0.01, 10.0), 4) == expected


def test_a_choice_at_a_limit_is_marked_edge(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  # Accuracy rises with the temperature without end: the grid stops at its size limit.
  entry = pc.tune_dataset(_FakeCache(lambda c: c.temperature - (c.epochs - 20) * 1e-3),
                          pc.FULL, "mnist5k", [], noises=[0.4],
                          methods=["cross_entropy", "supcon", "projnce_centroid"])
  rec = entry["search"]["0.4"]["supcon"]["temperature"]
  assert len(rec["grid"]) == pc.FULL.max_grid and rec["chosen"] == rec["grid"][-1]
  assert not rec["interior"]
  rows = pc.search_table_rows({"mnist5k": entry})
  assert any(r["hp"] == "temperature" and r["chosen"].endswith("(edge)") for r in rows)
  # Falling with length: the first length wins and the grid is not extended.
  assert entry["length"]["grid"] == [20, 30, 40] and entry["num_epochs"] == 20


def test_full_fashion_inherits_hyperparameters_and_tunes_length(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  score = lambda c: 0.5 + {10: 0.0, 20: 0.01, 30: 0.02, 40: 0.025, 50: 0.02}[c.epochs]
  src = {"by_noise": {"0.4": {m: {"temperature": 0.1} for m in
                              pc.FULL.methods_by_dataset["fashion_mnist_full"]}}}
  planned = []
  entry = pc.tune_dataset(_FakeCache(score), pc.FULL, "fashion_mnist_full", planned,
                          inherited=src)
  assert entry["complete"] and entry["hyperparameters_from"] == "fashion_mnist_local"
  assert entry["by_noise"]["0.4"]["supcon"] == {"temperature": 0.1}
  # Rising up to 40 epochs: extended to 50, where it falls; 30 is within 0.5 points of 40.
  assert entry["length"]["grid"] == [10, 20, 30, 40, 50] and entry["num_epochs"] == 30
  assert all(k.startswith("stage1/fashion_mnist_full/noise0.4/") for k in planned)
  assert not entry["search"]  # nothing tuned here but the length
  # Without the source's values nothing is final.
  assert not pc.tune_dataset(_FakeCache(score), pc.FULL, "fashion_mnist_full", [],
                             inherited={})["complete"]


def test_train_examples_follow_the_splits():
  from projnce_jax.data import splits  # pylint: disable=import-outside-toplevel
  config = pc.build_config(pc.FULL, "mnist5k", {}, 0.4, 0)
  assert pc.train_examples(config) == len(splits.make_splits(
      "mnist5k", val_fraction=config.dataset.val_fraction).train) == 3600
  # The full-scale comparison trains on the whole Fashion-MNIST training split less its
  # 6,000 validation images; the 10,000-image study on its subset.
  full = pc.build_config(pc.FULL, "fashion_mnist_full", {}, 0.4, 0)
  assert full.dataset.name == "fashion_mnist_local" and pc.train_examples(full) == 54000
  sub = pc.build_config(pc.FULL, "fashion_mnist_local", {}, 0.4, 0)
  assert pc.train_examples(sub) == 10000


def test_a_length_cell_held_elsewhere_leaves_the_steps_other_cells_to_this_process(
    monkeypatch):
  # Two sweep processes share the length step: the first trains supcon's 10-epoch cell
  # (held: None here); the second trains every other cell of that step meanwhile.
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  held = "stage1/fashion_mnist_full/noise0.4/supcon_t0.1/seed100"

  class Held(_FakeCache):

    def get_or_run(self, key, config, extract):
      rec = super().get_or_run(key, config, extract)
      return None if key == held else rec

  src = {"by_noise": {"0.4": {m: {"temperature": 0.1} for m in
                              pc.FULL.methods_by_dataset["fashion_mnist_full"]}}}
  cache = Held(lambda c: 0.5)
  entry = pc.tune_dataset(cache, pc.FULL, "fashion_mnist_full", [], inherited=src)
  assert not entry["complete"] and "num_epochs" not in entry
  step = {f"stage1/fashion_mnist_full/noise0.4/"
          f"{pc.hp_name(m, dict(temperature=0.1, **({'num_epochs': e} if e > 10 else {})))}"
          f"/seed100" for m in pc.FULL.length_methods for e in (10, 20, 30)}
  assert held in step and len(step) == 9
  assert step <= set(cache.keys)  # all 9 asked for (8 trained here), not only those before


def test_larger_datasets_are_tuned_at_the_primary_noise_only(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  setting = pc.FULL
  assert setting.tune_noises_of("mnist5k") == (0.0, 0.4)
  planned = []
  entry = pc.tune_dataset(_FakeCache(_score), setting, "fashion_mnist_local", planned)
  assert entry["complete"] and list(entry["by_noise"]) == ["0.4"]
  assert planned and all(k.startswith("stage1/fashion_mnist_local/noise0.4/")
                         for k in planned)
  # Both stage-2 noise levels use the values tuned at 0.4.
  for noise in setting.noises:
    hp, tuned = pc.stage2_hp({"fashion_mnist_local": entry}, "fashion_mnist_local",
                             "supcon", noise)
    assert tuned and hp == {"temperature": 0.2, "lr_factor": 2.0}


def test_stage1_incomplete_under_budget(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  entry = pc.tune_dataset(_FakeCache(_score, budget=5), pc.FULL, "mnist5k", [])
  assert not entry["complete"] and "num_epochs" not in entry
  hp, tuned = pc.stage2_hp({"mnist5k": entry}, "mnist5k", "supcon", 0.4)
  assert (hp, tuned) == ({}, False)


@pytest.fixture
def fake_training(monkeypatch):
  """`_sweep.run_cell` replaced by a stand-in that records each trainer folder it is given
  (returned list), checks the cell's claim is held, and scores the config's `lr`."""
  calls = []

  def fake_run(config, workdir, hooks=(), done=None):
    del hooks, done
    calls.append(workdir)
    assert os.path.exists(workdir + ".claim")  # held while it trains
    return {"status": "ok", "linear_probe_accuracy": config.lr, "wall_seconds": 0.0}, True

  monkeypatch.setattr(_sweep, "run_cell", fake_run)
  return calls


def test_cell_cache_retrains_a_changed_config(tmp_path, fake_training):
  calls = fake_training
  cache = _sweep.CellCache(str(tmp_path), _sweep.Budget(max_cells=2), log=lambda s: None)
  extract = lambda r: {"linear_probe_accuracy": r["linear_probe_accuracy"]}
  c1 = ml_collections.ConfigDict({"lr": 0.1})
  assert cache.get_or_run("a/b", c1, extract)["linear_probe_accuracy"] == 0.1
  assert cache.get_or_run("a/b", c1, extract)["reused"] and len(calls) == 1
  c2 = ml_collections.ConfigDict({"lr": 0.2})
  assert cache.get_or_run("a/b", c2, extract)["linear_probe_accuracy"] == 0.2
  assert cache.stale == 1 and len(calls) == 2 and calls[0] != calls[1]
  # The budget (2 new cells) is spent: an unfinished cell is not trained.
  assert cache.get_or_run("a/c", c1, extract) is None and len(calls) == 2


def test_cell_hash_covers_the_code_version(tmp_path, fake_training):
  calls = fake_training
  extract = lambda r: {"linear_probe_accuracy": r["linear_probe_accuracy"]}
  config = ml_collections.ConfigDict({"lr": 0.1})
  code_a = {"sha256": "a" * 16, "commit": "c1", "dirty": False}
  code_b = dict(code_a, sha256="b" * 16)
  quiet = lambda s: None
  _sweep.CellCache(str(tmp_path), code=code_a, log=quiet).get_or_run("k", config, extract)
  rec = _sweep.CellCache(str(tmp_path), code=code_a, log=quiet).get_or_run("k", config,
                                                                           extract)
  assert rec["reused"] and rec["code"] == code_a and len(calls) == 1
  # Same config, other code: trained again, into another folder.
  rec = _sweep.CellCache(str(tmp_path), code=code_b, log=quiet).get_or_run("k", config,
                                                                           extract)
  assert not rec["reused"] and rec["code"] == code_b and len(calls) == 2
  assert calls[0] != calls[1]


def test_a_pinned_dataset_is_read_and_trained_only_under_its_code(tmp_path, fake_training):
  calls = fake_training
  extract = lambda r: {"linear_probe_accuracy": r["linear_probe_accuracy"]}
  config = ml_collections.ConfigDict({"lr": 0.1})
  old = {"sha256": "a" * 16, "commit": "c1", "dirty": False}
  new = dict(old, sha256="b" * 16, commit="c2")
  (tmp_path / pc.PINS_FILE).write_text(json.dumps(
      {"spoken_digits": {"sha256": new["sha256"], "commit": "c2", "why": "new test split"}}))
  pins = pc.cache_pins(pc.load_pins(str(tmp_path)))
  assert pins["stage2/spoken_digits/"] == new["sha256"]
  assert pins["rounding/devices2/stage2/spoken_digits/"] == new["sha256"]
  quiet = lambda s: None
  old_cache = _sweep.CellCache(str(tmp_path), code=old, log=quiet, pins=pins)
  new_cache = _sweep.CellCache(str(tmp_path), code=new, log=quiet, pins=pins)
  sd, mn = "stage2/spoken_digits/noise0.4/supcon/seed0", "stage2/mnist5k/noise0.4/supcon/seed0"
  # The old checkout trains the unpinned dataset's cells, never the pinned one's.
  assert old_cache.get_or_run(mn, config, extract)["code"] == old
  assert old_cache.get_or_run(sd, config, extract) is None and old_cache.passed_over == 1
  assert len(calls) == 1
  # The new checkout trains the pinned cell; the old one then reads it as it is.
  assert new_cache.get_or_run(sd, config, extract)["code"] == new and len(calls) == 2
  rec = old_cache.get_or_run(sd, config, extract)
  assert rec["reused"] and rec["code"] == new and len(calls) == 2
  # A pinned cell made by other code is neither read nor retrained by the wrong code.
  (tmp_path / pc.PINS_FILE).write_text(json.dumps(
      {"spoken_digits": {"sha256": "c" * 16, "commit": "c3"}}))
  repinned = pc.cache_pins(pc.load_pins(str(tmp_path)))
  for code in (old, new):
    cache = _sweep.CellCache(str(tmp_path), code=code, log=quiet, pins=repinned)
    assert cache.get_or_run(sd, config, extract) is None
  assert len(calls) == 2
  (tmp_path / pc.PINS_FILE).write_text(json.dumps({"spoken_digits": "b" * 16}))
  with pytest.raises(ValueError, match="code_pins.json: expected"):
    pc.load_pins(str(tmp_path))
  assert pc.load_pins(str(tmp_path / "elsewhere")) == {}


def test_code_version_follows_the_package_source(tmp_path):
  for top in ("projnce_jax", "configs", "docs"):
    (tmp_path / top).mkdir()
    (tmp_path / top / "a.py").write_text("x = 1\n")
  v1 = _sweep.code_version(str(tmp_path))
  (tmp_path / "docs" / "a.py").write_text("x = 2\n")   # not code a cell runs
  assert _sweep.code_version(str(tmp_path))["sha256"] == v1["sha256"]
  (tmp_path / "projnce_jax" / "a.py").write_text("x = 2\n")
  assert _sweep.code_version(str(tmp_path))["sha256"] != v1["sha256"]
  assert v1["commit"] is None  # not a git checkout
  here = _sweep.code_version(ROOT)
  assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)


def test_unpaired_difference_matches_welch():
  a = {"0": 0.91, "1": 0.93, "2": 0.90, "3": 0.94}
  b = {"0": 0.89, "1": 0.90, "2": 0.905, "3": 0.88, "4": 0.9}
  u = _sweep.unpaired_difference(a, b)
  va, vb = np.array(list(a.values())), np.array(list(b.values()))
  res = stats.ttest_ind(va, vb, equal_var=False)
  ci = res.confidence_interval(0.95)
  np.testing.assert_allclose([u["ci_low"], u["ci_high"]], [ci.low, ci.high], rtol=1e-9)
  np.testing.assert_allclose(u["mean"], va.mean() - vb.mean(), rtol=1e-12)


def test_rounding_variance_widens_the_paired_interval():
  d = _sweep.paired_difference({"0": 0.92, "1": 0.93, "2": 0.925},
                               {"0": 0.91, "1": 0.915, "2": 0.914})
  original = dict(zip(d["seeds"], d["diffs"]))
  rerun = {"0": original["0"] - 0.006, "1": original["1"] + 0.002}
  rv = _sweep.rounding_variance(original, rerun)
  assert rv["seeds"] == ["0", "1"]
  np.testing.assert_allclose(rv["var"], (0.006 ** 2 + 0.002 ** 2) / 4, rtol=1e-9)
  lo, hi = _sweep.widened_interval(d, rv["var"])
  half = d["t_crit"] * math.sqrt(d["sd"] ** 2 + rv["var"]) / math.sqrt(3)
  np.testing.assert_allclose([lo, hi], [d["mean"] - half, d["mean"] + half], rtol=1e-12)
  assert lo < d["ci_low"] and hi > d["ci_high"]
  assert _sweep.widened_interval(d, None) == (None, None)


def test_contrasts_report_unpaired_and_widened_intervals():
  seeds = ["0", "1", "2", "3", "4"]
  def entry(method, values):
    return {"dataset": "mnist5k", "noise": 0.4, "method": method, "tuned": True,
            "by_seed": {m: dict(zip(seeds, values)) for m, _ in pc.METRICS}}
  summary = {"mnist5k|0.4|projnce_centroid": entry("projnce_centroid",
                                                   [0.90, 0.91, 0.92, 0.93, 0.94]),
             "mnist5k|0.4|supcon": entry("supcon", [0.89, 0.90, 0.91, 0.92, 0.93]),
             "mnist5k|0.4|cross_entropy": entry("cross_entropy",
                                                [0.90, 0.91, 0.92, 0.93, 0.94])}
  setting = pc.dataclasses.replace(pc.FULL, methods=(("mnist5k", tuple(
      ["cross_entropy", "supcon", "projnce_centroid"])),), noises=(0.4,))
  rounding = {"mnist5k|0.4|projnce_centroid": {"0": 0.905, "1": 0.905},
              "mnist5k|0.4|supcon": {"0": 0.89, "1": 0.90}}
  rows = pc.contrasts(summary, setting, ["mnist5k"], {"mnist5k": 30}, rounding)
  prim = {r["reference"]: r for r in rows if r["primary"]}
  sup = prim["supcon"]
  # Every seed gains exactly 1 point: the paired interval is a point, the unpaired one
  # holds the between-seed spread and contains 0.
  assert sup["ci_low"] == pytest.approx(0.01) and sup["verdict"].startswith("better")
  assert sup["unpaired_ci_low"] < 0 < sup["unpaired_ci_high"]
  assert sup["unpaired_verdict"].startswith("no difference")
  # The reruns moved seed 0's difference from 1 to 1.5 points and seed 1's from 1 to 0.5.
  np.testing.assert_allclose(sup["rounding_deltas"], [-0.005, 0.005], atol=1e-12)
  assert sup["widened_ci_low"] < sup["ci_low"] and "widened_verdict" in sup
  # cross-entropy has no reruns: no widened interval.
  assert "widened_ci_low" not in prim["cross_entropy"]


def test_rounding_reruns_cover_every_preregistered_contrast(monkeypatch):
  monkeypatch.setattr(pc, "build_config", _fake_both_stages_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  hp = {"cross_entropy": {"lr_factor": 4.0},
        "supcon": {"temperature": 0.2, "lr_factor": 1.0},
        "projnce_centroid": {"temperature": 0.1, "lr_factor": 2.0, "beta": 1.0},
        "projnce_kernel": {"temperature": 0.4, "lr_factor": 2.0, "beta": 1.0,
                           "bandwidth": 1.0}}
  tuned = {ds: {"by_noise": {"0.4": hp}, "num_epochs": 30}
           for ds in ("mnist5k", "fashion_mnist_full")}
  tuned["fashion_mnist_local"] = {"by_noise": {"0.4": hp}}  # no length yet: nothing
  plan = list(pc._rounding_plan(pc.FULL, ["mnist5k", "fashion_mnist_local",
                                          "fashion_mnist_full"], tuned))
  methods = {}
  for ds, m, seed, key, config, rerun_key, rerun_config in plan:
    methods.setdefault(ds, set()).add(m)
    assert seed in pc.ROUNDING_SEEDS and key == f"stage2/{ds}/noise0.4/{m}/seed{seed}"
    assert rerun_key == "rounding/devices2/" + key
    # Only the device count differs from the original cell's config.
    assert rerun_config.num_devices == 2 and "num_devices" not in config
    assert rerun_config.epochs == config.epochs == 30 and rerun_config.seed == seed
    assert rerun_config.overrides == config.overrides
  endpoint = {"projnce_centroid", "supcon", "cross_entropy"}
  # The full-scale comparison preregisters the kernel projection's contrasts too.
  assert methods == {"mnist5k": endpoint,
                     "fashion_mnist_full": endpoint | {"projnce_kernel"}}
  assert len(plan) == 7 * len(pc.ROUNDING_SEEDS)


def test_cell_cache_passes_over_a_cell_another_live_process_holds(tmp_path, fake_training):
  calls = fake_training
  cache = _sweep.CellCache(str(tmp_path), log=lambda s: None)
  extract = lambda r: {"linear_probe_accuracy": r["linear_probe_accuracy"]}
  config = ml_collections.ConfigDict({"lr": 0.1})
  claim = cache.claim_path("a/b", _sweep.config_hash(config))
  os.makedirs(os.path.dirname(claim))
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    with open(claim, "w") as f:
      json.dump({"host": socket.gethostname(), "pid": other.pid}, f)
    assert cache.get_or_run("a/b", config, extract) is None and not calls
  finally:
    other.kill()
    other.wait()
  # Its holder is gone: the claim is taken over, the cell trained, the claim released.
  assert cache.get_or_run("a/b", config, extract)["linear_probe_accuracy"] == 0.1
  assert len(calls) == 1 and not os.path.exists(claim)
  assert cache.get_or_run("a/b", config, extract)["reused"] and len(calls) == 1


def test_stage2_waits_for_stage1(monkeypatch):
  monkeypatch.setattr(pc, "build_config", lambda *a, **k: ml_collections.ConfigDict(
      {"overrides": json.dumps(a[2], sort_keys=True), "seed": a[4]}))
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  cache = _FakeCache(lambda c: 0.5)
  setting = pc.SMALLEST
  n = len(setting.noises) * len(setting.seeds) * len(setting.methods_by_dataset["mnist5k"])
  under_way = {"mnist5k": {"complete": False, "by_noise": {}}}
  for allow in (False, True):  # a stage 1 under way holds stage 2 back either way
    planned = []
    assert pc.run_stage2(cache, setting, ["mnist5k"], under_way, planned, allow) == []
    assert len(planned) == n
  assert pc.run_stage2(cache, setting, ["mnist5k"], {}, [], allow_untuned=False) == []
  cells = pc.run_stage2(cache, setting, ["mnist5k"], {}, [], allow_untuned=True)
  assert len(cells) == n and not any(c["tuned"] for c in cells)
  done = {"mnist5k": {"complete": True, "num_epochs": 30, "by_noise": {
      "0.4": {"supcon": {"temperature": 0.2}}}}}
  cells = pc.run_stage2(cache, setting, ["mnist5k"], done, [])
  supcon = [c for c in cells if c["method"] == "supcon"]
  assert all(c["tuned"] and c["hyperparameters"] == {"temperature": 0.2} for c in supcon)
  for c in supcon:  # the tuned value reaches the cell's config
    assert json.loads(cache.configs[c["key"]].overrides)["loss"] == {"temperature": 0.2}
  assert not any(c["tuned"] for c in cells if c["method"] != "supcon")


def test_stage2_grid_order_answers_the_endpoint_first():
  """Each dataset's grid is its whole product once; at PRIMARY_NOISE first, the endpoint's
  methods seed by seed (each finished seed completes a pairing), then the others."""
  setting = pc.FULL
  endpoint = {pc.PRIMARY_TARGET, *pc.PRIMARY_REFERENCES}
  for ds in setting.datasets:
    grid = [g[1:] for g in pc.stage2_grid(setting, [ds])]
    methods = setting.methods_by_dataset[ds]
    assert sorted(grid) == sorted((n, m, s) for n in setting.noises for m in methods
                                  for s in setting.seeds)
    n_end = len(endpoint & set(methods))
    head = grid[:n_end * len(setting.seeds)]
    assert {n for n, _, _ in head} == {pc.PRIMARY_NOISE}
    assert {m for _, m, _ in head} == endpoint & set(methods)
    assert [s for _, _, s in head] == [s for s in setting.seeds for _ in range(n_end)]
    first_other_noise = next(i for i, g in enumerate(grid) if g[0] != pc.PRIMARY_NOISE)
    assert first_other_noise == len(methods) * len(setting.seeds)


def test_full_scale_first_takes_the_sources_values_but_not_its_length(monkeypatch):
  """The full-scale comparison needs the 10,000-image subset's hyperparameters, not its
  length: that length is chosen in the subset's own stage-1 pass, after the full-scale
  cells, whose length step and stage-2 cells come first."""

  monkeypatch.setattr(pc, "build_config", _fake_both_stages_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  cache = _FakeCache(lambda c: (0.5 - abs(c.temperature - 0.2) - abs(c.lr - 0.4)
                                 + {10: 0.0, 20: 0.01}.get(c.epochs, 0.005))
                     if "temperature" in c else 0.5)
  cells = pc.full_scale_first(cache, pc.FULL, {})
  subset = [k for k in cache.keys if k.startswith("stage1/fashion_mnist_local/")]
  assert subset and not any("_ep" in k for k in subset)  # values only, no length cells
  full = [k for k in cache.keys if k.startswith("stage1/fashion_mnist_full/")]
  assert any("_ep" in k for k in full)  # the full set's own length step
  methods = set(pc.FULL.methods_by_dataset[pc.FULL_SCALE_DATASET])
  assert {c["method"] for c in cells} == methods
  assert len(cells) == len(methods) * len(pc.FULL.seeds)
  assert all(c["dataset"] == pc.FULL_SCALE_DATASET and c["noise"] == pc.PRIMARY_NOISE
             for c in cells)


def test_a_provisional_length_trains_stage2_while_the_length_step_is_held(monkeypatch):
  """While another process holds the full set's length cells, `provisional_length` lets
  this one train the stage-2 cells at that length; without it, none are trained; the full
  pass (incomplete length) reads none of them."""

  class HeldLengthCache(_FakeCache):
    def get_or_run(self, key, config, extract):
      if key.startswith("stage1/fashion_mnist_full/") and "_ep" in key:
        self.keys.append(key)
        return None  # held by another live process
      return super().get_or_run(key, config, extract)

  monkeypatch.setattr(pc, "build_config", _fake_both_stages_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  score = lambda c: 0.5 - abs(c.temperature - 0.2) if "temperature" in c else 0.5
  cache = HeldLengthCache(score)
  assert pc.full_scale_first(cache, pc.FULL, {}) == []
  assert not any(k.startswith("stage2/") for k in cache.keys)

  cache = HeldLengthCache(score)
  cells = pc.full_scale_first(cache, pc.FULL, {}, provisional_length=30)
  methods = pc.FULL.methods_by_dataset[pc.FULL_SCALE_DATASET]
  assert len(cells) == len(methods) * len(pc.FULL.seeds)
  stage2 = [k for k in cache.keys if k.startswith("stage2/")]
  assert stage2 and all(cache.configs[k].epochs == 30 for k in stage2)
  # The length was asked for before any stage-2 cell.
  assert max(i for i, k in enumerate(cache.keys) if "_ep" in k) < cache.keys.index(stage2[0])
  # The full pass: the length step is not done, so it reads no stage-2 cell.
  entry = pc.tune_dataset(cache, pc.FULL, pc.FULL_SCALE_DATASET, [],
                          inherited={"by_noise": {"0.4": {
                              m: {"temperature": 0.2} for m in methods}}})
  assert "num_epochs" not in entry and not entry["complete"]
  assert pc.run_stage2(cache, pc.FULL, [pc.FULL_SCALE_DATASET],
                       {pc.FULL_SCALE_DATASET: entry}, []) == []
  with pytest.raises(ValueError, match="--provisional_length"):
    pc.main(["--out", "/nonexistent", "--provisional_length", "0"])


def test_primary_endpoint_cells_come_first(monkeypatch):
  """A sitting starts with the primary endpoint: its methods' tuning at the highest noise,
  the length, then its paired stage-2 cells, before any other method's cell."""

  monkeypatch.setattr(pc, "build_config", _fake_both_stages_config)
  monkeypatch.setattr(pc, "dataset_base_lr", lambda setting, ds: 0.2)
  cache = _FakeCache(lambda c: _score(c) if "temperature" in c else 0.5)
  cells = pc.primary_first(cache, pc.FULL)
  primary = {pc.PRIMARY_TARGET, *pc.PRIMARY_REFERENCES}
  assert {c["method"] for c in cells} == primary
  assert all(c["noise"] == pc.PRIMARY_NOISE and c["tuned"] for c in cells)
  assert sorted(c["seed"] for c in cells) == sorted(list(pc.FULL.seeds) * len(primary))
  stage1 = [k for k in cache.keys if k.startswith("stage1/")]
  assert stage1 and all(k.startswith("stage1/mnist5k/noise0.4/") for k in stage1)
  def method(config):
    return config.method + (f"_{config.positive}" if config.method == "projnce" else "")
  assert {method(cache.configs[k]) for k in stage1} == primary
  # Every stage-1 cell precedes every stage-2 cell; the length was chosen on the way.
  last1 = max(i for i, k in enumerate(cache.keys) if k.startswith("stage1/"))
  first2 = min(i for i, k in enumerate(cache.keys) if k.startswith("stage2/"))
  assert last1 < first2
  assert all(c["num_epochs"] == 20 for c in cells)
  # The centroid cells get its tuned temperature and beta.
  centroid = [c for c in cells if c["method"] == pc.PRIMARY_TARGET]
  assert all(c["hyperparameters"] == {"temperature": 0.2, "lr_factor": 2.0, "beta": 2.0}
             for c in centroid)


def test_contrasts_primary_secondary_and_exploratory():
  """Centroid gets every accuracy metric (the clean-label ones only under noise); every
  other projection gets the probe only, marked exploratory and never primary."""
  setting = pc.FULL
  methods = setting.methods_by_dataset["mnist5k"]
  rng = np.random.default_rng(0)
  cells = []
  for noise in setting.noises:
    for m in methods:
      for seed in setting.seeds:
        acc = {k: float(rng.uniform(0.9, 1.0)) for k, _ in pc.METRICS[:4]}
        if noise == 0:  # the trainer writes no clean-label keys without noise
          acc = {k: v for k, v in acc.items() if not k.endswith("_clean_labels")}
        cells.append(dict(acc, dataset="mnist5k", noise=noise, method=m, seed=seed,
                          status="ok", tuned=True))
  out = pc.contrasts(pc.summarize(cells), setting, ["mnist5k"], {"mnist5k": 20})
  by_target = {}
  for c in out:
    by_target.setdefault(c["target"], []).append(c)
    assert c["n"] == len(setting.seeds)
    assert not (c["noise"] == 0 and c["metric"].endswith("_clean_labels"))
  centroid = by_target.pop(pc.PRIMARY_TARGET)
  assert len(centroid) == 2 * (4 + 2)  # 2 references x (4 metrics at 0.4, 2 at 0)
  assert sum(c["primary"] for c in centroid) == 2 and not any(
      c["exploratory"] for c in centroid)
  assert set(by_target) == {m for m in methods
                            if m.startswith("projnce_") and m != pc.PRIMARY_TARGET}
  for rows in by_target.values():
    assert len(rows) == 2 * len(setting.noises)
    assert all(c["exploratory"] and not c["primary"] and c["metric"] == pc.PRIMARY_METRIC
               for c in rows)
  kernel_supcon = [c for c in by_target["projnce_kernel"]
                   if c["noise"] == 0.4 and c["reference"] == "supcon"][0]
  by = {(c["method"], c["seed"]): c[pc.PRIMARY_METRIC] for c in cells if c["noise"] == 0.4}
  np.testing.assert_allclose(
      kernel_supcon["diffs"],
      [by[("projnce_kernel", s)] - by[("supcon", s)] for s in setting.seeds], rtol=1e-12)


def test_full_setting_plans_every_dataset_from_any_directory(tmp_path):
  """The full setting's stage 1 builds the configs of the image and audio datasets (no cell
  is trained with --max_cells 0), run as a user would from another working directory."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--out", str(tmp_path / "out"), "--stage", "1",
       "--datasets", "fashion_mnist_local,spoken_digits", "--max_cells", "0"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "out" / "results.json").read_text())
  assert result["cells_run_now"] == 0 and result["progress"]["stage1_done"] == 0
  assert result["progress"]["stage1_planned"] > 0

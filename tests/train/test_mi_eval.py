"""The held-out MI bound (train/mi_eval.py) and its place in results.json and the report."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from projnce_jax import losses
from projnce_jax.train import mi_eval
from projnce_jax.train import train_and_evaluate


def _data(n=600, d=8, m=5, seed=0):
  rng = np.random.default_rng(seed)
  y = np.sort(rng.integers(0, m, n))  # sorted by label, as some splits are
  z = rng.standard_normal((m, d))[y] + 0.7 * rng.standard_normal((n, d))
  return z.astype(np.float32), y


KW = {"temperature": 0.2, "positive": "centroid", "negative": "sample", "beta": 0.0}


def test_mean_over_shuffled_equal_batches(x64):
  z, y = _data()
  out = mi_eval.heldout_mi_bound(z, y, method="projnce", loss_kwargs=KW, num_classes=5,
                                 batch_size=256, max_examples=2048, seed=3)
  perm = np.random.default_rng(3).permutation(600)
  want = [float(losses.projnce(jnp.asarray(z[i], jnp.float64), jnp.asarray(y[i]),
                               temperature=0.2, beta=1.0, num_classes=5)[1]["mi_lower_bound"])
          for i in (perm[:256], perm[256:512])]
  assert out["heldout_mi_batch_size"] == 256 and out["heldout_mi_num_batches"] == 2
  assert out["heldout_mi_examples"] == 512
  np.testing.assert_allclose(out["heldout_mi_bound"], np.mean(want), rtol=1e-5)
  np.testing.assert_allclose(out["heldout_mi_bound_se"], np.std(want, ddof=1) / np.sqrt(2),
                             rtol=1e-4)
  # The bound uses the full adjustment whatever beta was trained (beta = 0 above), and is
  # below log(N - 1).
  assert out["heldout_mi_bound"] < np.log(255)


def test_small_split_at_once_and_max_examples():
  z, y = _data(n=300)
  out = mi_eval.heldout_mi_bound(z, y, method="supcon", loss_kwargs=KW, num_classes=5,
                                 batch_size=512, max_examples=2048)
  assert out["heldout_mi_batch_size"] == 300 and out["heldout_mi_bound_se"] is None
  out = mi_eval.heldout_mi_bound(z, y, method="supcon", loss_kwargs=KW, num_classes=5,
                                 batch_size=100, max_examples=250)
  assert out["heldout_mi_num_batches"] == 2 and out["heldout_mi_examples"] == 200


def test_methods_without_a_class_critic_have_no_bound():
  z, y = _data(n=50)
  for method in ("cross_entropy", "infonce"):
    assert mi_eval.heldout_mi_bound(z, y, method=method, loss_kwargs=KW,
                                    num_classes=5) is None


def test_mlp_projection_uses_the_trained_params():
  z, y = _data(n=256)
  kw = dict(KW, positive="mlp")
  a, b = (losses.init_mlp_params(jax.random.key(k), num_classes=5, dim=8) for k in (0, 1))
  ra, rb = (mi_eval.heldout_mi_bound(z, y, method="projnce", loss_kwargs=kw, num_classes=5,
                                     projection_params=p)["heldout_mi_bound"] for p in (a, b))
  assert ra != rb


@pytest.mark.parametrize("z_shape,y_shape,bs,msg", [((10, 4), (9,), 4, "labels"),
                                                   ((10,), (10,), 4, "z"),
                                                   ((10, 4), (10,), 1, "batch_size")])
def test_bad_input(z_shape, y_shape, bs, msg):
  with pytest.raises(ValueError, match=msg):
    mi_eval.heldout_mi_bound(np.zeros(z_shape), np.zeros(y_shape, int), method="projnce",
                             loss_kwargs=KW, num_classes=2, batch_size=bs)


def test_from_config_prefers_clean_labels_and_honours_enabled():
  z, y = _data(n=300)
  noisy = (y + 1) % 5
  config = ml_collections.ConfigDict(dict(
      method="supcon", seed=0, loss=dict(KW),
      heldout_mi=dict(enabled=True, max_examples=2048, batch_size=512)))
  clean = mi_eval.from_config(config, {"z": z, "label": y}, None, 5)
  both = mi_eval.from_config(config, {"z": z, "label": noisy, "clean_label": y}, None, 5)
  assert clean["heldout_mi_bound"] == both["heldout_mi_bound"]
  assert clean["heldout_mi_split"] == "test"
  config.heldout_mi.enabled = False
  assert mi_eval.from_config(config, {"z": z, "label": y}, None, 5)["heldout_mi_bound"] is None


def test_results_json_carries_the_heldout_bound_and_the_train_batch_estimate(
    tiny_config, tmp_path):
  config = tiny_config(num_steps=4, heldout_mi={"batch_size": 256})
  results = train_and_evaluate(config, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert "mi_lower_bound" not in on_disk
  assert on_disk["heldout_mi_bound"] == results["heldout_mi_bound"]
  assert np.isfinite(on_disk["heldout_mi_bound"]) and on_disk["heldout_mi_batch_size"] == 256
  assert np.isfinite(on_disk["train_batch_mi_estimate"])
  report = (tmp_path / "report.md").read_text()
  assert "held-out MI bound (nats)" in report and "train-batch MI estimate (nats)" in report
  assert "not a bound" in report

"""The learnable `mlp` projection trains without collapsing (MNIST-5k, 50 steps)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from projnce_jax import losses
from projnce_jax.train import apply_overrides
from projnce_jax.train import base_config
from projnce_jax.train import train_and_evaluate
from projnce_jax.train.state import make_tx
from projnce_jax.train.state import param_labels


def test_centred_table_is_spread_and_uncentred_random_table_is_not():
  params = losses.init_mlp_params(jax.random.key(0), num_classes=10, dim=32)
  centred = losses.mean_offdiagonal_cosine(losses.mlp_table(params, 10))
  raw = losses.mean_offdiagonal_cosine(losses.mlp_table(params, 10, center=False))
  assert float(centred) < 0.0 < float(raw)
  np.testing.assert_allclose(
      np.linalg.norm(losses.mlp_table(params, 10), axis=1), 1.0, rtol=1e-5)


def test_simplex_init_gives_the_regular_simplex():
  params = losses.init_mlp_params(jax.random.key(1), num_classes=5, dim=16, hidden=8,
                                  init="simplex")
  for center in (True, False):
    table = np.asarray(losses.mlp_table(params, 5, center=center), np.float64)
    cos = table @ table.T
    np.testing.assert_allclose(cos[~np.eye(5, dtype=bool)], -0.25, atol=1e-5)
  np.testing.assert_allclose(table, losses.simplex_table(5, 16), atol=1e-6)


@pytest.mark.parametrize("kw,msg", [(dict(init="eye"), "unknown mlp init"),
                                    (dict(init="simplex", hidden=4), "hidden >= num_classes"),
                                    (dict(init="simplex", dim=3), "d >= num_classes")])
def test_init_errors(kw, msg):
  args = dict(num_classes=5, dim=16, hidden=8)
  args.update(kw)
  with pytest.raises(ValueError, match=msg):
    losses.init_mlp_params(jax.random.key(0), **args)


def test_projection_gets_its_own_optimiser():
  params = {"model": {"w": jnp.ones(3)}, "probe": {"w": jnp.ones(2)},
            "projection": {"w": jnp.ones(4)}}
  assert param_labels(params)["projection"]["w"] == "main"
  assert param_labels(params, separate_projection=True)["projection"]["w"] == "projection"
  tx = make_tx(optax.sgd(1.0), optax.sgd(0.0), projection_tx=optax.sgd(0.5))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["model"]["w"][0]) == -1.0
  assert float(updates["probe"]["w"][0]) == 0.0
  assert float(updates["projection"]["w"][0]) == -0.5


def _mnist_config(positive, steps):
  """The paper_comparison training scale on MNIST-5k, cut to `steps` steps."""
  c = base_config()
  c.dataset.augment.crop_scale = (0.5, 1.0)
  c.lock()
  return apply_overrides(c, {
      "method": "projnce", "loss": {"positive": positive, "negative": "sample", "beta": 1.0},
      "dataset": {"name": "mnist5k", "in_memory": True},
      "model": {"widths": (16, 32, 64), "extra_convs": 1},
      "optimizer": {"base_lr": 0.2}, "batch_size": 128, "num_steps": steps, "num_devices": 1,
      "log_every": 50, "checkpoint_every": steps, "linear_probe": {"epochs": 30},
      "heldout_mi": {"enabled": False}, "report": {"tsne": False}, "progress": False})


def test_mlp_table_stays_spread_and_probe_matches_centroid_on_mnist5k(tmp_path):
  """The table is spread at step 50; the probe is compared after 100 steps.

  At 50 steps the mlp probe trails centroid by 2.8-3.7 points (seeds 0-2, 2-core CPU), at
  the edge of the 3-point margin; at 100 steps by 1.2 and 1.7 (seeds 0, 1), while an
  uncentred (collapsed) table stays far below (62 % against 92 % after 6 epochs).
  """
  tables = []

  def hook(step, state, record):
    del record
    if step == 50:
      tables.append(losses.mlp_table(state.params["projection"], 10))

  mlp = train_and_evaluate(_mnist_config("mlp", 100), str(tmp_path / "mlp"), hooks=[hook])
  centroid = train_and_evaluate(_mnist_config("centroid", 100), str(tmp_path / "centroid"))
  assert len(tables) == 1
  assert float(losses.mean_offdiagonal_cosine(tables[0])) < 0.5
  assert mlp["linear_probe_accuracy"] > centroid["linear_probe_accuracy"] - 0.03, (
      mlp["linear_probe_accuracy"], centroid["linear_probe_accuracy"])

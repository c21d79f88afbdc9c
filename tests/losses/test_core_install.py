"""The core package (losses, parallel) imports and runs without the `[train]` extra."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import projnce_jax as pj
from projnce_jax.losses import projections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_ONLY = ("flax", "optax", "orbax", "chex", "ml_collections", "tensorflow_datasets",
              "grain", "dm_pix", "librosa", "tensorboardX", "matplotlib", "sklearn", "absl",
              "tensorflow", "mlxtend", "tqdm")


def _blocked_env(tmp_path):
  blocked = tmp_path / "blocked"
  for name in TRAIN_ONLY:
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name}')\n")
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), ROOT]),
              JAX_PLATFORMS="cpu")


def test_losses_and_parallel_run_without_training_packages(tmp_path):
  code = """
import jax, jax.numpy as jnp
import projnce_jax as pj
import projnce_jax.parallel
z = jax.random.normal(jax.random.key(0), (64, 16))
y = jnp.arange(64) % 4
params = pj.losses.init_mlp_params(jax.random.key(2), num_classes=4, dim=16)
for kw in ({}, dict(positive="mlp", num_classes=4, params=params), dict(positive="median")):
  loss, aux = pj.losses.projnce(z, y, **kw)
  assert jnp.isfinite(loss)
print(float(pj.losses.cross_entropy(jnp.zeros((64, 4)), y, label_smoothing=0.1)[0]))
"""
  proc = subprocess.run([sys.executable, "-c", code], env=_blocked_env(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  np.testing.assert_allclose(float(proc.stdout.split()[-1]), np.log(4), rtol=1e-6)


@pytest.mark.parametrize("module", ["projnce_jax.train", "projnce_jax.data",
                                    "projnce_jax.models", "projnce_jax.report"])
def test_training_modules_name_the_extra(tmp_path, module):
  proc = subprocess.run([sys.executable, "-c", f"import {module}"],
                        env=_blocked_env(tmp_path), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0
  assert "pip install 'projnce_jax[train]'" in proc.stderr, proc.stderr[-1500:]


@pytest.mark.parametrize("seed,num_classes,dim,hidden", [(0, 10, 128, 256), (3, 7, 32, 16)])
def test_plain_jax_mlp_equals_the_flax_module(seed, num_classes, dim, hidden):
  """init_mlp_params / mlp_table without flax give flax's values exactly."""
  key = jax.random.key(seed)
  module = projections.ClassEmbeddingMLP(num_classes=num_classes, dim=dim, hidden=hidden)
  want = module.init(key)["params"]
  got = pj.losses.init_mlp_params(key, num_classes=num_classes, dim=dim, hidden=hidden)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  for center in (True, False):
    flax_table = projections.ClassEmbeddingMLP(
        num_classes=num_classes, dim=dim, hidden=hidden, center=center).apply({"params": want})
    np.testing.assert_allclose(pj.losses.mlp_table(got, num_classes, center=center),
                               flax_table, rtol=1e-6, atol=1e-7)


def test_cross_entropy_equals_optax_with_smoothing():
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((16, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 16))
  for s in (0.0, 0.2):
    want = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(y, 5), s)).mean()
    np.testing.assert_allclose(pj.losses.cross_entropy(logits, y, label_smoothing=s)[0],
                               want, rtol=1e-6)

"""Encoders and heads: shapes, dtypes, parameter counts, BatchNorm across devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projnce_jax import parallel
from projnce_jax.models import create_encoder
from projnce_jax.models import create_model
from projnce_jax.train.state import jit_once
from jax.sharding import PartitionSpec as P


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,shape,feat", [
    ("small_cnn", (3, 28, 28, 1), 128),
    ("small_cnn", (3, 8, 8, 1), 128),
    ("audio_cnn", (3, 101, 64, 1), 256),
    ("resnet18", (3, 32, 32, 3), 512),
])
def test_output_shapes_and_unit_embeddings(name, shape, feat):
  model = create_model(name, num_classes=7, proj_dim=16,
                       width=8 if name.startswith("resnet") else None)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = jit_once(functools.partial(model.init, train=False), jax.random.PRNGKey(1), x)
  out, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  feat = feat // 8 if name.startswith("resnet") else feat
  assert out["features"].shape == (3, feat)
  assert out["z"].shape == (3, 16) and out["z"].dtype == jnp.float32
  assert out["logits"].shape == (3, 7) and out["logits"].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["z"], axis=-1), 1.0, rtol=1e-5)
  assert "batch_stats" in updates


def test_resnet_parameter_counts():
  """CIFAR ResNet-18/50 encoders have the usual 11.2M / 23.5M parameters."""
  x = jnp.zeros((1, 32, 32, 3))
  for name, expected in [("resnet18", 11.17e6), ("resnet50", 23.5e6)]:
    enc = create_encoder(name)
    shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), x, train=False))
    assert abs(_count(shapes["params"]) - expected) / expected < 0.01, name


def test_resnet_keeps_resolution_in_stem():
  """No max-pool and a stride-1 stem: a 32x32 input reaches the last stage at 4x4."""
  enc = create_encoder("resnet18", width=4)
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), x, train=False))
  _, state = jax.eval_shape(lambda v: enc.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=["intermediates"]), variables)
  shapes = [v.shape for v in jax.tree.leaves(state["intermediates"])]
  assert (1, 32, 32, 4) in shapes and (1, 4, 4, 32) in shapes


def test_bfloat16_compute_float32_outputs():
  model = create_model("small_cnn", widths=(8, 16), num_classes=3, proj_dim=8,
                       dtype="bfloat16")
  x = jnp.ones((2, 8, 8, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  out, inter = jax.eval_shape(lambda v: model.apply(
      v, x, train=False, capture_intermediates=True, mutable=["intermediates"]), variables)
  assert out["z"].dtype == jnp.float32 and out["features"].dtype == jnp.float32
  enc_out = inter["intermediates"]["encoder"]["__call__"][0]
  assert enc_out.dtype == jnp.bfloat16


def test_unknown_names_fail_loudly():
  with pytest.raises(ValueError, match="unknown encoder"):
    create_encoder("vgg")
  with pytest.raises(ValueError, match="unknown dtype"):
    create_model("small_cnn", dtype="float8")


def test_batchnorm_statistics_are_global_under_shard_map():
  """BatchNorm with axis_name="data" on 8 devices == one device on the whole batch."""
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 1)) * 3.0 + 1.0
  single = create_model("small_cnn", widths=(4, 8), proj_dim=8)
  multi = create_model("small_cnn", widths=(4, 8), proj_dim=8, bn_axis_name="data")
  variables = jit_once(functools.partial(single.init, train=False), jax.random.PRNGKey(1), x)
  ref, ref_upd = jax.jit(functools.partial(single.apply, train=True, mutable=["batch_stats"]))(
      variables, x)

  mesh = parallel.make_mesh(8)
  fn = jax.shard_map(
      lambda v, xs: multi.apply(v, xs, train=True, mutable=["batch_stats"]),
      mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()))
  out, upd = jax.jit(fn)(variables, x)
  np.testing.assert_allclose(out["z"], ref["z"], rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref_upd)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

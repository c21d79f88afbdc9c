"""The train step: every loss trains, sharded == single device, optimiser details."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from projnce_jax import parallel
from projnce_jax.losses import init_mlp_params
from projnce_jax.models import create_model
from projnce_jax.train.inputs import make_train_inputs
from projnce_jax.train.optim import decay_mask
from projnce_jax.train.optim import make_optimizer
from projnce_jax.train.optim import warmup_cosine
from projnce_jax.train.state import create_train_state
from projnce_jax.train.state import make_tx
from projnce_jax.train.step import make_train_step

NUM_CLASSES = 10


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, NUM_CLASSES, (n,)).astype(np.int32),
          "mask": np.ones((n,), bool),
          "index": np.arange(n, dtype=np.int32) + 100}


def _setup(method, *, axis_name=None, loss_kwargs=None, opt="sgd"):
  is_ce = method == "cross_entropy"
  model = create_model("small_cnn", widths=(8, 16), proj_dim=0 if is_ce else 32,
                       num_classes=NUM_CLASSES if is_ce else 0, bn_axis_name=axis_name)
  schedule = warmup_cosine(peak_lr=0.1, total_steps=10, warmup_steps=0)  # lr(0) > 0
  tx = make_tx(make_optimizer(opt, schedule, weight_decay=1e-4), optax.adam(1e-3))
  loss_kwargs = dict(loss_kwargs or {"temperature": 0.1})
  proj_init = None
  if "mlp" in (loss_kwargs.get("positive"), loss_kwargs.get("negative")):
    proj_init = lambda k: init_mlp_params(k, num_classes=NUM_CLASSES, dim=32, hidden=16)
  state = create_train_state(jax.random.PRNGKey(0), model, jnp.zeros([1, 8, 8, 1]),
                             num_classes=NUM_CLASSES, tx=tx, projection_init=proj_init)
  step = make_train_step(model=model, method=method, loss_kwargs=loss_kwargs, num_views=2,
                         num_classes=NUM_CLASSES, schedule=schedule,
                         train_inputs=make_train_inputs("image", num_views=2),
                         axis_name=axis_name)
  return state, step


CASES = [
    ("projnce", {"temperature": 0.1, "positive": "centroid", "negative": "sample",
                 "beta": 1.0}),
    ("projnce", {"temperature": 0.1, "positive": "mlp", "negative": "sample", "beta": 1.0}),
    ("projnce", {"temperature": 0.1, "positive": "kernel", "negative": "orthogonal",
                 "beta": 0.5, "impl": "blockwise", "block_size": 16}),
    ("supcon", {"temperature": 0.1}),
    ("infonce", {"temperature": 0.5}),
    ("cross_entropy", {}),
]


@pytest.mark.parametrize("method,loss_kwargs", CASES,
                         ids=[f"{m}-{k.get('positive', '')}" for m, k in CASES])
def test_real_train_step_for_every_loss(method, loss_kwargs):
  state, step = _setup(method, loss_kwargs=loss_kwargs)
  before = jax.tree.map(np.array, state.params)
  step = jax.jit(step, donate_argnums=0)
  state, metrics = step(state, jax.device_put(_batch()))
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k in ("loss", "probe_loss", "probe_accuracy", "learning_rate"):
    assert np.isfinite(metrics[k]), (k, metrics)
  if method != "cross_entropy":
    for k in ("infonce_term", "adjustment", "mi_lower_bound"):
      assert np.isfinite(metrics[k]), (k, metrics)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before,
                         jax.device_get(state.params))
  assert any(jax.tree.leaves(changed["model"]))
  assert any(jax.tree.leaves(changed["probe"]))
  if loss_kwargs.get("positive") == "mlp":
    assert any(jax.tree.leaves(changed["projection"])), "class-embedding MLP not trained"
  # Second step runs with the donated/updated state and a new RNG stream position.
  state, metrics = step(state, jax.device_put(_batch(seed=1)))
  assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("method", ["projnce"])
def test_sharded_step_equals_single_device(method):
  assert jax.device_count() == 8
  batch = _batch(32)
  state1, step1 = _setup(method)
  state1, m1 = jax.jit(step1)(state1, jax.device_put(batch))

  mesh = parallel.make_mesh(8)
  state8, step8 = _setup(method, axis_name="data")
  state8 = jax.device_put(state8, parallel.replicated_sharding(mesh))
  sharded = parallel.sharded_step(lambda s, b, _: step8(s, b), mesh)
  state8, m8 = sharded(state8, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(0))

  np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m8["probe_accuracy"]), float(m1["probe_accuracy"]))
  flat1 = jax.tree_util.tree_leaves_with_path(jax.device_get(state1.params))
  flat8 = jax.tree.leaves(jax.device_get(state8.params))
  for (path, a), b in zip(flat1, flat8):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6, err_msg=str(path))
  for a, b in zip(jax.tree.leaves(jax.device_get(state1.batch_stats)),
                  jax.tree.leaves(jax.device_get(state8.batch_stats))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_decay_mask_excludes_biases_and_batchnorm():
  model = create_model("small_cnn", widths=(8,), proj_dim=16)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros([1, 8, 8, 1]), train=False)["params"]
  mask = decay_mask(params)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert all(v for k, v in flat.items() if k.endswith("['kernel']"))
  assert not any(v for k, v in flat.items() if k.endswith("['bias']") or
                 k.endswith("['scale']"))


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_weight_decay_leaves_masked_params_alone(name):
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones((3,))}
  tx = make_optimizer(name, lambda s: 0.1, weight_decay=0.5)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.abs(updates["b"]).max()) == 0.0
  assert float(jnp.abs(updates["w"]).max()) > 0.0


def test_warmup_cosine_schedule():
  s = warmup_cosine(peak_lr=1.0, total_steps=100, warmup_steps=10)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
  assert 0.0 <= float(s(100)) < 1e-6
  assert float(s(50)) < 1.0


def test_augmentation_depends_only_on_key_and_example_index():
  fn = jax.jit(make_train_inputs("image", num_views=2))
  batch = _batch(8)
  key = jax.random.PRNGKey(3)
  full = np.asarray(fn(key, batch))                     # [16, 8, 8, 1]
  half = np.asarray(fn(key, {k: v[4:] for k, v in batch.items()}))
  np.testing.assert_allclose(full[8:], half, atol=1e-6)
  assert full.shape == (16, 8, 8, 1)
  assert not np.allclose(full[0], full[1])              # two different views


@pytest.mark.parametrize("method", ["projnce", "supcon"])
def test_method_loss_passes_the_dataset_num_classes(method, monkeypatch):
  """The class-level terms get M class slots, not one slot per row of the batch."""
  from projnce_jax import losses
  from projnce_jax.train.step import method_loss
  seen = {}
  original = getattr(losses, method)

  def spy(*args, **kwargs):
    seen.update(kwargs)
    return original(*args, **kwargs)

  monkeypatch.setattr(losses, method, spy)
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, 16), jnp.int32)
  loss, _ = method_loss(method, {"z": z}, labels, jnp.ones(16, bool), num_views=2,
                        loss_kwargs={"temperature": 0.1}, num_classes=NUM_CLASSES)
  assert seen["num_classes"] == NUM_CLASSES
  expected, _ = original(z, labels, temperature=0.1)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


@pytest.mark.parametrize("method", ["projnce", "supcon", "infonce"])
def test_method_loss_keeps_a_bfloat16_head_and_returns_float32(method, monkeypatch):
  """A bf16 head reaches the loss as bf16 (bf16 matmuls); the loss itself is float32."""
  from projnce_jax import losses
  from projnce_jax.train.step import method_loss
  seen = {}
  original = getattr(losses, method)

  def spy(z, *args, **kwargs):
    seen["dtype"] = z.dtype
    return original(z, *args, **kwargs)

  monkeypatch.setattr(losses, method, spy)
  rng = np.random.default_rng(1)
  z32 = jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)
  labels = jnp.asarray(np.repeat(rng.integers(0, NUM_CLASSES, 8), 2), jnp.int32)
  kwargs = dict(num_views=2, loss_kwargs={"temperature": 0.1}, num_classes=NUM_CLASSES)
  loss16, _ = method_loss(method, {"z": z32.astype(jnp.bfloat16)}, labels,
                          jnp.ones(16, bool), **kwargs)
  assert seen["dtype"] == jnp.bfloat16
  assert loss16.dtype == jnp.float32
  loss32, _ = method_loss(method, {"z": z32}, labels, jnp.ones(16, bool), **kwargs)
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)


def test_audio_eval_features_match_the_training_views_settings():
  """A config's n_fft/hop/n_mels reach both the training views and the eval features."""
  from projnce_jax.train.inputs import make_eval_inputs  # pylint: disable=g-import-not-at-top
  wave = jnp.asarray(np.random.default_rng(0).integers(-3000, 3000, (2, 16000)), jnp.int16)
  batch = {"audio": wave, "index": jnp.arange(2)}
  for kwargs, shape in (({}, (101, 64, 1)), ({"hop": 320, "n_mels": 40}, (51, 40, 1))):
    train = make_train_inputs("audio", num_views=2, augment_kwargs=dict(kwargs, max_shift=0.0))
    evaluate = make_eval_inputs("audio", augment_kwargs=dict(kwargs, max_shift=0.0))
    assert train(jax.random.PRNGKey(0), batch).shape == (4,) + shape
    assert evaluate(batch).shape == (2,) + shape

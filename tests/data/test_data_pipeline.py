"""Grain loader: per-epoch shuffling, sharding, padding mask, resumable state."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from projnce_jax.data import noise
from projnce_jax.data import pipeline
from projnce_jax.data import sources


def _source(n=10):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  return pipeline.ArraySource({"image": images, "label": np.arange(n) % 3})


def _take(it, k):
  return [next(it) for _ in range(k)]


def test_batch_contents_and_dtypes():
  it = pipeline.make_loader(_source(), batch_size=4, seed=0)
  b = next(it)
  assert set(b) == {"image", "label", "mask", "index"}
  assert b["image"].shape == (4, 2, 2, 1) and b["image"].dtype == np.uint8
  assert b["label"].dtype == np.int32 and b["mask"].dtype == np.bool_
  np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"])
  np.testing.assert_array_equal(b["label"], b["index"] % 3)


def test_epochs_are_permutations_reshuffled_and_seeded():
  n, bs = 12, 4
  it = pipeline.make_loader(_source(n), batch_size=bs, seed=3, num_epochs=3)
  idx = np.concatenate([b["index"] for b in it]).reshape(3, n)
  for epoch in idx:
    assert sorted(epoch) == list(range(n))
  assert not np.array_equal(idx[0], idx[1])
  again = pipeline.make_loader(_source(n), batch_size=bs, seed=3, num_epochs=3)
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in again]), idx.ravel())
  other = pipeline.make_loader(_source(n), batch_size=bs, seed=4, num_epochs=1)
  assert not np.array_equal(np.concatenate([b["index"] for b in other]), idx[0])


def test_no_shuffle_keeps_order():
  it = pipeline.make_loader(_source(8), batch_size=4, seed=0, shuffle=False, num_epochs=1)
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in it]), np.arange(8))


def test_padding_mask_at_epoch_end():
  it = pipeline.make_loader(_source(10), batch_size=4, seed=1, num_epochs=2,
                            drop_remainder=False)
  batches = list(it)
  assert len(batches) == 6 and it.steps_per_epoch == 3
  for epoch in (batches[:3], batches[3:]):
    masks = np.concatenate([b["mask"] for b in epoch])
    np.testing.assert_array_equal(masks, [True] * 10 + [False] * 2)
    valid = np.concatenate([b["index"][b["mask"]] for b in epoch])
    assert sorted(valid) == list(range(10))
    assert epoch[-1]["image"].shape == (4, 2, 2, 1)  # Padded to full size.


def test_drop_remainder():
  it = pipeline.make_loader(_source(10), batch_size=4, seed=1, num_epochs=1)
  batches = list(it)
  assert len(batches) == 2
  assert all(b["mask"].all() for b in batches)
  assert len(set(np.concatenate([b["index"] for b in batches]))) == 8


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_two_processes_get_disjoint_shards_of_the_global_batch(drop_remainder):
  n, bs = 22, 8
  kw = dict(batch_size=bs, seed=7, num_epochs=1, drop_remainder=drop_remainder)
  full = list(pipeline.make_loader(_source(n), shard_index=0, shard_count=1, **kw))
  shards = [list(pipeline.make_loader(_source(n), shard_index=p, shard_count=2, **kw))
            for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(full)
  seen = [set(), set()]
  for t, global_batch in enumerate(full):
    a, b = shards[0][t], shards[1][t]
    assert a["index"].shape == (bs // 2,)
    np.testing.assert_array_equal(
        np.concatenate([a["index"], b["index"]]), global_batch["index"])
    np.testing.assert_array_equal(
        np.concatenate([a["mask"], b["mask"]]), global_batch["mask"])
    for p, part in enumerate((a, b)):
      seen[p] |= set(part["index"][part["mask"]].tolist())
  assert not seen[0] & seen[1]
  covered = seen[0] | seen[1]
  assert covered == set(range(n)) if not drop_remainder else len(covered) == 16


def test_state_round_trip_reproduces_next_batches():
  kw = dict(batch_size=4, seed=5, drop_remainder=False)
  it = pipeline.make_loader(_source(10), **kw)
  _take(it, 4)  # Crosses the first epoch boundary (3 steps per epoch).
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 5)
  resumed = pipeline.make_loader(_source(10), **kw)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 5)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_set_state_rejects_other_settings():
  it = pipeline.make_loader(_source(10), batch_size=4, seed=5)
  state = it.get_state()
  other = pipeline.make_loader(_source(10), batch_size=2, seed=5)
  with pytest.raises(ValueError, match="batch_size"):
    other.set_state(state)


def test_global_jax_arrays_with_sharding():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  it = pipeline.make_loader(_source(24), batch_size=16, seed=0, sharding=sharding)
  b = next(it)
  assert isinstance(b["image"], jax.Array) and b["image"].shape == (16, 2, 2, 1)
  assert b["label"].sharding == sharding
  assert len(b["index"].addressable_shards) == len(jax.devices())


def test_label_fn_applies_noise_by_index():
  labels = np.arange(10) % 3
  noisy, _ = noise.apply_label_noise(labels, rate=0.5, num_classes=3, seed=1)
  it = pipeline.make_loader(_source(10), batch_size=5, seed=0,
                            label_fn=pipeline.noisy_label_fn(noisy))
  for b in _take(it, 4):
    np.testing.assert_array_equal(b["label"], noisy[b["index"]])


def test_argument_errors():
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_loader(_source(), batch_size=5, seed=0, shard_index=0, shard_count=2)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_loader(_source(), batch_size=4, seed=0, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="exceeds"):
    pipeline.make_loader(_source(3), batch_size=4, seed=0)
  with pytest.raises(TypeError, match="batch_size"):
    pipeline.make_loader(_source(), batch_size=4.0, seed=0)


def test_loader_over_prepared_digits(digits_dir):
  src = sources.load_split("digits", "train", data_dir=digits_dir)
  it = pipeline.make_loader(src, batch_size=64, seed=0, num_epochs=1)
  assert it.num_steps == len(src) // 64
  b = next(it)
  assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.uint8
  for i in range(3):
    np.testing.assert_array_equal(b["image"][i], src[int(b["index"][i])]["image"])

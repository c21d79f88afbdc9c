"""Validation split, training subset and label noise of `projnce_jax.data.splits`."""
import numpy as np
import pytest

from projnce_jax.data import pipeline
from projnce_jax.data import sources
from projnce_jax.data import splits


def _images(src):
  return {src[i]["image"].tobytes() for i in range(len(src))}


def test_validation_disjoint_from_train_and_test(digits_dir):
  s = splits.make_splits("digits", data_dir=digits_dir, val_fraction=0.1, split_seed=3)
  assert len(s.train) + len(s.validation) == 1438 and len(s.test) == 359
  assert len(s.validation) == round(0.1 * 1438)
  # By position in the original training split: disjoint, together all of it.
  assert not set(s.train_positions) & set(s.validation_positions)
  assert sorted(set(s.train_positions) | set(s.validation_positions)) == list(range(1438))
  # By content (the digits images have no exact duplicates across these parts).
  train, val, test = _images(s.train), _images(s.validation), _images(s.test)
  assert len(val) == len(s.validation)
  assert not val & train and not val & test and not train & test


def test_validation_is_stratified_seeded_and_clean_labels_are_kept(digits_dir):
  a = splits.make_splits("digits", data_dir=digits_dir, split_seed=0)
  b = splits.make_splits("digits", data_dir=digits_dir, split_seed=0, in_memory=True)
  c = splits.make_splits("digits", data_dir=digits_dir, split_seed=1)
  np.testing.assert_array_equal(a.validation_positions, b.validation_positions)
  assert not np.array_equal(a.validation_positions, c.validation_positions)
  full = np.bincount(np.concatenate([a.clean_labels["train"], a.clean_labels["validation"]]))
  val = np.bincount(a.clean_labels["validation"], minlength=10)
  np.testing.assert_allclose(val, full * len(a.validation) / full.sum(), atol=1.0)
  labels = [a.validation[i]["label"] for i in range(len(a.validation))]
  np.testing.assert_array_equal(labels, a.clean_labels["validation"])
  # No noise: the noisy labels are the clean ones and no label_fn is needed.
  np.testing.assert_array_equal(a.noisy_labels["validation"], a.clean_labels["validation"])
  assert a.label_fn("train") is None and a.label_fn("validation") is None


def test_noisy_validation_labels_and_clean_ones_kept(digits_dir):
  s = splits.make_splits("digits", data_dir=digits_dir, label_noise=0.4, noise_seed=0)
  for split in ("train", "validation"):
    clean, noisy = s.clean_labels[split], s.noisy_labels[split]
    assert 0.45 < np.mean(clean == noisy) < 0.75, split   # 60% kept in expectation
    positions = np.arange(len(clean))
    np.testing.assert_array_equal(s.label_fn(split)(clean, positions), noisy)
  np.testing.assert_array_equal(s.noisy_labels["test"], s.clean_labels["test"])
  assert s.label_fn("test") is None
  assert s.clean_fraction == pytest.approx(np.mean(s.clean_labels["train"] ==
                                                   s.noisy_labels["train"]))
  # An example's noisy label does not depend on how much validation is held out.
  t = splits.make_splits("digits", data_dir=digits_dir, label_noise=0.4, noise_seed=0,
                         val_fraction=0.0)
  assert t.validation is None and len(t.train) == 1438
  np.testing.assert_array_equal(t.noisy_labels["train"][s.validation_positions],
                                s.noisy_labels["validation"])


def test_train_subset_is_stratified_and_inside_train(digits_dir):
  s = splits.make_splits("digits", data_dir=digits_dir, train_subset=500, in_memory=True)
  assert len(s.train) == 500 and isinstance(s.train, pipeline.ArraySource)
  counts = np.bincount(s.clean_labels["train"], minlength=10)
  assert counts.sum() == 500 and counts.min() >= 48 and counts.max() <= 52
  assert not set(s.train_positions) & set(s.validation_positions)
  with pytest.raises(ValueError, match="train_subset"):
    splits.make_splits("digits", data_dir=digits_dir, train_subset=2000)


def test_no_validation_split_is_a_clear_error(digits_dir):
  s = splits.make_splits("digits", data_dir=digits_dir, val_fraction=0.0)
  with pytest.raises(ValueError, match="val_fraction"):
    s.source("validation")
  with pytest.raises(ValueError, match="val_fraction"):
    splits.make_splits("digits", data_dir=digits_dir, val_fraction=1.0)


def test_stratified_choice_exact_size():
  labels = np.array([0] * 7 + [1] * 3 + [2] * 1)
  for size in range(12):
    idx = splits.stratified_choice(labels, size, seed=0)
    assert len(idx) == size == len(set(idx.tolist()))
  with pytest.raises(ValueError, match="size"):
    splits.stratified_choice(labels, 12, seed=0)


def test_indexed_source_maps_positions():
  base = pipeline.ArraySource({"x": np.arange(10) * 10, "label": np.arange(10) % 2})
  sub = splits.IndexedSource(base, np.array([7, 2, 5]))
  assert len(sub) == 3 and sub[0]["x"] == 70
  assert [r["x"] for r in sub.__getitems__([2, 1])] == [50, 20]


def test_fashion_mnist_10k_subset_with_validation(fashion_dir):
  s = splits.make_splits("fashion_mnist_local", data_dir=fashion_dir, train_subset=10000,
                         val_fraction=0.1, in_memory=True)
  assert len(s.train) == 10000 and len(s.validation) == 6000 and len(s.test) == 10000
  np.testing.assert_array_equal(np.bincount(s.clean_labels["train"]), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(s.clean_labels["validation"]), [600] * 10)
  assert not set(s.train_positions) & set(s.validation_positions)
  assert s.train[0]["image"].shape == (28, 28, 1)
  # The flip stays on for clothes (only the digit datasets turn it off).
  assert sources.get_info("fashion_mnist_local").flip_prob == 0.5

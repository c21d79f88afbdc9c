"""Label noise: flip rates, targets, determinism."""
import numpy as np
import pytest

from projnce_jax.data import noise

N, M = 20000, 10


def _labels(seed=0):
  return np.random.default_rng(seed).integers(0, M, N)


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_flip_rate_within_three_standard_errors(kind, rate):
  labels = _labels()
  noisy, is_clean = noise.apply_label_noise(labels, rate=rate, num_classes=M, kind=kind)
  assert noisy.dtype == np.int64 and is_clean.dtype == np.bool_
  assert noisy.shape == is_clean.shape == (N,)
  np.testing.assert_array_equal(is_clean, noisy == labels)
  flipped = 1.0 - is_clean.mean()
  se = np.sqrt(rate * (1 - rate) / N)
  assert abs(flipped - rate) <= 3 * se + 1e-12, (flipped, rate)


def test_symmetric_targets_are_uniform_over_other_classes():
  labels = _labels()
  noisy, is_clean = noise.apply_label_noise(labels, rate=0.5, num_classes=M, seed=2)
  offsets = (noisy - labels)[~is_clean] % M
  assert offsets.min() >= 1  # Never flipped to itself.
  counts = np.bincount(offsets, minlength=M)[1:]
  expected = len(offsets) / (M - 1)
  assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))


def test_asymmetric_flips_to_pair_class():
  labels = _labels()
  noisy, is_clean = noise.apply_label_noise(labels, rate=0.3, num_classes=M,
                                            kind="asymmetric", seed=1)
  np.testing.assert_array_equal(noisy[~is_clean], (labels[~is_clean] + 1) % M)


def test_deterministic_by_seed():
  labels = _labels()
  a = noise.apply_label_noise(labels, rate=0.3, num_classes=M, seed=4)
  b = noise.apply_label_noise(labels, rate=0.3, num_classes=M, seed=4)
  c = noise.apply_label_noise(labels, rate=0.3, num_classes=M, seed=5)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_errors_name_the_bad_value():
  labels = _labels()
  with pytest.raises(ValueError, match="1.5"):
    noise.apply_label_noise(labels, rate=1.5, num_classes=M)
  with pytest.raises(ValueError, match="'pairwise'"):
    noise.apply_label_noise(labels, rate=0.1, num_classes=M, kind="pairwise")
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    noise.apply_label_noise(labels, rate=0.1, num_classes=5)
  with pytest.raises(TypeError, match="float"):
    noise.apply_label_noise(labels.astype(float), rate=0.1, num_classes=M)

"""On-device augmentation: determinism, shapes, ranges, crop scale, log-mel."""
import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from projnce_jax.data import augment

B, H, W = 4, 16, 16


@functools.lru_cache(maxsize=None)
def _aug_fn(**kw):
  return jax.jit(functools.partial(augment.augment_images, **kw))


def _images(c=3, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, 256, (B, H, W, c), dtype=np.uint8))


def test_images_shape_dtype_range():
  views = _aug_fn(num_views=2)(jax.random.key(0), _images())
  assert views.shape == (B, 2, H, W, 3) and views.dtype == jnp.float32
  assert float(views.min()) >= -1.0 - 1e-6 and float(views.max()) <= 1.0 + 1e-6


def test_images_deterministic_per_key_and_distinct_across_keys_and_views():
  f = _aug_fn(num_views=2)
  a = f(jax.random.key(1), _images())
  b = f(jax.random.key(1), _images())
  c = f(jax.random.key(2), _images())
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(a, c)
  for i in range(B):
    assert not np.allclose(a[i, 0], a[i, 1])


@pytest.mark.parametrize("box,size", [
    ((1.3, 2.7, 10.2, 12.5), (16, 16)),   # upscale a fractional crop
    ((0.0, 0.0, 16.0, 16.0), (8, 10)),    # antialiased downscale
])
def test_crop_and_resize_matches_scale_and_translate(box, size):
  x = jnp.asarray(np.random.default_rng(0).random((H, W, 3)), jnp.float32)
  box = jnp.asarray(box, jnp.float32)
  scale = jnp.stack([size[0] / box[2], size[1] / box[3]])
  ref = jax.image.scale_and_translate(x, (*size, 3), (0, 1), scale,
                                      -box[:2] * scale, method="linear",
                                      antialias=True)
  np.testing.assert_allclose(augment.crop_and_resize(x, box, size), ref, atol=1e-5)


def test_grayscale_input_and_output_size():
  views = _aug_fn(num_views=3, image_size=8)(jax.random.key(0), _images(c=1))
  assert views.shape == (B, 3, 8, 8, 1)
  assert np.isfinite(np.asarray(views)).all()


def test_identity_settings_equal_normalize_images():
  images = _images()
  views = _aug_fn(num_views=2, crop_scale=(1.0, 1.0), jitter_prob=0.0,
                  gray_prob=0.0, mean=(0.4, 0.5, 0.6), std=0.25)(
                      jax.random.key(0), images)
  ref = np.asarray(augment.normalize_images(images, mean=(0.4, 0.5, 0.6), std=0.25))
  for i in range(B):
    for v in range(2):
      got = np.asarray(views[i, v])
      assert (np.allclose(got, ref[i], atol=1e-4)
              or np.allclose(got, ref[i][:, ::-1], atol=1e-4))


def test_normalize_images_default_range():
  images = jnp.asarray([[[[0]], [[255]]]], jnp.uint8)  # [1, 2, 1, 1]
  out = augment.normalize_images(images)
  np.testing.assert_allclose(np.asarray(out).ravel(), [-1.0, 1.0])


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.5, 0.6)])
@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_crop_params_distribution(scale, hw):
  h, w = hw
  keys = jax.random.split(jax.random.key(0), 4000)
  boxes = np.asarray(jax.vmap(
      lambda k: augment.sample_crop_params(k, h, w, scale=scale))(keys))
  top, left, ch, cw = boxes.T
  area = ch * cw / (h * w)
  assert area.min() >= scale[0] - 1e-4 and area.max() <= scale[1] + 1e-4
  # Uniform in the range: mean and quartiles close to the uniform's.
  lo, hi = scale
  np.testing.assert_allclose(area.mean(), (lo + hi) / 2, atol=0.02 * (hi - lo) + 1e-3)
  np.testing.assert_allclose(np.quantile(area, [0.25, 0.75]),
                             [lo + (hi - lo) / 4, lo + 3 * (hi - lo) / 4],
                             atol=0.03 * (hi - lo) + 1e-3)
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + ch <= h + 1e-3).all() and (left + cw <= w + 1e-3).all()
  if h == w:  # The ratio clip is inactive on square images for scale <= 0.75.
    small = area < 0.7
    ratio = cw[small] / ch[small]
    assert ratio.min() >= 0.75 - 1e-3 and ratio.max() <= 4 / 3 + 1e-3


def test_crop_scale_validation():
  with pytest.raises(ValueError, match="1.5"):
    augment.sample_crop_params(jax.random.key(0), 8, 8, scale=(0.2, 1.5))


def test_bad_image_shape():
  with pytest.raises(ValueError, match=r"\(4, 16, 16\)"):
    augment.augment_images(jax.random.key(0), jnp.zeros((4, 16, 16), jnp.uint8))


SR = 16000


def _tone(freq, seconds=0.5):
  t = np.arange(int(SR * seconds)) / SR
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_log_mel_of_a_tone_peaks_at_its_mel_bin(freq):
  lm = np.asarray(augment.log_mel(jnp.asarray(_tone(freq)), sample_rate=SR,
                                  n_mels=64))
  assert lm.shape == (1 + int(SR * 0.5) // 160, 64) and lm.dtype == np.float32
  centers = librosa.mel_frequencies(64 + 2, fmin=0.0, fmax=SR / 2)[1:-1]
  expected = int(np.argmin(np.abs(centers - freq)))
  assert abs(int(np.argmax(lm.mean(axis=0))) - expected) <= 1


def test_log_mel_matches_librosa_with_and_without_jit():
  wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
  lm = np.asarray(augment.log_mel(jnp.asarray(wave), sample_rate=SR))
  jitted = jax.jit(functools.partial(augment.log_mel, sample_rate=SR))
  np.testing.assert_allclose(jitted(jnp.asarray(wave)), lm, atol=1e-4)
  ref = librosa.feature.melspectrogram(y=wave, sr=SR, n_fft=512, hop_length=160,
                                       n_mels=64, power=2.0, pad_mode="reflect")
  np.testing.assert_allclose(lm, np.log(ref.T + 1e-6), atol=1e-3)


def test_int16_audio_is_scaled():
  wave = _tone(440.0)
  a = augment.audio_features(jnp.asarray(wave)[None], sample_rate=SR)
  b = augment.audio_features(jnp.asarray((wave * 32768).astype(np.int16))[None],
                             sample_rate=SR)
  assert a.shape == (1, 51, 64, 1)
  np.testing.assert_allclose(a, b, atol=5e-2)


def test_augment_audio_shapes_determinism_and_views():
  waves = jnp.asarray(np.stack([_tone(440.0), _tone(2000.0)]))
  f = jax.jit(functools.partial(augment.augment_audio, sample_rate=SR,
                                num_views=2, crop_length=6400))
  a, b, c = f(jax.random.key(0), waves), f(jax.random.key(0), waves), f(jax.random.key(1), waves)
  assert a.shape == (2, 2, 41, 64, 1) and a.dtype == jnp.float32
  assert np.isfinite(np.asarray(a)).all()
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(a, c)
  assert not np.allclose(a[0, 0], a[0, 1])


def test_spec_augment_masks_bands_with_the_mean():
  spec = jnp.arange(50 * 16, dtype=jnp.float32).reshape(50, 16)
  out = np.asarray(augment.spec_augment(jax.random.key(0), spec, time_masks=1,
                                        time_width=50, freq_masks=0))
  changed = ~np.isclose(out, np.asarray(spec))
  rows = np.flatnonzero(changed.any(axis=1))
  if rows.size:  # One contiguous band of whole rows set to the mean.
    assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
    np.testing.assert_allclose(out[rows], float(spec.mean()))


def _full_frame(**kw):
  """Views with the crop covering the whole image and no colour change (flip only)."""
  return _aug_fn(num_views=4, crop_scale=(1.0, 1.0), jitter_prob=0.0, gray_prob=0.0,
                 **kw)


def test_flip_prob_zero_never_mirrors_and_one_always_mirrors():
  images = _images(c=1, seed=4)                         # random pixels: not symmetric
  plain = np.asarray(augment.normalize_images(images))  # [B, H, W, C]
  mirrored = plain[:, :, ::-1]
  for seed in range(4):                                 # 4 keys x 4 images x 4 views
    key = jax.random.key(seed)
    never = np.asarray(_full_frame(flip_prob=0.0)(key, images))
    always = np.asarray(_full_frame(flip_prob=1.0)(key, images))
    for v in range(4):
      np.testing.assert_allclose(never[:, v], plain, atol=1e-5)
      np.testing.assert_allclose(always[:, v], mirrored, atol=1e-5)
  # The default (0.5) mirrors some views and not others.
  half = np.asarray(_full_frame()(jax.random.key(0), images))
  flipped = [np.allclose(half[i, v], mirrored[i], atol=1e-5)
             for i in range(B) for v in range(4)]
  assert any(flipped) and not all(flipped)


def test_jitter_strengths_zero_change_nothing_and_bad_values_are_rejected():
  images = _images(c=3, seed=5)
  plain = np.asarray(augment.normalize_images(images))
  views = _aug_fn(num_views=2, crop_scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=1.0,
                  gray_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)(
                      jax.random.key(0), images)
  np.testing.assert_allclose(np.asarray(views)[:, 0], plain, atol=1e-4)
  strong = _aug_fn(num_views=2, crop_scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=1.0,
                   gray_prob=0.0, brightness=0.8)(jax.random.key(0), images)
  assert not np.allclose(np.asarray(strong)[:, 0], plain, atol=1e-2)
  with pytest.raises(ValueError, match="flip_prob"):
    augment.augment_images(jax.random.key(0), images, flip_prob=1.5)
  with pytest.raises(ValueError, match="hue"):
    augment.augment_images(jax.random.key(0), images, hue=0.7)

"""On-device augmentation in JAX: V random views per example, explicit keys.

Images (SimCLR / SupCon recipe, Chen et al. 2020, Khosla et al. 2020): random
resized crop (area fraction ``crop_scale``, aspect ratio 3/4..4/3), horizontal
flip (probability ``flip_prob``, default 0.5; the configs of the digit datasets
set 0, a mirrored digit is not a digit), colour jitter (strengths
``brightness``, ``contrast``, ``saturation`` 0.4 and ``hue`` 0.1 by default,
applied in that order with probability ``jitter_prob``), grayscale (probability
``gray_prob``), then normalisation to float32. Saturation, hue and grayscale are
no-ops for one-channel images. Colour operations use dm-pix.

Audio: waveform -> log-mel spectrogram (STFT in JAX, mel filterbank from
``librosa.filters.mel`` computed once on the host), random time crop and shift,
random gain, SpecAugment time and frequency masks (Park et al. 2019).

Nothing here jits itself; call inside the jitted train step, or jit with the
keyword arguments static::

  views = augment_images(key, images, num_views=2)   # float32 [B, 2, H, W, C]
  feats = augment_audio(key, wavs, sample_rate=16000)  # [B, 2, frames, 64, 1]
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}


# ----------------------------------------------------------------- images ---


def _size(image_size: int | Sequence[int] | None, height: int, width: int):
  if image_size is None:
    return height, width
  if isinstance(image_size, (int, np.integer)):
    return int(image_size), int(image_size)
  if len(image_size) != 2:
    raise ValueError(f"image_size must be an int or (h, w), got {image_size!r}.")
  return int(image_size[0]), int(image_size[1])


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        f"images must be [B, H, W, C] with C in (1, 3), got shape {images.shape}."
    )


def _to_unit(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is assumed in [0, 1]."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _normalize_unit(x: jax.Array, mean, std) -> jax.Array:
  mean = DEFAULT_MEAN if mean is None else mean
  std = DEFAULT_STD if std is None else std
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def normalize_images(images: jax.Array, *, mean=None, std=None) -> jax.Array:
  """Evaluation preprocessing, the same normalisation as ``augment_images``.

  Args:
    images: uint8 [B, H, W, C] (or float in [0, 1]).
    mean: per-channel (or scalar) mean of [0, 1] pixels; default 0.5.
    std: per-channel (or scalar) standard deviation; default 0.5 (with the
      default mean, pixels map to [-1, 1]).

  Returns:
    float32 [B, H, W, C].
  """
  _check_images(images)
  return _normalize_unit(_to_unit(images), mean, std)


def _crop_box(u: jax.Array, height: int, width: int, scale, ratio) -> jax.Array:
  """Crop box from 4 uniforms in [0, 1); see ``sample_crop_params``."""
  area = scale[0] + u[0] * (scale[1] - scale[0])
  log_r = math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0]))
  # w = sqrt(area * H * W * r) <= W and h = sqrt(area * H * W / r) <= H.
  r = jnp.clip(jnp.exp(log_r), area * width / height, width / (area * height))
  crop_w = jnp.minimum(jnp.sqrt(area * height * width * r), width)
  crop_h = jnp.minimum(jnp.sqrt(area * height * width / r), height)
  top = u[2] * (height - crop_h)
  left = u[3] * (width - crop_w)
  return jnp.stack([top, left, crop_h, crop_w]).astype(jnp.float32)


def _check_scale(scale) -> tuple[float, float]:
  scale = tuple(float(s) for s in scale)
  if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
    raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}.")
  return scale


def sample_crop_params(
    key: jax.Array,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = CROP_RATIO,
) -> jax.Array:
  """Samples a random-resized-crop box (the one ``augment_images`` uses).

  The area fraction is uniform in ``scale`` and the log aspect ratio (w / h)
  uniform in ``log(ratio)``; the ratio is then clipped so the box fits inside
  the image at exactly that area (no rejection loop).

  Returns:
    float32 [4]: (top, left, crop_height, crop_width) in pixels.
  """
  u = jax.random.uniform(key, (4,))
  return _crop_box(u, height, width, _check_scale(scale), ratio)


def _resize_weights(start, length, out_size: int, in_size: int) -> jax.Array:
  """Linear (triangle) resampling weights, antialiased, [out_size, in_size].

  Output pixel i samples input coordinate ``start + (i + 0.5) * length /
  out_size`` (pixel centres at j + 0.5); the kernel widens by the downscale
  factor, and each row is renormalised over the pixels inside the image, as in
  ``jax.image.scale_and_translate(..., method="linear", antialias=True)``.
  """
  step = length / out_size
  centre = start + (jnp.arange(out_size) + 0.5) * step - 0.5  # [out]
  width = jnp.maximum(step, 1.0)
  dist = jnp.abs(centre[:, None] - jnp.arange(in_size)[None, :]) / width
  w = jnp.maximum(1.0 - dist, 0.0)  # [out, in]
  return w / jnp.maximum(w.sum(axis=1, keepdims=True), 1e-12)


def crop_and_resize(image: jax.Array, box: jax.Array, size: tuple[int, int]):
  """Crops ``box`` = (top, left, h, w) from [H, W, C] and resizes to ``size``.

  Bilinear with antialiasing, as two small matmuls; fractional boxes are
  handled exactly.

  Returns:
    float32 [size[0], size[1], C].
  """
  wy = _resize_weights(box[0], box[2], size[0], image.shape[0])  # [h, H]
  wx = _resize_weights(box[1], box[3], size[1], image.shape[1])  # [w, W]
  return jnp.einsum("yh,hwc,xw->yxc", wy, image.astype(jnp.float32), wx,
                    precision=jax.lax.Precision.HIGHEST)


def _jitter(u: jax.Array, image: jax.Array, strength) -> jax.Array:
  """Colour jitter from 4 uniforms in [0, 1); see ``color_jitter``."""
  factor = lambda v, s: 1.0 - s + 2.0 * s * v
  x = jnp.clip(image * factor(u[0], strength["brightness"]), 0.0, 1.0)
  x = jnp.clip(pix.adjust_contrast(x, factor(u[1], strength["contrast"])), 0.0, 1.0)
  if image.shape[-1] == 3:
    x = jnp.clip(pix.adjust_saturation(x, factor(u[2], strength["saturation"])),
                 0.0, 1.0)
    hue = (2.0 * u[3] - 1.0) * strength["hue"]
    x = jnp.clip(pix.adjust_hue(x, hue), 0.0, 1.0)
  return x


def color_jitter(key: jax.Array, image: jax.Array, *, strength=JITTER):
  """Random brightness, contrast, saturation, hue on [H, W, C] in [0, 1].

  Factors are uniform in [1 - s, 1 + s] (hue shift uniform in [-s, s] turns);
  saturation and hue are skipped for one-channel images.
  """
  return _jitter(jax.random.uniform(key, (4,)), image, strength)


_NUM_UNIFORMS = 11  # crop 4, flip 1, jitter on 1, jitter 4, gray 1.


def _check_prob(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise TypeError(f"{name} must be a float in [0, 1], got {value!r}.")
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value}.")
  return float(value)


def _check_strength(name: str, value, high: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise TypeError(f"{name} must be a float, got {value!r}.")
  if not 0.0 <= float(value) <= high:
    raise ValueError(f"{name} strength must be in [0, {high}], got {value}.")
  return float(value)


def _augment_one(u, image, *, size, crop_scale, flip_prob, jitter_prob, jitter,
                 gray_prob):
  """One view of one image: [H, W, C] in [0, 1] -> [h, w, C] in [0, 1].

  ``u``: float32 [_NUM_UNIFORMS] uniforms in [0, 1) (one draw per batch is far
  cheaper to compile than many small ones).
  """
  box = _crop_box(u[0:4], image.shape[0], image.shape[1], crop_scale, CROP_RATIO)
  x = jnp.clip(crop_and_resize(image, box, size), 0.0, 1.0)
  x = jnp.where(u[4] < flip_prob, x[:, ::-1], x)
  x = jnp.where(u[5] < jitter_prob, _jitter(u[6:10], x, jitter), x)
  if image.shape[-1] == 3:
    gray = jnp.broadcast_to(pix.rgb_to_grayscale(x, keep_dims=True), x.shape)
    x = jnp.where(u[10] < gray_prob, gray, x)
  return x


def augment_images(
    key: jax.Array,
    images: jax.Array,
    *,
    num_views: int = 2,
    image_size: int | Sequence[int] | None = None,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    flip_prob: float = 0.5,
    jitter_prob: float = 0.8,
    brightness: float = JITTER["brightness"],
    contrast: float = JITTER["contrast"],
    saturation: float = JITTER["saturation"],
    hue: float = JITTER["hue"],
    gray_prob: float = 0.2,
    mean=None,
    std=None,
) -> jax.Array:
  """Random views of a batch of images (jit-able, vmapped over the batch).

  Args:
    key: PRNG key; the same key gives the same views.
    images: uint8 [B, H, W, C] (C = 1 or 3), or float in [0, 1].
    num_views: V, views per image.
    image_size: output (h, w) or int; default (H, W).
    crop_scale: range of the crop's area fraction.
    flip_prob: probability of a horizontal flip per view, in [0, 1]; 0 never
      mirrors a view.
    jitter_prob: probability of colour jitter per view.
    brightness: jitter strength s in [0, 1]; the factor is uniform in
      [1 - s, 1 + s].
    contrast: as `brightness`, for contrast.
    saturation: as `brightness`, for saturation (RGB only).
    hue: hue shift strength in [0, 0.5] turns (RGB only).
    gray_prob: probability of grayscale per view (RGB only).
    mean: normalisation mean, as in ``normalize_images``.
    std: normalisation standard deviation, as in ``normalize_images``.

  Returns:
    float32 [B, V, h, w, C].
  """
  _check_images(images)
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}.")
  b, height, width, _ = images.shape
  one = functools.partial(
      _augment_one,
      size=_size(image_size, height, width),
      crop_scale=_check_scale(crop_scale),
      flip_prob=_check_prob("flip_prob", flip_prob),
      jitter_prob=_check_prob("jitter_prob", jitter_prob),
      jitter={"brightness": _check_strength("brightness", brightness, 1.0),
              "contrast": _check_strength("contrast", contrast, 1.0),
              "saturation": _check_strength("saturation", saturation, 1.0),
              "hue": _check_strength("hue", hue, 0.5)},
      gray_prob=_check_prob("gray_prob", gray_prob),
  )
  u = jax.random.uniform(key, (b, num_views, _NUM_UNIFORMS))
  views = jax.vmap(jax.vmap(one, in_axes=(0, None)))(u, _to_unit(images))
  return _normalize_unit(views, mean, std)


# ------------------------------------------------------------------ audio ---


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
  """Slaney mel filterbank from librosa, float32 [n_fft // 2 + 1, n_mels]."""
  import librosa  # pylint: disable=g-import-not-at-top

  fb = librosa.filters.mel(
      sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax
  )
  return np.ascontiguousarray(fb.T, dtype=np.float32)


def _to_float_audio(waveform: jax.Array) -> jax.Array:
  if jnp.issubdtype(waveform.dtype, jnp.integer):
    return waveform.astype(jnp.float32) / 32768.0
  return waveform.astype(jnp.float32)


def stft_power(waveform: jax.Array, *, n_fft: int, hop: int) -> jax.Array:
  """Power spectrogram, centred frames with reflect padding, periodic Hann.

  Args:
    waveform: float [..., T] with T > n_fft // 2.

  Returns:
    float32 [..., 1 + T // hop, n_fft // 2 + 1].
  """
  pad = n_fft // 2
  if waveform.shape[-1] <= pad:
    raise ValueError(
        f"waveform length {waveform.shape[-1]} must exceed n_fft // 2 = {pad}."
    )
  widths = [(0, 0)] * (waveform.ndim - 1) + [(pad, pad)]
  x = jnp.pad(waveform, widths, mode="reflect")
  num_frames = 1 + waveform.shape[-1] // hop
  idx = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
  frames = x[..., idx] * jnp.asarray(window, jnp.float32)  # [..., F, n_fft]
  spec = jnp.fft.rfft(frames, axis=-1)
  return (spec.real**2 + spec.imag**2).astype(jnp.float32)


def log_mel(
    waveform: jax.Array,
    *,
    sample_rate: int,
    n_fft: int = 512,
    hop: int = 160,
    n_mels: int = 64,
    eps: float = 1e-6,
) -> jax.Array:
  """Log-mel spectrogram ``log(mel_power + eps)``.

  Args:
    waveform: int16 [..., T] (scaled by 1/32768) or float [..., T].
    sample_rate: Hz.
    n_fft: FFT and window length in samples (512 = 32 ms at 16 kHz).
    hop: hop in samples (160 = 10 ms at 16 kHz).
    n_mels: mel bands.

  Returns:
    float32 [..., 1 + T // hop, n_mels].
  """
  power = stft_power(_to_float_audio(waveform), n_fft=n_fft, hop=hop)
  fb = jnp.asarray(mel_filterbank(int(sample_rate), int(n_fft), int(n_mels)))
  mel = jnp.einsum("...fk,km->...fm", power, fb)  # [..., F, K] x [K, M]
  return jnp.log(mel + eps)


def audio_features(
    waveforms: jax.Array, *, sample_rate: int, n_fft: int = 512, hop: int = 160,
    n_mels: int = 64,
) -> jax.Array:
  """Evaluation features: int16/float [B, T] -> float32 [B, frames, n_mels, 1]."""
  if waveforms.ndim != 2:
    raise ValueError(f"waveforms must be [B, T], got shape {waveforms.shape}.")
  return log_mel(waveforms, sample_rate=sample_rate, n_fft=n_fft, hop=hop,
                 n_mels=n_mels)[..., None]


def _band_mask(u: jax.Array, length: int, max_width: int) -> jax.Array:
  """bool [length]: True on one band of width 0..max_width, from 2 uniforms."""
  width = jnp.floor(u[0] * (max_width + 1)).astype(jnp.int32)
  start = jnp.floor(u[1] * (length - width + 1)).astype(jnp.int32)
  pos = jnp.arange(length)
  return (pos >= start) & (pos < start + width)


def _spec_augment(u, spec, *, time_masks, time_width, freq_masks, freq_width):
  frames, n_mels = spec.shape
  t_mask = jnp.zeros((frames,), bool)
  for i in range(time_masks):
    t_mask |= _band_mask(u[2 * i : 2 * i + 2], frames, min(time_width, frames))
  f_mask = jnp.zeros((n_mels,), bool)
  for i in range(time_masks, time_masks + freq_masks):
    f_mask |= _band_mask(u[2 * i : 2 * i + 2], n_mels, min(freq_width, n_mels))
  masked = t_mask[:, None] | f_mask[None, :]
  return jnp.where(masked, jnp.mean(spec), spec)


def spec_augment(
    key: jax.Array, spec: jax.Array, *, time_masks: int = 2, time_width: int = 10,
    freq_masks: int = 2, freq_width: int = 8,
) -> jax.Array:
  """SpecAugment masks on one log-mel [frames, n_mels], filled with its mean.

  Each mask is a band of uniform width in [0, max width] at a uniform start.
  """
  u = jax.random.uniform(key, (2 * (time_masks + freq_masks),))
  return _spec_augment(u, spec, time_masks=time_masks, time_width=time_width,
                       freq_masks=freq_masks, freq_width=freq_width)


def _augment_audio_one(u, wave, *, sample_rate, crop_length, max_shift,
                       gain_db, n_fft, hop, n_mels, masks):
  """One view of one waveform float [T] -> float32 [frames, n_mels].

  ``u``: uniforms in [0, 1): crop start, shift, gain, then SpecAugment's.
  """
  if crop_length is not None and crop_length < wave.shape[0]:
    start = jnp.floor(u[0] * (wave.shape[0] - crop_length + 1)).astype(jnp.int32)
    wave = jax.lax.dynamic_slice(wave, (start,), (crop_length,))
  t = wave.shape[0]
  max_s = int(round(max_shift * sample_rate))
  if max_s > 0:
    shift = jnp.floor(u[1] * (2 * max_s + 1)).astype(jnp.int32) - max_s
    src = jnp.arange(t) - shift
    wave = jnp.where((src >= 0) & (src < t), wave[jnp.clip(src, 0, t - 1)], 0.0)
  gain = (2.0 * u[2] - 1.0) * gain_db
  wave = wave * 10.0 ** (gain / 20.0)
  spec = log_mel(wave, sample_rate=sample_rate, n_fft=n_fft, hop=hop,
                 n_mels=n_mels)
  return _spec_augment(u[3:], spec, **masks)


def augment_audio(
    key: jax.Array,
    waveforms: jax.Array,
    *,
    num_views: int = 2,
    sample_rate: int,
    crop_length: int | None = None,
    max_shift: float = 0.1,
    gain_db: float = 6.0,
    n_fft: int = 512,
    hop: int = 160,
    n_mels: int = 64,
    time_masks: int = 2,
    time_width: int = 10,
    freq_masks: int = 2,
    freq_width: int = 8,
) -> jax.Array:
  """Random log-mel views of a batch of waveforms (jit-able).

  Per view: random crop to ``crop_length`` samples (if shorter than T), random
  time shift of up to ``max_shift`` seconds (zero fill), random
  gain uniform in [-gain_db, gain_db] dB, log-mel, SpecAugment masks (each a
  band of uniform width in [0, time_width] frames or [0, freq_width] bins, filled
  with the view's mean).

  Args:
    key: PRNG key.
    waveforms: int16 [B, T] or float [B, T].
    num_views: V.
    sample_rate: Hz.

  Returns:
    float32 [B, V, frames, n_mels, 1], frames = 1 + T' // hop with
    T' = min(T, crop_length).
  """
  if waveforms.ndim != 2:
    raise ValueError(f"waveforms must be [B, T], got shape {waveforms.shape}.")
  if num_views < 1:
    raise ValueError(f"num_views must be >= 1, got {num_views}.")
  one = functools.partial(
      _augment_audio_one, sample_rate=sample_rate, crop_length=crop_length,
      max_shift=max_shift, gain_db=gain_db, n_fft=n_fft, hop=hop, n_mels=n_mels,
      masks=dict(time_masks=time_masks, time_width=time_width,
                 freq_masks=freq_masks, freq_width=freq_width),
  )
  num_u = 3 + 2 * (time_masks + freq_masks)
  u = jax.random.uniform(key, (waveforms.shape[0], num_views, num_u))
  views = jax.vmap(jax.vmap(one, in_axes=(0, None)))(u, _to_float_audio(waveforms))
  return views[..., None]

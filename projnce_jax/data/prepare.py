"""Prepares a dataset into the data directory in the array_record format.

Stock TFDS datasets need TensorFlow and internet access for this one step::

  pip install '.[tf]'
  python -m projnce_jax.data.prepare --dataset=cifar10 --data_dir=DIR

Offline datasets (digits, mnist5k, fashion_mnist_local, spoken_digits) need
neither (fashion_mnist_local and spoken_digits need Debian packages: ``make data``). Training
then reads the prepared files without TensorFlow (``load_split``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from projnce_jax.data import sources


def prepare(name: str, data_dir: str | None = None) -> str:
  """Downloads (stock) or builds (offline) ``name``; returns the data dir."""
  sources.get_info(name)  # Validates the name.
  data_dir = sources.resolve_data_dir(data_dir)
  if sources.is_offline(name):
    return sources.prepare_offline(name, data_dir)
  if importlib.util.find_spec("tensorflow") is None:
    raise ModuleNotFoundError(
        f"Preparing {name!r} needs TensorFlow (this step only): "
        "pip install '.[tf]'"
    )
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  return data_dir


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", required=True, choices=sources.list_datasets())
  parser.add_argument(
      "--data_dir", default=None,
      help=f"default: ${sources.DATA_DIR_ENV} or {sources.DEFAULT_DATA_DIR}",
  )
  args = parser.parse_args(argv)
  data_dir = prepare(args.dataset, args.data_dir)
  for split in ("train", "test"):
    src = sources.load_split(args.dataset, split, data_dir=data_dir)
    print(f"{args.dataset} {split}: {len(src)} examples in {data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

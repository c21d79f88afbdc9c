"""Pretrain an encoder with a contrastive loss (or cross-entropy), then evaluate it.

Usage:
  python main.py --config=configs/demo.py --workdir=runs/demo
  python main.py --config=configs/cifar10.py:runlocal --workdir=/tmp/c10 \
      --config.method=supcon --config.dataset.label_noise=0.3

Rerunning a command on the same workdir resumes from its newest checkpoint.
Outputs in WORKDIR: config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json,
report.md (+ plots).
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from projnce_jax import report
from projnce_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; rerun on it to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing logs every file at INFO
  logging.info("devices: %s", jax.devices())
  results = train.run(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    rows = results["runs"] if "runs" in results else [results]
    print("\n" + report.results_table(rows) + "\n")
    print(f"results: {FLAGS.workdir}/results.json, report: {FLAGS.workdir}/report.md")


if __name__ == "__main__":
  app.run(main)

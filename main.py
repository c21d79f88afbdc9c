"""Pretrain an encoder with a contrastive loss (or cross-entropy), then evaluate it.

Usage:
  python main.py --config=configs/demo.py --workdir=runs/demo
  python main.py --config=configs/cifar10.py:runlocal --workdir=/tmp/c10 \
      --config.method=supcon --config.dataset.label_noise=0.3

Rerunning a command on the same workdir resumes from its newest readable checkpoint.
The config and workdir are checked first (a bad field is an error naming it). On SIGTERM
(preemption) the run saves a checkpoint at the end of the current step and exits with
status 143; rerunning the command resumes from it.
Outputs in WORKDIR: config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json,
report.md (+ plots).
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from projnce_jax import report
from projnce_jax import train

FLAGS = flags.FLAGS
PREEMPTED_EXIT_CODE = 128 + 15   # the shell's status for a process ended by SIGTERM
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
  try:
    results = train.run(FLAGS.config, FLAGS.workdir)
  except train.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  if jax.process_index() == 0:
    rows = results["runs"] if "runs" in results else [results]
    print("\n" + report.results_table(rows) + "\n")
    print(f"results: {FLAGS.workdir}/results.json, report: {FLAGS.workdir}/report.md")


if __name__ == "__main__":
  app.run(main)

"""Pretrain an encoder with a contrastive loss (or cross-entropy), then evaluate it.

Usage:
  python main.py --config=configs/demo.py --workdir=runs/demo
  python main.py --config=configs/cifar10.py:runlocal --workdir=/tmp/c10 \
      --config.method=supcon --config.dataset.label_noise=0.3

Several processes (one per host; gloo collectives on CPU), every process with the same
command and workdir (a shared file system):
  python main.py ... --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
or, where JAX detects the cluster itself (Cloud TPU, SLURM, Open MPI):
  python main.py ... --distributed

Rerunning a command on the same workdir resumes from its newest checkpoint. The config
and workdir are checked first (a bad field is an error naming it); a rerun whose config
differs from the checkpoints' in anything but training length, logging/checkpoint cadence
or progress display is refused, listing the fields. On SIGTERM (preemption; with several
processes, to any one of them) every process saves one checkpoint at the end of the same
step and exits with status 143; rerunning the command resumes from it.
Outputs in WORKDIR: config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json,
report.md (+ plots).
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from projnce_jax import parallel
from projnce_jax import report
from projnce_jax import train

FLAGS = flags.FLAGS
PREEMPTED_EXIT_CODE = 128 + 15   # the shell's status for a process ended by SIGTERM
config_flags.DEFINE_config_file("config", None, "Experiment config (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder; rerun on it to resume.")
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0's coordinator, for a multi-process run.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process run with jax.distributed.initialize()'s cluster "
                  "auto-detection (Cloud TPU, SLURM, Open MPI); the three flags above, "
                  "when given, override what it detects.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # checkpointing logs every file at INFO
  parallel.initialize_distributed(   # before anything touches a device
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, auto_detect=FLAGS.distributed)
  logging.info("process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
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

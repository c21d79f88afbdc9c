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
or progress display is refused, listing the fields. On SIGTERM (preemption) or SIGINT
(Ctrl-C) - with several processes, to any one of them - every process saves one checkpoint
at the end of the same step and exits with status 143 (130 for the process that got the
SIGINT); rerunning the command resumes from it.
Outputs in WORKDIR: config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json,
report.md (+ plots).

Errors a user can fix (a config field, a mistyped --config.* key, a refused rerun, a
workdir in use, not writable or full, a checkpoint that cannot be restored) print one line
on stderr and exit with status 2 (config and usage) or 1 (the others); --verbose (or
PROJNCE_VERBOSE=1) shows the traceback instead.
"""
import difflib
import importlib.util
import os
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
flags.DEFINE_bool("verbose", False, "Show the traceback of an error a user can fix.")
flags.mark_flags_as_required(["config", "workdir"])

USAGE_EXIT_CODE, ERROR_EXIT_CODE = 2, 1


def _verbose(argv) -> bool:
  return os.environ.get("PROJNCE_VERBOSE") == "1" or "--verbose" in argv


def _fail(message: str, code: int) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


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
    sys.exit(128 + e.signum)   # 143 for SIGTERM, 130 for SIGINT
  except train.ConfigError as e:
    if FLAGS.verbose or _verbose(sys.argv):
      raise
    _fail(str(e), USAGE_EXIT_CODE)
  except (train.WorkdirLockedError, train.WorkdirError, train.CheckpointRestoreError) as e:
    if FLAGS.verbose or _verbose(sys.argv):
      raise
    _fail(str(e), ERROR_EXIT_CODE)
  if jax.process_index() == 0:
    rows = results["runs"] if "runs" in results else [results]
    print("\n" + report.results_table(rows) + "\n")
    print(f"results: {FLAGS.workdir}/results.json, report: {FLAGS.workdir}/report.md")


def _override_error(argv) -> str | None:
  """For a --config.a.b=... override naming no field: the full path, the block's nearest
  valid keys (the config file is loaded again to list them); None when all resolve."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_for_error", path)
  if module_spec is None:
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for a in argv:
    if not a.startswith("--config.") or "=" not in a:
      continue
    keys = a[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for i, key in enumerate(keys):
      if hasattr(node, "keys") and key in node.keys():
        node = node[key]
        continue
      where = ".".join(keys[:i]) or "the config"
      valid = sorted(node.keys()) if hasattr(node, "keys") else []
      close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
      hint = (f"; did you mean {' or '.join(repr('.'.join(keys[:i] + [c])) for c in close)}?"
              if close else f"; {where} has: {', '.join(valid)}" if valid else
              f"; {where} is a value, not a block of fields")
      return f"unknown config key {'.'.join(keys)!r} in {a.split('=', 1)[0]}{hint}"
  return None


if __name__ == "__main__":
  try:
    app.run(main)
  except (AttributeError, KeyError) as e:   # raised while applying --config.* overrides
    try:
      message = _override_error(sys.argv)
    except Exception:  # pylint: disable=broad-except
      message = None
    if message is None or _verbose(sys.argv):
      raise
    _fail(message, USAGE_EXIT_CODE)

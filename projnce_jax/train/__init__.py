"""Training: TrainState, optimisers, the train step, evaluation, checkpoints, the pipeline.

Example:
  >>> from projnce_jax import train
  >>> results = train.run(config, workdir)   # doctest: +SKIP

`run` pretrains, probes (linear, kNN) and writes the report: minutes, so the example is
not run here (tests/train/test_trainer.py runs it).
"""
from projnce_jax._extras import require as _require

_require("projnce_jax.train", "flax", "optax", "orbax.checkpoint", "ml_collections", "absl", "tensorboardX", "tqdm")
from projnce_jax.train.checkpoint import Checkpointer
from projnce_jax.train.config import apply_overrides
from projnce_jax.train.config import base_config
from projnce_jax.train.evaluate import extract_features
from projnce_jax.train.evaluate import knn_accuracy
from projnce_jax.train.evaluate import knn_predict
from projnce_jax.train.evaluate import linear_probe
from projnce_jax.train.inputs import make_eval_inputs
from projnce_jax.train.inputs import make_train_inputs
from projnce_jax.train.optim import decay_mask
from projnce_jax.train.optim import make_optimizer
from projnce_jax.train.optim import warmup_cosine
from projnce_jax.train.state import TrainState
from projnce_jax.train.state import create_train_state
from projnce_jax.train.state import make_tx
from projnce_jax.train.step import METHODS
from projnce_jax.train.step import make_train_step
from projnce_jax.train.step import method_loss
from projnce_jax.train.trainer import Experiment
from projnce_jax.train.trainer import Preempted
from projnce_jax.train.trainer import evaluate
from projnce_jax.train.trainer import run
from projnce_jax.train.trainer import train
from projnce_jax.train.trainer import train_and_evaluate
from projnce_jax.train.checkpoint import CheckpointRestoreError
from projnce_jax.train.validate import ConfigError
from projnce_jax.train.validate import WorkdirError
from projnce_jax.train.workdir_lock import WorkdirLock
from projnce_jax.train.workdir_lock import WorkdirLockedError
from projnce_jax.train.validate import check_workdir
from projnce_jax.train.validate import validate_config

__all__ = [
    "CheckpointRestoreError", "Checkpointer", "ConfigError", "Experiment", "WorkdirError",
    "WorkdirLock", "WorkdirLockedError", "METHODS", "Preempted", "TrainState",
    "apply_overrides", "base_config", "check_workdir", "create_train_state", "decay_mask",
    "evaluate", "extract_features", "knn_accuracy",
    "knn_predict", "linear_probe", "make_eval_inputs", "make_optimizer", "make_train_inputs",
    "make_train_step", "make_tx", "method_loss", "run", "train", "train_and_evaluate",
    "validate_config", "warmup_cosine",
]

"""The pipeline behind `main.py`: pretrain -> evaluate (linear probe, kNN) -> report.

`run(config, workdir)` trains one method, or, when `config.runs` lists several, each in
WORKDIR/<name> followed by a comparison table. Rerunning the same command on the same
workdir resumes from the newest readable checkpoint (state, data-iterator position, RNG)
and reaches the same final metrics as an uninterrupted run.

Faults: the config and workdir are checked before anything is loaded (`validate.py`), and
a rerun whose config differs from the one kept with the workdir's checkpoints in anything
but `RESUME_SAFE_KEYS` is refused before anything is touched; a non-finite loss, gradient,
metric or parameter stops the run naming the step and the last good checkpoint (or, with
`skip_nonfinite_updates`, bad updates are skipped and counted); a newest checkpoint shown
to be incomplete or corrupt is set aside for the previous one, any other restore error
stops the run (`CheckpointRestoreError`); SIGTERM saves a checkpoint at the next step
boundary and raises `Preempted`. Metric records after the restored step are moved to a
side file, never dropped; config.json and results.json are written atomically, and the
metrics are fsynced at every checkpoint.

Several processes (`jax.distributed`): each feeds its rows of every global batch, all take
part in the checkpoints, evaluation gathers the features of every process, and process 0
writes config.json, metrics, results and the report. A SIGTERM to any one process stops
every process at the same step (`multihost_utils.reached_preemption_sync_point`), after
one checkpoint of that step.
"""
import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from projnce_jax import data as pjd
from projnce_jax import losses
from projnce_jax import parallel
from projnce_jax import report as report_lib
from projnce_jax.models import create_model
from projnce_jax.train import evaluate as eval_lib
from projnce_jax.train import mi_eval
from projnce_jax.train.checkpoint import Checkpointer
from projnce_jax.train.checkpoint import disk_full
from projnce_jax.train.config import apply_overrides
from projnce_jax.train.inputs import augment_kwargs
from projnce_jax.train.inputs import make_data
from projnce_jax.train.inputs import make_eval_inputs
from projnce_jax.train.inputs import make_train_inputs
from projnce_jax.train.optim import make_optimizer
from projnce_jax.train.optim import warmup_cosine
from projnce_jax.train.state import create_train_state
from projnce_jax.train.state import make_tx
from projnce_jax.train.step import make_train_step
from projnce_jax.train.validate import check_rerun
from projnce_jax.train.validate import ConfigError
from projnce_jax.train.validate import WorkdirError
from projnce_jax.train.validate import check_workdir
from projnce_jax.train.validate import latest_checkpoint_step
from projnce_jax.train.validate import validate_config
from projnce_jax.train.validate import validate_run
from projnce_jax.train import writers as writers_lib
from projnce_jax.train.workdir_lock import WorkdirLock
from projnce_jax.train.writers import MetricWriter
from projnce_jax.train.writers import read_metrics
from projnce_jax.train.writers import write_text_atomic

Hook = Callable[[int, Any, Dict[str, Any]], None]
AXIS = "data"


def _is_main_process() -> bool:
  return jax.process_index() == 0


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON (atomically: temp file, fsync, rename)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def uses_mlp_projection(config: ml_collections.ConfigDict) -> bool:
  return config.method == "projnce" and "mlp" in (config.loss.positive, config.loss.negative)


class Experiment:
  """Everything built from a config before training: data, model, optimiser, step.

  Attributes:
    config: the (single-run) config.
    info: DatasetInfo.
    mesh: the data mesh, or None on one device.
    model: ContrastiveModel (BatchNorm over the "data" axis when mesh is set).
    schedule: learning-rate schedule of the main optimiser.
    total_steps, steps_per_epoch: training length.
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.info = pjd.get_info(config.dataset.name)
    self.num_classes = self.info.num_classes
    self.sample_rate = self.info.sample_rate or 16000
    self.data = make_data(config)   # train / validation / test; eval split; label noise
    self.train_source, self.test_source = self.data.train, self.data.splits.test
    self.eval_source, self.eval_label_fn = self.data.eval, self.data.eval_label_fn
    self.num_train = len(self.train_source)
    num_devices = config.num_devices or jax.device_count()
    self.mesh = parallel.make_mesh(num_devices, AXIS) if num_devices > 1 else None
    self.num_devices = num_devices
    if config.batch_size % num_devices:
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                       f"{num_devices} devices")
    self.label_fn = self.data.train_label_fn
    self.clean_fraction = self.data.clean_fraction

    is_ce = config.method == "cross_entropy"
    self.model = create_model(
        config.model.name, num_classes=self.num_classes if is_ce else 0,
        proj_dim=0 if is_ce else config.model.proj_dim,
        proj_hidden_dim=config.model.proj_hidden_dim, dtype=config.model.dtype,
        bn_axis_name=AXIS if self.mesh is not None else None,
        widths=config.model.widths, width=config.model.width,
        extra_convs=config.model.extra_convs)

    self.steps_per_epoch = max(self.num_train // config.batch_size, 1)
    self.total_steps = int(config.num_steps or
                           round(config.num_epochs * self.steps_per_epoch))
    opt = config.optimizer
    self.peak_lr = opt.base_lr * config.batch_size / 256
    self.schedule = warmup_cosine(
        peak_lr=self.peak_lr, total_steps=self.total_steps,
        warmup_steps=int(opt.warmup_epochs * self.steps_per_epoch))
    main_tx = make_optimizer(opt.name, self.schedule, weight_decay=opt.weight_decay,
                             momentum=opt.momentum, nesterov=opt.nesterov,
                             grad_clip_norm=opt.grad_clip_norm)
    projection_tx = None  # the `mlp` projection's own optimiser (loss.mlp_lr)
    if uses_mlp_projection(config) and config.loss.get("mlp_lr") is not None:
      projection_tx = optax.adam(warmup_cosine(
          peak_lr=config.loss.mlp_lr, total_steps=self.total_steps,
          warmup_steps=int(opt.warmup_epochs * self.steps_per_epoch)))
    self.tx = make_tx(main_tx, optax.adam(config.online_probe.lr), projection_tx)

    kind = self.info.kind
    aug = augment_kwargs(config)
    self.train_inputs = make_train_inputs(
        kind, num_views=config.dataset.num_views, sample_rate=self.sample_rate,
        augment_kwargs=aug)
    self.eval_inputs = make_eval_inputs(kind, sample_rate=self.sample_rate,
                                        augment_kwargs=aug)
    loss_kwargs = {k: v for k, v in config.loss.to_dict().items()
                   if k not in ("mlp_hidden", "mlp_init", "mlp_lr")}
    self.step_fn = make_train_step(
        model=self.model, method=config.method, loss_kwargs=loss_kwargs,
        num_views=config.dataset.num_views, num_classes=self.num_classes,
        schedule=self.schedule, train_inputs=self.train_inputs,
        axis_name=AXIS if self.mesh is not None else None)

  # -- state ------------------------------------------------------------------------------

  def sample_input(self) -> jax.Array:
    """[1, ...] model input of the right shape."""
    field = self.info.kind
    x = np.zeros((1,) + tuple(self.info.shape),
                 np.uint8 if field == "image" else np.int16)
    return self.eval_inputs({field: jnp.asarray(x)})

  def init_state(self):
    projection_init = None
    if uses_mlp_projection(self.config):
      projection_init = lambda k: losses.init_mlp_params(
          k, num_classes=self.num_classes, dim=self.config.model.proj_dim,
          hidden=self.config.loss.mlp_hidden, init=self.config.loss.get("mlp_init", "random"))
    state = create_train_state(jax.random.PRNGKey(self.config.seed), self.model,
                               self.sample_input(), num_classes=self.num_classes,
                               tx=self.tx, projection_init=projection_init)
    if self.mesh is not None:
      state = jax.device_put(state, parallel.replicated_sharding(self.mesh))
    return state

  # -- data -------------------------------------------------------------------------------

  def train_loader(self):
    return pjd.make_loader(self.train_source, batch_size=self.config.batch_size,
                           seed=self.config.seed, shuffle=True, drop_remainder=True,
                           label_fn=self.label_fn)

  def eval_loader(self, source, label_fn=None):
    bs = self.config.eval_batch_size
    bs = max(self.num_devices, bs - bs % self.num_devices)
    return pjd.make_loader(source, batch_size=bs, seed=0, shuffle=False, num_epochs=1,
                           drop_remainder=False, label_fn=label_fn)

  def put(self, batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
    """Host batch -> device arrays (sharded over the mesh when there is one)."""
    if self.mesh is not None:
      return parallel.shard_batch(batch, self.mesh)
    return jax.device_put(batch)

  # -- step -------------------------------------------------------------------------------

  def compiled_step(self) -> Callable:
    """The jitted, state-donating step: (state, device batch) -> (state, metrics)."""
    if self.mesh is None:
      return jax.jit(self.step_fn, donate_argnums=0)
    step_fn = self.step_fn
    sharded = parallel.sharded_step(lambda s, b, _: step_fn(s, b), self.mesh,
                                    batch_axis=AXIS, donate_state=True)
    unused_rng = jax.device_put(jax.random.PRNGKey(0),
                                parallel.replicated_sharding(self.mesh))
    return lambda state, batch: sharded(state, batch, unused_rng)


def _log_fields(metrics: Dict[str, Any]) -> Dict[str, Any]:
  return {k: float(v) for k, v in metrics.items()}


@jax.jit
def _all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _non_finite_error(what: str, step: int, ckpt: Checkpointer, detail: str = ""
                      ) -> FloatingPointError:
  ckpt.wait()
  good = ckpt.latest_step()
  return FloatingPointError(
      f"{what} at step {step}{detail}; last good checkpoint: "
      f"{ckpt.path(good) if good is not None else 'none'}")


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving a checkpoint; rerun to resume.

  Attributes:
    step: the step of the saved checkpoint.
    checkpoint: its folder.
    signum: the signal this process received (SIGTERM also for a preemption notice that
      another process of the run received); main.py exits with 128 + signum.
  """

  def __init__(self, step: int, checkpoint: str, signum: int = signal.SIGTERM):
    name = signal.Signals(signum).name
    super().__init__(f"stopped by {name} at step {step}; saved checkpoint {checkpoint}; "
                     "rerun the same command to resume")
    self.step = step
    self.checkpoint = checkpoint
    self.signum = int(signum)


class _StopFlag:
  """Whether to stop for a SIGTERM or SIGINT after this step; the same answer on every
  process.

  One process: set by Python SIGTERM and SIGINT handlers while installed (main thread
  only; the old handlers are restored on exit). Several processes: JAX's preemption
  service (its SIGTERM handler notifies every process through the coordinator) answers
  `reached_preemption_sync_point(step)`, True at the same step on all of them; a SIGINT
  (Ctrl-C) to any one process is turned into a SIGTERM to itself, so it stops the run the
  same way instead of leaving the others waiting in a collective.
  """

  def __init__(self):
    self.is_set = False
    self.signum = signal.SIGTERM   # the signal this process received (for the exit code)
    self._previous = {}
    self._synced = jax.process_count() > 1

  def should_stop(self, step: int) -> bool:
    """Called once per step, by every process, in the same order."""
    if self._synced:
      self.is_set = multihost_utils.reached_preemption_sync_point(step)
      if self.is_set:
        logging.warning("preemption notice (SIGTERM to a process of this run): saving a "
                        "checkpoint of step %d", step)
    return self.is_set

  def _handle(self, signum, frame):
    del frame
    self.is_set = True
    self.signum = signum
    logging.warning("received signal %d: saving a checkpoint at the end of this step",
                    signum)

  def _forward_interrupt(self, signum, frame):
    del frame
    self.signum = signum
    logging.warning("received signal %d: stopping every process of the run at one step "
                    "with a checkpoint", signum)
    os.kill(os.getpid(), signal.SIGTERM)   # JAX's preemption service takes it from here

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    if self._synced:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_interrupt)
    else:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def _check_finite(values: Dict[str, float], state, step: int, ckpt: Checkpointer,
                  skip: bool, update_skipped: bool) -> None:
  """Raises FloatingPointError for skipped updates (unless `skip`) or non-finite metrics."""
  skipped = int(values.get("skipped_updates", 0))
  if skipped and not skip:
    first = int(jax.device_get(state.first_skipped_step))
    raise _non_finite_error(
        "non-finite loss or gradients", first, ckpt,
        f" (updates not applied: {skipped} by step {step}; metrics at step {step}: "
        f"{values}; set skip_nonfinite_updates=True to skip such updates)")
  bad = {k: v for k, v in values.items() if not math.isfinite(v) and k != "learning_rate"}
  if bad and not (skip and update_skipped):
    raise _non_finite_error(f"non-finite metrics {bad}", step, ckpt)


def train(exp: Experiment, workdir: str, *, hooks: Sequence[Hook] = (),
          desc: str = "train", settings: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
  """Pretrains (resuming if a checkpoint exists) and returns the final state + stats.

  Args:
    exp: the experiment.
    workdir: output folder (checkpoints/, metrics.jsonl, tensorboard/).
    hooks: called as hook(step, state, record) after every step; `record` holds the
      logged metrics at log steps, else {}.
    desc: progress-bar label.
    settings: the resume-safe config changes of this start (`check_rerun`); recorded in
      WORKDIR/settings_history.jsonl, with the config in WORKDIR/config.json, once the
      checkpoint is restored (None: neither is written).

  Returns:
    {"state": final TrainState, "last_record": last logged metrics,
    "train_seconds": wall time of this invocation's steps}.

  Raises:
    FloatingPointError: the loss or gradients of a step (counted on the device), the logged
      metrics (checked at log and checkpoint steps) or the parameters (checked before
      every save) became NaN/inf; names the step, the metrics and the last good
      checkpoint, and never saves after such a step. With
      `config.skip_nonfinite_updates` the non-finite updates are skipped instead and
      counted in the `skipped_updates` metric.
    Preempted: SIGTERM arrived; a checkpoint of the step it arrived in was saved.
  """
  config = exp.config
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                      async_save=config.async_checkpoints)
  state = exp.init_state()
  loader = exp.train_loader()
  restored = ckpt.restore_latest(state)   # CheckpointRestoreError: nothing was moved
  start = 0
  if restored is not None:
    start, state, data_state = restored
    loader.set_state(data_state)
    logging.info("resumed from %s", ckpt.path(start))
  if settings is not None and _is_main_process():   # recorded once the start succeeded
    write_text_atomic(os.path.join(workdir, "config.json"),
                      config.to_json_best_effort(indent=2) + "\n")
    _record_settings(workdir, start if restored is not None else None, settings,
                     exp.total_steps)
  writer = MetricWriter(workdir, start_step=start, enabled=_is_main_process())
  step_fn = exp.compiled_step()
  bar = tqdm.tqdm(total=exp.total_steps, initial=start, desc=desc, dynamic_ncols=True,
                  disable=not (config.progress and _is_main_process()))
  last_record: Dict[str, Any] = {}
  t_start = time.perf_counter()
  t_last, step_last = t_start, start
  stop = _StopFlag()
  failing = True
  try:
    stop.__enter__()
    for step in range(start + 1, exp.total_steps + 1):
      batch = exp.put(next(loader))
      state, metrics = step_fn(state, batch)
      bar.update(1)
      if step == start + 1:   # keep compilation out of the later step-time measurements
        jax.block_until_ready(metrics)
        first_step_time = time.perf_counter() - t_last
        t_last, step_last = time.perf_counter(), step
      record: Dict[str, Any] = {}
      is_last = step == exp.total_steps
      if step % config.log_every == 0 or is_last or step % config.checkpoint_every == 0:
        values = _log_fields(jax.device_get(metrics))
        update_skipped = bool(values.pop("update_skipped", 0.0))
        _check_finite(values, state, step, ckpt, config.skip_nonfinite_updates,
                      update_skipped)
        if step % config.log_every == 0 or is_last:
          now = time.perf_counter()
          if step == step_last:   # the first step: includes compilation
            step_time = first_step_time
          else:
            step_time = (now - t_last) / (step - step_last)
          t_last, step_last = now, step
          values.update(
              epoch=step / exp.steps_per_epoch, step_time_s=step_time,
              examples_per_sec_per_device=config.batch_size / step_time / exp.num_devices)
          record = writer.write(step, values)
          last_record = record
          bar.set_postfix(loss=f"{values['loss']:.4f}",
                          probe=f"{values['probe_accuracy']:.3f}")
      saved = step % config.checkpoint_every == 0 or is_last
      if saved:
        _save(ckpt, step, state, loader, writer, config.min_free_disk_mb)
      for hook in hooks:
        hook(step, state, record)
      if stop.should_stop(step):
        if not saved:
          _save(ckpt, step, state, loader, writer, config.min_free_disk_mb)
        ckpt.wait()
        raise Preempted(step, ckpt.path(step), stop.signum)
    failing = False
  finally:
    stop.__exit__()
    bar.close()
    writer.close()
    try:
      ckpt.close()
    except Exception:  # pylint: disable=broad-except
      if not failing:   # else the error already raised says more (e.g. a full disk)
        raise
  if not last_record:
    last_record = next((r for r in reversed(
        read_metrics(os.path.join(workdir, "metrics.jsonl")))), {})
  return {"state": state, "last_record": last_record,
          "train_seconds": time.perf_counter() - t_start}


def _save(ckpt: Checkpointer, step: int, state, loader, writer: MetricWriter,
          min_free_mb: float = 0.0) -> None:
  """Saves a checkpoint after checking that the parameters are finite and the disk has
  `min_free_mb` MiB free.

  The metrics logged so far are fsynced first: a checkpoint never gets ahead of them.

  Raises:
    WorkdirError: too little free disk, or the disk filled up during the save (one line
      naming the last good checkpoint).
  """
  if not bool(_all_finite((state.params, state.batch_stats))):
    raise _non_finite_error("non-finite parameters", step, ckpt)
  free_mb = shutil.disk_usage(ckpt.directory).free / 2**20
  if free_mb < min_free_mb:
    raise WorkdirError(
        f"only {free_mb:.0f} MiB free for the checkpoint of step {step} (at least "
        f"{min_free_mb:g} MiB, config field 'min_free_disk_mb'); the last good checkpoint "
        f"is {ckpt.path(ckpt.latest_step()) or 'none yet'}; free some space and rerun to "
        "resume")
  writer.sync()
  try:
    ckpt.save(step, state, loader.get_state())
  except Exception as e:  # pylint: disable=broad-except
    if not disk_full(e):
      raise
    raise WorkdirError(
        f"the disk filled up while saving the checkpoint of step {step}; the last good "
        f"checkpoint is {ckpt.path(ckpt.latest_step()) or 'none yet'}; free some space and "
        "rerun to resume") from e


class _FinishDespiteSignals:
  """While installed (main thread only), SIGTERM and SIGINT are logged, not acted on: the
  final evaluation is short (seconds to a minute here) and its results are the run's
  output, so it runs to its end and the run exits normally. With several processes JAX's
  preemption service already holds SIGTERM; SIGINT is held here on every process, so no
  process leaves the others waiting in a collective."""

  def __init__(self, what: str):
    self.what = what
    self._previous = {}

  def _log(self, signum, frame):
    del frame
    logging.warning("received signal %d during the %s: finishing it (the run then ends "
                    "normally with its results)", signum, self.what)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        if signum == signal.SIGTERM and jax.process_count() > 1:
          continue   # JAX's preemption service handles it
        self._previous[signum] = signal.signal(signum, self._log)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


class EvalProgress:
  """One progress line for the evaluation phases (features, probe, kNN, MI, report).

  Used as `with progress("linear probe"): ...`; each phase shows while it runs and its
  time is logged when it ends. Silent when disabled (config.progress False, or not
  process 0).
  """

  def __init__(self, desc: str, total: int, enabled: bool = True):
    self._bar = tqdm.tqdm(total=total, desc=f"{desc}: evaluation", dynamic_ncols=True,
                          disable=not enabled, unit="phase")

  @contextlib.contextmanager
  def __call__(self, phase: str):
    self._bar.set_postfix_str(phase)
    start = time.perf_counter()
    yield
    self._bar.update(1)
    logging.info("evaluation: %s took %.1f s", phase, time.perf_counter() - start)

  def close(self) -> None:
    self._bar.set_postfix_str("done")
    self._bar.close()


def _no_progress(phase: str):  # pylint: disable=unused-argument
  return contextlib.nullcontext()


def evaluate(exp: Experiment, state, progress=_no_progress) -> Dict[str, Any]:
  """Frozen-feature linear probe and kNN on the eval split (`config.eval_split`).

  The probe and kNN are fitted on the training labels the run trained with (noisy under
  label noise). Under label noise they are also fitted on the clean training labels
  ("..._clean_labels" keys), scored on the same eval labels; the eval features carry the
  split's clean labels as "clean_label" (the held-out MI bound reads them).

  Args:
    exp: the experiment.
    state: the trained TrainState.
    progress: `EvalProgress` (or any callable returning a context manager per phase).

  Returns:
    {"linear_probe_accuracy", "linear_probe_train_accuracy", "linear_probe_curve",
     "knn_accuracy", "probe_train_labels" ("noisy" or "clean"), under label noise also
     "linear_probe_accuracy_clean_labels" and "knn_accuracy_clean_labels" (fitted on the
     clean training labels), on a noisy validation split also
     "linear_probe_accuracy_clean_eval_labels" and "knn_accuracy_clean_eval_labels" (the
     plain probe and kNN scored against the split's clean labels), and "test_features"
     (dict of arrays for plots and the MI bound)}.
  """
  config = exp.config
  feature_fn = eval_lib.make_feature_fn(exp.model, exp.eval_inputs)
  params, batch_stats = state.params["model"], state.batch_stats
  put = exp.put if exp.mesh is not None else None
  with progress("features of the training split"):
    train = eval_lib.extract_features(feature_fn, params, batch_stats,
                                      exp.eval_loader(exp.train_source, exp.label_fn),
                                      put=put)
  with progress(f"features of the {config.eval_split} split"):
    test = eval_lib.extract_features(feature_fn, params, batch_stats,
                                     exp.eval_loader(exp.eval_source, exp.eval_label_fn),
                                     put=put)
  splits = exp.data.splits
  noisy = splits.label_noise > 0
  if noisy:  # clean labels by position in each split's source
    train["clean_label"] = splits.clean_labels["train"][train["index"]]
    test["clean_label"] = splits.clean_labels[config.eval_split][test["index"]]

  # A noisy validation split is also scored against its clean labels (kept by the split):
  # with 40% noise on a few hundred examples the noisy-label score's sampling error
  # exceeds most gaps between configurations; the clean-label score is for comparison.
  clean_eval = noisy and config.eval_split != "test"

  def probe_and_knn(train_labels, which):
    lp = config.linear_probe
    with progress(f"linear probe ({lp.epochs} epochs, {which} labels)"):
      probe = eval_lib.linear_probe(
          train["features"], train_labels, test["features"], test["label"],
          num_classes=exp.num_classes, epochs=lp.epochs, batch_size=lp.batch_size,
          lr=lp.lr, weight_decay=lp.weight_decay, seed=config.seed,
          other_test_y=test["clean_label"] if clean_eval else None)
    with progress(f"kNN (k = {config.knn.k}, {which} labels)"):
      predicted = eval_lib.knn_predict(train["features"], train_labels, test["features"],
                                       num_classes=exp.num_classes, k=config.knn.k,
                                       temperature=config.knn.temperature)
    knn = {"accuracy": float(np.mean(predicted == np.asarray(test["label"])))}
    if clean_eval:
      knn["clean"] = float(np.mean(predicted == np.asarray(test["clean_label"])))
    return probe, knn

  probe, knn = probe_and_knn(train["label"], "noisy" if noisy else "training")
  out = {"linear_probe_accuracy": probe["test_accuracy"],
         "linear_probe_train_accuracy": probe["train_accuracy"],
         "linear_probe_curve": probe["test_accuracy_curve"],
         "knn_accuracy": knn["accuracy"], "probe_train_labels": "noisy" if noisy else "clean",
         "test_features": test}
  if clean_eval:
    out["linear_probe_accuracy_clean_eval_labels"] = probe["other_test_accuracy"]
    out["knn_accuracy_clean_eval_labels"] = knn["clean"]
  if noisy:
    clean_probe, clean_knn = probe_and_knn(train["clean_label"], "clean")
    out["linear_probe_accuracy_clean_labels"] = clean_probe["test_accuracy"]
    out["knn_accuracy_clean_labels"] = clean_knn["accuracy"]
  return out


def method_label(config: ml_collections.ConfigDict) -> str:
  """A readable name of the method, e.g. "projnce (centroid/sample, beta=1)"."""
  if config.method == "projnce":
    l = config.loss
    return f"projnce ({l.positive}/{l.negative}, beta={l.beta:g})"
  return config.method


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence[Hook] = (), name: Optional[str] = None
                       ) -> Dict[str, Any]:
  """One method: pretrain, evaluate, write results.json and report.md into `workdir`.

  Returns:
    The results dict (also written to WORKDIR/results.json).

  Raises:
    KeyError, TypeError, ValueError: a bad config field (see `validate_config`), or
      a rerun whose config differs from the workdir's checkpoints (`check_rerun`).
    OSError: `workdir` is not writable or has less than `min_free_disk_mb` free.
    CheckpointRestoreError: a checkpoint cannot be restored for a reason other than
      being shown incomplete or corrupt (nothing was moved).
    WorkdirLockedError: another run holds the workdir (nothing was read or written).
  """
  validate_config(config)   # touches nothing: a bad config leaves the workdir as it was
  with WorkdirLock(workdir, enabled=_is_main_process()):
    return _train_and_evaluate(config, workdir, hooks=hooks, name=name)


HISTORY = "settings_history.jsonl"


def _record_settings(workdir, latest, changes, total_steps) -> None:
  """Appends this start's resume-safe changes to WORKDIR/settings_history.jsonl (results.json
  carries the list) and says what a new length does to the learning-rate schedule."""
  record = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resumed_from_step": latest, "total_steps": total_steps,
            "changes": {k: [old, new] for k, old, new in changes}}
  with open(os.path.join(workdir, HISTORY), "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())
  if latest is not None and {"num_steps", "num_epochs"} & set(record["changes"]):
    logging.warning(
        "%s: the training length changed; the warm-up + cosine learning-rate schedule is "
        "recomputed for %d steps, so from step %d on it follows the new length and the run "
        "differs from a fresh %d-step run (whose steps before %d used that schedule too)",
        workdir, total_steps, latest, total_steps, latest)


def _train_and_evaluate(config, workdir, *, hooks, name):
  validate_run(config, workdir)
  changes = check_rerun(config, workdir)
  exp = Experiment(config)
  latest = latest_checkpoint_step(workdir)
  if latest is not None and exp.total_steps < latest:
    raise ConfigError(
        f"this run trains {exp.total_steps} steps but the newest checkpoint in {workdir} is "
        f"at step {latest}; refusing to resume (results would describe a model trained "
        f"longer than the config says) and nothing was changed. Set num_steps (or "
        f"num_epochs) to at least {latest}, or use a new workdir")
  # config.json is written by `train` once the checkpoint is restored: a start refused
  # there (an unreadable checkpoint) leaves the workdir as it was.
  out = train(exp, workdir, hooks=hooks, desc=name or config.method, settings=changes)
  phases = 6 + (2 if config.dataset.label_noise > 0 else 0)
  progress = EvalProgress(name or config.method, phases,
                          enabled=config.progress and _is_main_process())
  with _FinishDespiteSignals("evaluation"):
    return _evaluate_and_report(config, workdir, exp, out, progress, name)


def _evaluate_and_report(config, workdir, exp, out, progress, name):
  ev = evaluate(exp, out["state"], progress)
  # Held-out MI bound: eval split, clean labels, one view per example, trained critic fixed.
  with progress("held-out MI bound"):
    heldout = mi_eval.from_config(config, ev["test_features"],
                                  out["state"].params.get("projection"), exp.num_classes)
  last = out["last_record"]
  results = {
      "name": name or config.method,
      "method": method_label(config),
      "dataset": config.dataset.name,
      "model": config.model.name,
      "label_noise": config.dataset.label_noise,
      "eval_split": config.eval_split,
      "steps": exp.total_steps,
      "epochs": exp.total_steps / exp.steps_per_epoch,
      "batch_size": config.batch_size,
      "num_devices": exp.num_devices,
      "linear_probe_accuracy": ev["linear_probe_accuracy"],
      "knn_accuracy": ev["knn_accuracy"],
      "probe_train_labels": ev["probe_train_labels"],
      **{k: ev[k] for k in ("linear_probe_accuracy_clean_labels",
                            "knn_accuracy_clean_labels",
                            "linear_probe_accuracy_clean_eval_labels",
                            "knn_accuracy_clean_eval_labels") if k in ev},
      "online_probe_accuracy": last.get("probe_accuracy"),
      "final_loss": last.get("loss"),
      "infonce_term": last.get("infonce_term"),
      "adjustment": last.get("adjustment"),
      # The last training batch's log(N-1) - infonce_term - adjustment: not a bound.
      "train_batch_mi_estimate": last.get("mi_lower_bound"),
      **heldout,
      "examples_per_sec_per_device": last.get("examples_per_sec_per_device"),
      "train_seconds": out["train_seconds"],
      "linear_probe_curve": ev["linear_probe_curve"],
      "settings_history": read_metrics(os.path.join(workdir, HISTORY)),
  }
  with progress("results, TensorBoard and report (t-SNE)"):
    if _is_main_process():
      write_json(os.path.join(workdir, "results.json"), results)
      writers_lib.write_final_tensorboard(workdir, results, config.to_dict(),
                                          exp.total_steps)
      report_lib.write_run_report(workdir, results, ev["test_features"], config=config)
  progress.close()
  return results


def run(config: ml_collections.ConfigDict, workdir: str, *, hooks: Sequence[Hook] = ()
        ) -> Dict[str, Any]:
  """Runs `config` (one method, or every entry of `config.runs`) in `workdir`.

  Every run's config and the workdir are checked before anything is loaded or compiled.

  Returns:
    Single run: its results. Several runs: {"runs": [results...]} (also written to
    WORKDIR/results.json with a comparison report.md).

  Errors are those of `train_and_evaluate` and `train`.
  """
  validate_config(config)   # touches nothing: a bad config leaves the workdir as it was
  with WorkdirLock(workdir, enabled=_is_main_process()):
    return _run(config, workdir, hooks=hooks)


def _run(config, workdir, *, hooks):
  validate_config(config)
  check_workdir(workdir, min_free_mb=config.min_free_disk_mb)
  for spec in config.runs:   # every run's workdir, before any run starts
    check_rerun(apply_overrides(config, spec), os.path.join(workdir, spec["name"]))
  if not config.runs:
    return train_and_evaluate(config, workdir, hooks=hooks)
  all_results = []
  for spec in config.runs:
    name = spec["name"]
    sub = apply_overrides(config, spec)
    all_results.append(train_and_evaluate(sub, os.path.join(workdir, name), hooks=hooks,
                                          name=name))
  summary = {"dataset": config.dataset.name, "model": config.model.name,
             "runs": all_results}
  if _is_main_process():
    write_json(os.path.join(workdir, "results.json"), summary)
    report_lib.write_comparison_report(workdir, all_results)
  return summary

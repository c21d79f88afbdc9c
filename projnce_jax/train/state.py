"""TrainState: encoder/head params, BatchNorm statistics, loss and probe params, RNG."""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from projnce_jax.models.heads import LinearClassifier


class TrainState(train_state.TrainState):
  """Everything a training step reads and writes.

  Attributes (beyond flax's step, params, opt_state, tx, apply_fn):
    params: {"model": encoder + head (+ classifier), "probe": online linear probe,
      and "projection": learnable class-embedding MLP when the loss uses one}.
    batch_stats: BatchNorm running statistics of the model.
    rng: base PRNG key; step t uses fold_in(rng, t), so resuming reproduces the stream.
    skipped_updates: int32 count of steps whose loss or gradients were non-finite (their
      update was not applied).
    first_skipped_step: int32 step (1-based) of the first such step, -1 when none.
  """
  batch_stats: Any = None
  rng: Optional[jax.Array] = None
  skipped_updates: Optional[jax.Array] = None
  first_skipped_step: Optional[jax.Array] = None


def param_labels(params: dict, *, separate_projection: bool = False) -> dict:
  """Optimiser routing: "probe" for the online probe, "projection" for the class-embedding
  MLP when `separate_projection`, "main" for everything else."""
  def label(k):
    if k == "probe":
      return "probe"
    return "projection" if (separate_projection and k == "projection") else "main"
  return {k: jax.tree.map(lambda _, k=k: label(k), v) for k, v in params.items()}


def make_tx(main_tx: optax.GradientTransformation,
            probe_tx: optax.GradientTransformation,
            projection_tx: Optional[optax.GradientTransformation] = None
            ) -> optax.GradientTransformation:
  """One optimiser over the params dict (`optax.multi_transform`).

  Args:
    main_tx: for {"model"} (and {"projection"} when `projection_tx` is None).
    probe_tx: for the online probe {"probe"}.
    projection_tx: optional own optimiser of the `mlp` projection's parameters.

  Example:
    >>> tx = make_tx(optax.sgd(0.1), optax.adam(1e-2), projection_tx=optax.adam(1e-3))
  """
  transforms = {"main": main_tx, "probe": probe_tx}
  if projection_tx is not None:
    transforms["projection"] = projection_tx
  return optax.multi_transform(
      transforms, functools.partial(param_labels,
                                    separate_projection=projection_tx is not None))


# Initialisation runs once: on CPU, compile it without backend optimisations, which cuts the
# compile time of the many random initialisers (threefry) several-fold.
_CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_once(fn: Callable, *args) -> Any:
  """Runs `jax.jit(fn)(*args)`, compiled cheaply on CPU (for one-off initialisation)."""
  lowered = jax.jit(fn).lower(*args)
  options = _CHEAP_COMPILE if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(*args)


def create_train_state(key: jax.Array, model: nn.Module, sample_input: jax.Array, *,
                       num_classes: int, tx: optax.GradientTransformation,
                       projection_init: Optional[Callable[[jax.Array], Any]] = None
                       ) -> TrainState:
  """Initialises all parameters.

  Args:
    key: PRNG key; split into model, probe, projection and the training stream.
    model: a ContrastiveModel.
    sample_input: [b, ...] input of the right shape (values unused).
    num_classes: classes of the online probe.
    tx: optimiser over the params dict (see `make_tx`).
    projection_init: key -> params of the class-embedding MLP, or None.

  Returns:
    The state at step 0.
  """
  k_model, k_probe, k_proj, k_train = jax.random.split(key, 4)
  variables = jit_once(functools.partial(model.init, train=False), k_model, sample_input)
  feat = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                        sample_input)["features"]
  probe = LinearClassifier(num_classes)
  params = {"model": variables["params"],
            "probe": jit_once(probe.init, k_probe, jnp.zeros(feat.shape, jnp.float32))["params"]}
  if projection_init is not None:
    params["projection"] = jit_once(projection_init, k_proj)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}), rng=k_train,
                           skipped_updates=jnp.zeros((), jnp.int32),
                           first_skipped_step=jnp.full((), -1, jnp.int32))

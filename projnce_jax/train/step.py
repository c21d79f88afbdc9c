"""The training step: any contrastive loss or cross-entropy, plus the online linear probe.

One function `(state, batch) -> (state, metrics)`; the caller wraps it in a single
`jax.jit` with the state donated, or in `projnce_jax.parallel.sharded_step` (rows sharded
over the "data" axis, state replicated), in which case `axis_name="data"` makes the loss,
BatchNorm and the probe use global-batch statistics.
"""
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from projnce_jax import losses
from projnce_jax.models.heads import LinearClassifier
from projnce_jax.train.state import TrainState

METHODS = ("projnce", "supcon", "infonce", "cross_entropy")
Batch = Dict[str, jax.Array]


def method_loss(method: str, out: Dict[str, jax.Array], labels: jax.Array, mask: jax.Array,
                *, num_views: int, loss_kwargs: Dict[str, Any],
                projection_params: Any = None, num_classes: Optional[int] = None,
                axis_name: Optional[str] = None):
  """The training objective of a method on one batch of model outputs.

  Args:
    method: one of METHODS.
    out: model outputs; "z" [b * V, d] unit embeddings, "logits" [b * V, M].
    labels: [b * V] int labels (repeated per view).
    mask: [b * V] bool, False for padding rows.
    num_views: V.
    loss_kwargs: temperature, positive, negative, beta, impl, block_size, log_ratio_clip,
      bandwidth, dispersion (supcon only: weight of `losses.dispersion_control` added to
      the loss).
    projection_params: params of the class-embedding MLP ("mlp" projections).
    num_classes: M (class slots of the class-level terms; class-table projections).
      InfoNCE ignores it: its classes are the examples, whose views sit on one device.
    axis_name: mapped data axis or None.

  Returns:
    (loss, aux) with loss a float32 scalar.
  """
  kw = dict(loss_kwargs)
  temperature = kw.pop("temperature", 0.1)
  impl = kw.pop("impl", "dense")
  if method == "cross_entropy":
    return losses.cross_entropy(out["logits"], labels, mask=mask, axis_name=axis_name)
  # A bfloat16 head keeps its dtype: the losses run the similarity matmuls in it with
  # float32 accumulation, and compute the log-sum-exp and the loss in float32.
  z = out["z"]
  if method == "projnce":
    return losses.projnce(
        z, labels, temperature=temperature, positive=kw.get("positive", "centroid"),
        negative=kw.get("negative", "sample"), beta=kw.get("beta", 1.0),
        num_classes=num_classes, params=projection_params, axis_name=axis_name, impl=impl,
        block_size=kw.get("block_size"), mask=mask, log_ratio_clip=kw.get("log_ratio_clip"),
        bandwidth=kw.get("bandwidth", 1.0))
  if method == "supcon":
    # mi_bound: the trainer logs the batch's bound (train_batch_mi_estimate).
    loss, aux = losses.supcon(z, labels, temperature=temperature, num_classes=num_classes,
                              axis_name=axis_name, impl=impl,
                              block_size=kw.get("block_size"), mask=mask, mi_bound=True)
    if kw.get("dispersion", 0.0):  # control: SupCon + an explicit dispersion term
      term, daux = losses.dispersion_control(z, labels, temperature=temperature,
                                             num_classes=num_classes, mask=mask,
                                             axis_name=axis_name)
      loss = loss + kw["dispersion"] * term
      aux = dict(aux, dispersion_term=term, **daux)
    return loss, aux
  if method == "infonce":
    z_views = z.reshape((-1, num_views, z.shape[-1]))  # [b, V, d]
    return losses.infonce(z_views, temperature=temperature, axis_name=axis_name, impl=impl,
                          block_size=kw.get("block_size"),
                          mask=mask.reshape((-1, num_views))[:, 0], mi_bound=True)
  raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _all_finite(tree, axis_name: Optional[str]) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (on every device)."""
  bad = sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.floating))
  return _psum(jnp.asarray(bad, jnp.int32), axis_name) == 0


def _keep_if_not(finite: jax.Array, updated: TrainState, old: TrainState) -> TrainState:
  """`updated` when `finite`, else `old` with the step advanced and the skip counted."""
  guarded = jax.tree.map(lambda n, o: jnp.where(finite, n, o), updated, old)
  skipped = jnp.logical_not(finite)
  first = jnp.where(skipped & (old.first_skipped_step < 0), old.step + 1,
                    old.first_skipped_step)
  return guarded.replace(step=updated.step,
                         skipped_updates=old.skipped_updates + skipped.astype(jnp.int32),
                         first_skipped_step=first.astype(jnp.int32))


def make_train_step(*, model, method: str, loss_kwargs: Dict[str, Any], num_views: int,
                    num_classes: int, schedule: Callable[[Any], Any],
                    train_inputs: Callable[[jax.Array, Batch], jax.Array],
                    axis_name: Optional[str] = None):
  """Builds `step(state, batch) -> (state, metrics)` (not jitted).

  Args:
    model: ContrastiveModel whose BatchNorm uses `axis_name`.
    method: one of METHODS.
    loss_kwargs: loss hyper-parameters (see `method_loss`).
    num_views: augmented views per example.
    num_classes: label classes (online probe, class-table projections).
    schedule: learning rate of the main optimiser (logged).
    train_inputs: (key, batch) -> [b * V, ...] model inputs.
    axis_name: "data" under shard_map, None on one device.

  Batch fields: input ("image"/"audio"), "label" [b] int, "mask" [b] bool, "index" [b] int.
  Metrics: loss, the loss's aux scalars, probe_loss, probe_accuracy, learning_rate,
  skipped_updates (running count) and update_skipped (1.0 on a skipped step).

  A step whose loss or gradients are not all finite leaves params, optimiser state and
  BatchNorm statistics unchanged (the step counter still advances) and is counted in
  `state.skipped_updates`; the first such step is kept in `state.first_skipped_step`.
  The check runs on the device, without a host round trip.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  probe = LinearClassifier(num_classes)

  def step(state: TrainState, batch: Batch):
    key = jax.random.fold_in(state.rng, state.step)
    x = train_inputs(key, batch)                                  # [b * V, ...]
    labels = jnp.repeat(batch["label"].astype(jnp.int32), num_views)
    mask = jnp.repeat(batch["mask"].astype(bool), num_views)

    def loss_fn(params):
      out, updates = model.apply(
          {"params": params["model"], "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"])
      loss, aux = method_loss(method, out, labels, mask, num_views=num_views,
                              loss_kwargs=loss_kwargs,
                              projection_params=params.get("projection"),
                              num_classes=num_classes, axis_name=axis_name)
      feats = jax.lax.stop_gradient(out["features"])
      probe_logits = probe.apply({"params": params["probe"]}, feats)  # [b * V, M]
      probe_loss, _ = losses.cross_entropy(probe_logits, labels, mask=mask,
                                           axis_name=axis_name)
      return loss + probe_loss, (loss, aux, probe_loss, probe_logits, updates["batch_stats"])

    grads, (loss, aux, probe_loss, probe_logits, batch_stats) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    finite = _all_finite((loss, probe_loss, grads), axis_name)
    new_state = _keep_if_not(finite, updated, state)
    correct = jnp.sum((jnp.argmax(probe_logits, -1) == labels) & mask)
    count = jnp.sum(mask)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()
               if jnp.ndim(v) == 0}
    metrics.update(
        loss=loss.astype(jnp.float32), probe_loss=probe_loss.astype(jnp.float32),
        probe_accuracy=(_psum(correct, axis_name) / jnp.maximum(_psum(count, axis_name), 1)
                        ).astype(jnp.float32),
        learning_rate=jnp.asarray(schedule(state.step), jnp.float32),
        skipped_updates=new_state.skipped_updates.astype(jnp.float32),
        update_skipped=1.0 - finite.astype(jnp.float32))
    return new_state, metrics

  return step

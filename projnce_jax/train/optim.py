"""Optimisers and learning-rate schedules: SGD+momentum, LARS, AdamW; warmup + cosine."""
from typing import Any, Callable, Optional

import jax
import optax

Schedule = Callable[[Any], Any]


def decay_mask(params: Any) -> Any:
  """True for weight matrices / conv kernels, False for biases and BatchNorm scales.

  Every parameter with ndim > 1 decays; 1-D parameters (Dense/Conv biases, BatchNorm
  scale and bias) are left out, as in SimCLR/SupCon/BYOL.

  Example:
    >>> decay_mask({"Dense_0": {"kernel": jnp.ones([3, 4]), "bias": jnp.ones([4])}})
    {'Dense_0': {'bias': False, 'kernel': True}}
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def warmup_cosine(*, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                  end_lr: float = 0.0) -> Schedule:
  """Linear warm-up from 0 to peak_lr, then cosine decay to end_lr at total_steps."""
  total_steps = max(int(total_steps), 1)
  warmup_steps = min(int(warmup_steps), total_steps - 1)
  if warmup_steps <= 0:
    return optax.cosine_decay_schedule(peak_lr, total_steps, alpha=end_lr / peak_lr if peak_lr else 0.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=end_lr)


def make_optimizer(name: str, schedule: Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = False,
                   trust_coefficient: float = 0.001, b1: float = 0.9, b2: float = 0.999,
                   grad_clip_norm: Optional[float] = None) -> optax.GradientTransformation:
  """An optax optimiser with decoupled or L2 weight decay masked by `decay_mask`.

  Args:
    name: "sgd" (momentum, L2 decay added to the gradient as in torch.optim.SGD), "lars"
      (You et al. 2017; decay and trust ratio masked), or "adamw".
    schedule: learning rate as a function of the step.
    weight_decay: decay coefficient.
    momentum: SGD/LARS momentum.
    nesterov: Nesterov momentum for SGD/LARS.
    trust_coefficient: LARS eta.
    b1: AdamW first-moment decay.
    b2: AdamW second-moment decay.
    grad_clip_norm: optional global-norm clipping applied first.

  Returns:
    The gradient transformation.
  """
  if name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
  elif name == "lars":
    tx = optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                    trust_ratio_mask=decay_mask, trust_coefficient=trust_coefficient,
                    momentum=momentum, nesterov=nesterov)
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  else:
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'lars' or 'adamw'")
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx

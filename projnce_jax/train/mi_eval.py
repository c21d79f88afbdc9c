"""The MI lower bound on held-out data, after training (spec section 4).

The figure the training step logs as `mi_lower_bound` comes from a training batch: the
parameters were fitted to those very samples, the labels may be noisy, and each anchor's
own other view is among its keys. It is an estimate that can exceed I(X;C) (on a Gaussian
mixture with I(X;C) = 1.25 nats a critic fitted to 300 samples reaches 2 nats on its training
batches), so results.json reports it as "train_batch_mi_estimate".

The bound, "heldout_mi_bound", is

    log(N - 1) - infonce_term - adjustment

(the full adjustment R whatever beta is) evaluated on the eval split (`config.eval_split`,
default "test") with clean labels, one unaugmented view per example, and the trained
encoder, head and projections fixed. The rows are shuffled with a fixed seed (some splits
are sorted by label) and cut into equal batches of N = heldout_mi.batch_size rows (the
whole set at once when it has fewer rows); the batch estimate of R reuses the batch's
labels, which biases it by O(1/N), so keep N >= 256. The result is the mean over batches,
with its standard error.

Example:
  >>> out = heldout_mi_bound(z, labels, method="projnce", loss_kwargs=config.loss,
  ...                        num_classes=10, batch_size=512, max_examples=2048)
  >>> bound, standard_error = out["heldout_mi_bound"], out["heldout_mi_bound_se"]
"""
import math
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax import losses

# Methods whose loss has a class critic (and so a bound on I(X;C)).
BOUND_METHODS = ("projnce", "supcon")
MIN_ROWS = 256  # below this the O(1/N) bias of the batch estimate of R is not negligible


def _critic(method: str, loss_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """The (g+, g-) pair and loss settings whose bound the method trains."""
  kw = dict(loss_kwargs)
  out = dict(temperature=float(kw.get("temperature", 0.1)),
             bandwidth=float(kw.get("bandwidth", 1.0)))
  if method == "supcon":
    out.update(positive="centroid", negative="sample")
  else:
    out.update(positive=kw.get("positive", "centroid"), negative=kw.get("negative", "sample"))
  return out


def heldout_mi_bound(z: np.ndarray, labels: np.ndarray, *, method: str,
                     loss_kwargs: Mapping[str, Any], num_classes: int,
                     projection_params: Any = None, batch_size: int = 512,
                     max_examples: int = 2048, seed: int = 0
                     ) -> Optional[Dict[str, Any]]:
  """The ProjNCE MI lower bound of a trained critic on held-out embeddings.

  Args:
    z: [n, d] embeddings of the held-out examples (one unaugmented view each).
    labels: [n] int clean labels.
    method: the training method; None is returned for methods without a class critic
      (cross_entropy, infonce).
    loss_kwargs: the trained loss's settings (temperature, positive, negative, bandwidth).
    num_classes: M.
    projection_params: trained parameters of the `mlp` projection, if it is used.
    batch_size: rows N per batch (>= 256 advised: O(1/N) bias).
    max_examples: at most this many rows are used.
    seed: seed of the row shuffle.

  Returns:
    None for methods without a bound, else {"heldout_mi_bound": mean over batches (nats),
    "heldout_mi_bound_se": its standard error (None for one batch),
    "heldout_mi_batch_size": N, "heldout_mi_num_batches": B, "heldout_mi_examples": B * N}.

  Raises:
    ValueError: z and labels of different length, fewer than 2 rows, or batch_size < 2.
  """
  if method not in BOUND_METHODS:
    return None
  z = np.asarray(z)
  labels = np.asarray(labels)
  if z.ndim != 2 or labels.shape != (z.shape[0],):
    raise ValueError(f"heldout_mi_bound needs z [n, d] and labels [n]; got z {z.shape}, "
                     f"labels {labels.shape}")
  if batch_size < 2:
    raise ValueError(f"heldout_mi.batch_size must be >= 2, got {batch_size}")
  perm = np.random.default_rng(seed).permutation(z.shape[0])[:max_examples]
  n = perm.size
  if n < 2:
    raise ValueError(f"heldout_mi_bound needs at least 2 rows, got {n}")
  rows = min(batch_size, n)
  if rows < MIN_ROWS:
    logging.warning("held-out MI bound on batches of %d rows: the batch estimate of R is "
                    "biased by O(1/N); use >= %d rows", rows, MIN_ROWS)
  num_batches = n // rows
  idx = perm[:num_batches * rows].reshape(num_batches, rows)
  critic = _critic(method, loss_kwargs)

  @jax.jit
  def bound(zb, yb):
    _, aux = losses.projnce(zb, yb, beta=1.0, num_classes=num_classes,
                            params=projection_params, **critic)
    return aux["mi_lower_bound"]

  values = np.array([float(bound(jnp.asarray(z[i], jnp.float32), jnp.asarray(labels[i],
                                                                             jnp.int32)))
                     for i in idx])
  se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else None
  return {"heldout_mi_bound": float(values.mean()), "heldout_mi_bound_se": se,
          "heldout_mi_batch_size": int(rows), "heldout_mi_num_batches": int(num_batches),
          "heldout_mi_examples": int(num_batches * rows)}


def from_config(config, features: Mapping[str, np.ndarray], projection_params: Any,
                num_classes: int) -> Dict[str, Any]:
  """The results.json fields of the held-out bound for a trained run.

  Args:
    config: the run's config (method, loss.*, heldout_mi.*, eval_split, seed).
    features: the eval split's features as `evaluate.extract_features` returns them
      ("z" [n, d], "label" [n]; "clean_label" [n] is used instead of "label" when present).
    projection_params: `state.params.get("projection")`.
    num_classes: M.

  Returns:
    {"heldout_mi_bound": float or None, "heldout_mi_split": the split's name, ...} (see
    `heldout_mi_bound`); the bound is None for cross_entropy, infonce, or when
    heldout_mi.enabled is False.
  """
  split = config.get("eval_split", "test")
  cfg = config.get("heldout_mi", None)
  enabled = True if cfg is None else bool(cfg.enabled)
  out: Dict[str, Any] = {"heldout_mi_bound": None, "heldout_mi_split": split}
  if not enabled or "z" not in features:
    return out
  labels = features.get("clean_label", features["label"])
  res = heldout_mi_bound(
      features["z"], labels, method=config.method, loss_kwargs=config.loss.to_dict(),
      num_classes=num_classes, projection_params=projection_params,
      batch_size=cfg.batch_size if cfg is not None else 512,
      max_examples=cfg.max_examples if cfg is not None else 2048, seed=config.seed)
  if res is not None:
    out.update(res)
  return out

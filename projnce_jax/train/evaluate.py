"""Evaluation of a pretrained encoder: frozen-feature linear probe and cosine kNN.

Protocol: features come from the encoder (before the projection head) in inference mode
(BatchNorm running averages), without augmentation. The linear probe reports the test
accuracy after its *final* epoch (never the best epoch on the test set). The kNN
classifier is the weighted cosine kNN of InstDisc (Wu et al. 2018) and the SupCon
repositories: k = 200 neighbours, votes exp(cos / T), T = 0.07.

With several processes, every process feeds its rows of each evaluation batch and
`extract_features` gathers the features, labels, indices and masks of all processes, so
every process holds the whole split (in the order of one global batch after another) and
the probe and kNN see the same data as on one process.
"""
from typing import Any, Callable, Dict, Iterable, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from projnce_jax.train.optim import warmup_cosine


def make_feature_fn(model, eval_inputs: Callable[[Dict[str, jax.Array]], jax.Array]):
  """A jitted (params, batch_stats, batch) -> {"features": [b, f], "z"?: [b, d]}."""

  @jax.jit
  def fn(params, batch_stats, batch):
    out = model.apply({"params": params, "batch_stats": batch_stats}, eval_inputs(batch),
                      train=False)
    return {k: v for k, v in out.items() if k in ("features", "z")}

  return fn


def _to_host(x) -> np.ndarray:
  """A device array as numpy; an array spanning processes is gathered first."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def extract_features(feature_fn, params, batch_stats, batches: Iterable[Dict[str, Any]],
                     *, put: Optional[Callable] = None) -> Dict[str, np.ndarray]:
  """Runs `feature_fn` over a finite iterator of batches, dropping padded rows.

  Args:
    feature_fn: from `make_feature_fn`.
    params: model parameters.
    batch_stats: BatchNorm statistics.
    batches: iterator of host batches with "mask", "label", "index" (with several
      processes: this process's rows of each global batch; every process must yield the
      same number of batches).
    put: optional host -> device transfer (e.g. sharding over a mesh; with several
      processes it assembles the global batch from every process's rows).

  Returns:
    {"features": [n, f], "z": [n, d] (if the model has a head), "label": [n],
    "index": [n]} as numpy arrays, in the iterator's order (of global batches), the same
    on every process.
  """
  gather_rows = put is not None and jax.process_count() > 1
  parts: Dict[str, list] = {}
  for batch in batches:
    rows = {k: np.asarray(batch[k]) for k in ("mask", "label", "index")}
    dev_batch = put(batch) if put is not None else batch
    out = {k: _to_host(v) for k, v in feature_fn(params, batch_stats, dev_batch).items()}
    if gather_rows:   # the global batch is the processes' rows in process order
      rows = {k: np.asarray(v) for k, v in
              multihost_utils.process_allgather(rows, tiled=True).items()}
    mask = rows.pop("mask")
    out.update(rows)
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v)[mask])
  return {k: np.concatenate(v) for k, v in parts.items()}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, num_classes: int, epochs: int = 100,
                 batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
                 seed: int = 0, other_test_y: Optional[np.ndarray] = None
                 ) -> Dict[str, Any]:
  """Trains a linear classifier on frozen features; reports the final-epoch accuracy.

  Features are standardised with the training set's mean and standard deviation (an
  invertible affine map, so the classifier family is unchanged). AdamW with a cosine
  schedule, mini-batches reshuffled every epoch (key fold_in(seed, epoch)).

  Args:
    train_x: [n, f] training features; train_y: [n] int labels.
    test_x: [m, f] test features; test_y: [m] int labels.
    num_classes: M.
    epochs: training epochs.
    batch_size: mini-batch size (clipped to n).
    lr: peak learning rate.
    weight_decay: AdamW decay on the weights.
    seed: initialisation and shuffling seed.
    other_test_y: optional second [m] labelling of the test rows (e.g. the clean labels of
      a noisy validation split) the final classifier is also scored on.

  Returns:
    {"test_accuracy": final-epoch test accuracy, "train_accuracy": final-epoch training
    accuracy, "test_accuracy_curve": [epochs] per-epoch test accuracy (for plots only)},
    and "other_test_accuracy" with `other_test_y`.
  """
  mean = train_x.mean(0, keepdims=True)
  std = train_x.std(0, keepdims=True) + 1e-6
  xtr = jnp.asarray((train_x - mean) / std, jnp.float32)
  xte = jnp.asarray((test_x - mean) / std, jnp.float32)
  ytr = jnp.asarray(train_y, jnp.int32)
  yte = jnp.asarray(test_y, jnp.int32)
  n, f = xtr.shape
  batch_size = max(1, min(batch_size, n))
  steps_per_epoch = n // batch_size
  tx = optax.adamw(warmup_cosine(peak_lr=lr, total_steps=epochs * steps_per_epoch),
                   weight_decay=weight_decay, mask=lambda p: {"w": True, "b": False})
  key = jax.random.PRNGKey(seed)
  params = {"w": jnp.zeros((f, num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  opt_state = tx.init(params)

  def accuracy(p, x, y):
    return jnp.mean(jnp.argmax(x @ p["w"] + p["b"], -1) == y)

  def loss_fn(p, x, y):
    logits = x @ p["w"] + p["b"]                                  # [b, M]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def epoch(carry, e, xtr, ytr, xte, yte):
    p, s = carry
    perm = jax.random.permutation(jax.random.fold_in(key, e), n)[:steps_per_epoch * batch_size]
    idx = perm.reshape(steps_per_epoch, batch_size)

    def body(c, i):
      p, s = c
      g = jax.grad(loss_fn)(p, xtr[i], ytr[i])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(body, (p, s), idx)
    return (p, s), accuracy(p, xte, yte)

  curve = []
  carry = (params, opt_state)
  for e in range(epochs):
    carry, acc = epoch(carry, e, xtr, ytr, xte, yte)
    curve.append(float(acc))
  params = carry[0]
  out = {"test_accuracy": curve[-1] if curve else float(accuracy(params, xte, yte)),
         "train_accuracy": float(accuracy(params, xtr, ytr)),
         "test_accuracy_curve": curve}
  if other_test_y is not None:
    out["other_test_accuracy"] = float(accuracy(params, xte,
                                                jnp.asarray(other_test_y, jnp.int32)))
  return out


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *,
                num_classes: int, k: int = 200, temperature: float = 0.07,
                chunk_size: int = 1024) -> np.ndarray:
  """Weighted cosine kNN (InstDisc): votes sum_j exp(cos(q, x_j) / T) over the top k.

  Args:
    train_x: [n, f] memory bank; train_y: [n] labels.
    test_x: [m, f] queries.
    num_classes: M.
    k: neighbours (clipped to n).
    temperature: T of the vote weights.
    chunk_size: queries per matmul.

  Returns:
    [m] int predicted labels.
  """
  def unit(x):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  bank = unit(train_x)                                            # [n, f]
  bank_y = jnp.asarray(train_y, jnp.int32)
  k = int(min(k, bank.shape[0]))

  @jax.jit
  def predict(q, bank, bank_y):
    sims = unit(q) @ bank.T                                       # [c, n]
    top, idx = jax.lax.top_k(sims, k)                             # [c, k]
    w = jnp.exp(top / temperature)
    votes = jnp.einsum("ck,ckm->cm", w, jax.nn.one_hot(bank_y[idx], num_classes))
    return jnp.argmax(votes, -1)

  preds = [np.asarray(predict(test_x[i:i + chunk_size], bank, bank_y))
           for i in range(0, len(test_x), chunk_size)]
  return np.concatenate(preds) if preds else np.zeros([0], np.int32)


def knn_accuracy(train_x, train_y, test_x, test_y, **kwargs) -> float:
  """Top-1 accuracy of `knn_predict`."""
  return float(np.mean(knn_predict(train_x, train_y, test_x, **kwargs) == np.asarray(test_y)))

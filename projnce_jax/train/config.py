"""The base experiment config; every file in configs/ starts from `base_config()`.

Fields (all locked: a typo in an override is an error):

  method            "projnce" | "supcon" | "infonce" | "cross_entropy"
  loss.*            temperature, positive, negative, beta, impl, block_size,
                    log_ratio_clip, bandwidth, mlp_hidden (ProjNCE/SupCon/InfoNCE),
                    mlp_init ("random" | "simplex": initial table of the `mlp`
                    projection), mlp_lr (None: the `mlp` projection trains with the main
                    optimiser; a float: its own Adam at this peak learning rate, same
                    warm-up + cosine shape), dispersion (weight of the intra-class
                    dispersion control term, 0: off; see losses/dispersion.py)
  dataset.*         name, data_dir, in_memory (small datasets), num_views, label_noise,
                    label_noise_kind, augment (keyword arguments of the augmentation)
  dataset.val_fraction  stratified fraction of the TRAIN split held out as the validation
                    split (default 0.1; 0 disables it); its labels are noisy when
                    label_noise > 0 (the clean ones are kept). Seeded by dataset.split_seed.
  dataset.split_seed    seed of the validation hold-out and of train_subset (default 0)
  dataset.train_subset  None, or the number of training examples kept (stratified, after
                    holding out validation), e.g. 10000 for Fashion-MNIST
  dataset.augment.flip_prob  horizontal-flip probability of the image views; None: the
                    dataset's default (0 for the digit datasets digits and mnist5k, 0.5
                    for the other image datasets); audio datasets have no flip
  dataset.augment.brightness, .contrast, .saturation, .hue  colour-jitter strengths
                    (None: 0.4, 0.4, 0.4, 0.1); other augment keys (crop_scale,
                    jitter_prob, gray_prob, audio: max_shift, gain_db, ...) are the
                    augmentation functions' keyword arguments
  eval_split        "test" (default) or "validation": the split the linear probe and kNN
                    are scored on (the training split always trains them). Every tuning
                    sweep sets "validation"; nothing is selected on the test split.
  model.*           name, widths, extra_convs (small_cnn), width (ResNets), proj_dim,
                    proj_hidden_dim, dtype ("float32", "bfloat16", "auto")
  optimizer.*       name (sgd|lars|adamw), base_lr (per 256 examples), momentum,
                    nesterov, weight_decay, warmup_epochs, grad_clip_norm
  batch_size, num_epochs, num_steps (overrides num_epochs when set)
  online_probe.lr   Adam learning rate of the online linear probe
  linear_probe.*    epochs, batch_size, lr, weight_decay (frozen-feature evaluation)
  knn.*             k, temperature
  heldout_mi.*      enabled, max_examples, batch_size: the MI bound evaluated after
                    training on the eval split (clean labels, one unaugmented view per
                    example, trained projections fixed) -> results.json "heldout_mi_bound"
  eval_batch_size, log_every, checkpoint_every, keep_checkpoints, async_checkpoints,
  num_devices (None: all), seed, progress, report.tsne, report.tsne_points
  skip_nonfinite_updates  False: a non-finite loss or gradient stops the run at the next
                    log/checkpoint step; True: such updates are skipped and counted
                    (metric `skipped_updates`)
  min_free_disk_mb  free space the workdir needs at start-up (MiB)
  runs              () or a tuple of {"name": ..., <overrides>} dicts: one invocation
                    trains each run in WORKDIR/<name> and writes a comparison table.
"""
import copy
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from projnce_jax.train.step import METHODS


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all experiments (unlocked; the caller locks)."""
  c = ml_collections.ConfigDict()
  c.method = "projnce"
  c.loss = ml_collections.ConfigDict(dict(
      temperature=0.1, positive="centroid", negative="sample", beta=1.0, impl="dense",
      block_size=config_dict.placeholder(int), log_ratio_clip=config_dict.placeholder(float),
      bandwidth=1.0, mlp_hidden=256, mlp_init="random",
      mlp_lr=config_dict.placeholder(float), dispersion=0.0))
  c.dataset = ml_collections.ConfigDict(dict(
      name="mnist5k", data_dir=config_dict.placeholder(str), in_memory=False, num_views=2,
      label_noise=0.0,
      label_noise_kind="symmetric", augment=ml_collections.ConfigDict()))
  c.dataset.val_fraction = 0.1
  c.dataset.split_seed = 0
  c.dataset.train_subset = config_dict.placeholder(int)
  c.dataset.augment.flip_prob = config_dict.placeholder(float)
  c.dataset.augment.brightness = config_dict.placeholder(float)
  c.dataset.augment.contrast = config_dict.placeholder(float)
  c.dataset.augment.saturation = config_dict.placeholder(float)
  c.dataset.augment.hue = config_dict.placeholder(float)
  c.eval_split = "test"
  c.model = ml_collections.ConfigDict(dict(
      name="small_cnn", widths=(32, 64, 128), extra_convs=0,
      width=config_dict.placeholder(int),
      proj_dim=128, proj_hidden_dim=config_dict.placeholder(int), dtype="float32"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
      warmup_epochs=1.0, grad_clip_norm=config_dict.placeholder(float)))
  c.batch_size = 256
  c.num_epochs = 10
  c.num_steps = config_dict.placeholder(int)
  c.online_probe = ml_collections.ConfigDict(dict(lr=1e-2))
  c.linear_probe = ml_collections.ConfigDict(dict(
      epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0))
  c.knn = ml_collections.ConfigDict(dict(k=200, temperature=0.07))
  c.heldout_mi = ml_collections.ConfigDict(dict(enabled=True, max_examples=2048,
                                                batch_size=512))
  c.eval_batch_size = 512
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.num_devices = config_dict.placeholder(int)
  c.seed = 0
  c.progress = True
  c.report = ml_collections.ConfigDict(dict(tsne=True, tsne_points=1000))
  c.skip_nonfinite_updates = False
  c.min_free_disk_mb = 64.0
  c.runs = ()
  return c


def parse_arg(arg: str | None) -> set:
  """`get_config` argument "a,b" -> {"a", "b"} (empty for None/"")."""
  return {a.strip() for a in (arg or "").split(",") if a.strip()}


def select_method(c: ml_collections.ConfigDict, args: set) -> None:
  """Sets `c.method` to the method named among the config arguments, if any."""
  for m in METHODS:
    if m in args:
      c.method = m


def shrink_to_runlocal(c: ml_collections.ConfigDict) -> None:
  """The `:runlocal` settings of the accelerator configs: two tiny float32 steps on CPU.

  The caller shrinks the model itself (its size fields differ per encoder).
  """
  c.model.dtype = "float32"
  c.batch_size = 16
  c.num_steps = 2
  c.log_every = 1
  c.eval_batch_size = 16
  c.linear_probe.epochs = 2
  c.linear_probe.batch_size = 16
  c.report.tsne = False
  c.progress = False


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with nested `overrides` applied (keys must exist).

  Example:
    >>> run = apply_overrides(config, {"method": "supcon", "loss": {"beta": 0.0}})
  """
  out = copy.deepcopy(config)
  with out.unlocked():
    out.runs = ()

  def merge(node, upd, prefix):
    for k, v in upd.items():
      if k not in node:
        raise KeyError(f"unknown config field {prefix + k!r}")
      if isinstance(v, Mapping) and isinstance(node[k], ml_collections.ConfigDict):
        merge(node[k], v, prefix + k + ".")
      else:
        node[k] = v

  merge(out, {k: v for k, v in overrides.items() if k != "name"}, "")
  return out

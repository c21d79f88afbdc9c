"""Fashion-MNIST (Debian's dataset-fashion-mnist), a stratified 10,000-image training subset.

Command:   python main.py --config=configs/fashion_mnist.py --workdir=runs/fashion
           variants: a method name (projnce, supcon, infonce, cross_entropy), full (all
           54,000 training images left after validation), tune (score on the validation
           split, for sweeps), runlocal (two steps, seconds).
Data:      `make data` (apt-get install dataset-fashion-mnist); 6,000 of the 60,000
           training images are held out for validation (dataset.val_fraction = 0.1).
Hardware:  2 CPU cores.
Time:      not measured yet; `:runlocal` takes seconds.
Expected:  no figure is typed here: a run writes WORKDIR/results.json and report.md, and
           experiments/paper_comparison's results.md carries the measured tables.
"""
from projnce_jax.train.config import base_config
from projnce_jax.train.config import parse_arg
from projnce_jax.train.config import select_method
from projnce_jax.train.config import shrink_to_runlocal


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.dataset.name = "fashion_mnist_local"
  c.dataset.in_memory = True
  c.dataset.train_subset = None if "full" in args else 10000
  c.dataset.augment.crop_scale = (0.4, 1.0)
  c.dataset.augment.flip_prob = 0.5      # clothes are left-right symmetric
  c.model.name = "small_cnn"
  c.model.widths = (32, 64, 128)
  c.model.extra_convs = 1
  c.batch_size = 256
  c.num_epochs = 20
  c.optimizer.base_lr = 0.2
  c.log_every = 10
  c.checkpoint_every = 200
  c.linear_probe.epochs = 60
  select_method(c, args)
  if "tune" in args:
    c.eval_split = "validation"
  if "runlocal" in args:
    c.model.widths = (8, 16)
    c.dataset.train_subset = 200
    shrink_to_runlocal(c)
  c.lock()
  return c

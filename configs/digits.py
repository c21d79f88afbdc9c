"""ProjNCE on scikit-learn's 8x8 digits (offline, 1,437 train / 360 test images).

Command:   python main.py --config=configs/digits.py --workdir=runs/digits
           (any method: --config.method=supcon|infonce|cross_entropy)
Hardware:  2 CPU cores.
Time:      about 25 seconds, evaluation included (`:runlocal`: seconds).
Expected:  linear-probe test accuracy about 98% (measured: ProjNCE 98.1, SupCon 98.1,
           cross-entropy 98.1; kNN 97-98%).
"""
from projnce_jax.train.config import base_config
from projnce_jax.train.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.dataset.name = "digits"
  c.dataset.in_memory = True
  c.dataset.augment.crop_scale = (0.5, 1.0)
  c.model.widths = (32, 64, 128)
  c.model.extra_convs = 1
  c.batch_size = 128
  c.num_epochs = 30
  c.optimizer.base_lr = 0.2
  c.log_every = 10
  c.checkpoint_every = 100
  c.linear_probe.epochs = 50
  if "runlocal" in args:
    c.model.widths = (8, 16)
    c.num_steps = 2
    c.log_every = 1
    c.linear_probe.epochs = 2
    c.report.tsne = False
    c.progress = False
  c.lock()
  return c

"""ProjNCE on scikit-learn's 8x8 digits (offline; 1,438 train, of which 144 are held out
for validation, and 359 test images).

Command:   python main.py --config=configs/digits.py --workdir=runs/digits
           (any method: --config.method=supcon|infonce|cross_entropy)
Hardware:  2 CPU cores.
Time:      well under a minute on 2 CPU cores (`:runlocal`: seconds); the run records
           its own time in WORKDIR/results.json ("train_seconds").
Expected:  no figure is typed here: the run writes its linear-probe and kNN accuracies
           to WORKDIR/results.json and report.md.
"""
from projnce_jax.train.config import base_config
from projnce_jax.train.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.dataset.name = "digits"
  c.dataset.in_memory = True
  c.dataset.augment.crop_scale = (0.5, 1.0)
  c.dataset.augment.flip_prob = 0.0      # a mirrored digit is not a digit
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

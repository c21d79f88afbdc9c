"""The demo: ProjNCE vs SupCon vs cross-entropy on MNIST-5k, trained and probed in one go.

Command:   make demo   (= python main.py --config=configs/demo.py --workdir=runs/demo)
Hardware:  2 CPU cores (no accelerator).
Time:      several minutes on 2 CPU cores for the three runs, evaluation included
           (`:runlocal`: about a minute); each run records "train_seconds".
Expected:  no figure is typed here: runs/demo/results.json holds the measured accuracies,
           and `python scripts/demo_table.py runs/demo` writes the README's demo table
           from it (with the machine, date and load average).

Each run uses the same small CNN, augmentations, optimiser and schedule; they differ only
in the objective. Results: runs/demo/results.json, runs/demo/report.md, runs/demo/<run>/.
"""
from projnce_jax.train.config import base_config
from projnce_jax.train.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.dataset.name = "mnist5k"
  c.dataset.in_memory = True
  c.dataset.augment.crop_scale = (0.4, 1.0)
  c.dataset.augment.flip_prob = 0.0      # a mirrored digit is not a digit
  c.model.name = "small_cnn"
  c.model.widths = (32, 64, 128)
  c.model.extra_convs = 1
  c.batch_size = 256
  c.num_epochs = 20
  c.optimizer.base_lr = 0.2
  c.optimizer.warmup_epochs = 1.0
  c.log_every = 5
  c.checkpoint_every = 75
  c.linear_probe.epochs = 60
  c.report.tsne_points = 1000
  c.runs = (
      {"name": "projnce", "method": "projnce"},
      {"name": "supcon", "method": "supcon"},
      {"name": "cross_entropy", "method": "cross_entropy"},
  )
  if "runlocal" in args:
    c.model.widths = (8, 16)
    c.batch_size = 64
    c.num_steps = 2
    c.log_every = 1
    c.linear_probe.epochs = 2
    c.report.tsne_points = 100
    c.progress = False
  c.lock()
  return c

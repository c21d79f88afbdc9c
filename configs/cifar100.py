"""CIFAR-100 with a CIFAR ResNet-18: ProjNCE (default), SupCon, SimCLR or cross-entropy.

Command:   python main.py --config=configs/cifar100.py --workdir=runs/cifar100
           variants: a method name, noise30, runlocal (as configs/cifar10.py).
Data:      prepare once with internet: python -m projnce_jax.data.prepare --dataset=cifar100
Hardware:  8 accelerators (TPU v3-8 / 8 GPUs), bfloat16; batch 1024.
Time:      estimated 6-8 hours for 500 epochs on a TPU v3-8 (not measured here).
Expected:  not run here, so no figure of ours is given. Published references (not
           measured here): solo-learn SupCon 70.4% with ResNet-18; SupContrast 76.5% with
           ResNet-50.
"""
from configs.cifar10 import cifar_config


def get_config(arg=None):
  return cifar_config("cifar100", arg)

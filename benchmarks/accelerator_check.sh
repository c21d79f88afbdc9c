#!/usr/bin/env bash
# One prepared accelerator check (see benchmarks/accelerator_check.py): bf16 loss at
# N = 16k..262k (dense, blockwise, class path, InfoNCE), fraction of the measured bf16
# matmul rate, peak device memory, ResNet-18 train step images/s (ProjNCE vs CE).
# Writes one JSON; < 8 min on one GPU/TPU. `--small` is a CPU smoke run (< 1 min).
#   bash benchmarks/accelerator_check.sh [--small] [--out FILE.json]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
if [[ " $* " == *" --small "* ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
else
  # No up-front preallocation on GPU, so peak_bytes_in_use reflects the loss, not the
  # allocator's reservation.
  export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${ACCEL_TIMEOUT_S:-470}" "$PYTHON" "$HERE/accelerator_check.py" "$@"

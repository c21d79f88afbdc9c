#!/usr/bin/env bash
# The one-shot accelerator check (benchmarks/accelerator_check.py) on a GPU/TPU host as it
# is: its own python3, this checkout on PYTHONPATH, nothing installed. Fails within seconds
# unless the backend is a GPU or TPU; one budget inside (420 s), a hard stop at 470 s.
# The JSON goes to $OUT/accelerator_check.json when OUT is set, else to --out.
#   bash benchmarks/accelerator_check.sh                        # on the GPU/TPU host
#   bash benchmarks/accelerator_check.sh --small --out /tmp/a.json   # CPU smoke run (< 60 s)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
if [[ " $* " == *" --small "* ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
else
  # No up-front preallocation: the device peak then reflects the programs, not the
  # allocator's reservation.
  export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
fi
# Wheels for anything the host lacks would be in benchmarks/accelerator/wheels (none are
# needed today: the check imports only jax, flax, optax, chex and numpy).
if [[ -d "$HERE/accelerator/wheels" ]]; then
  export PYTHONPATH="$HERE/accelerator/wheels${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${ACCEL_TIMEOUT_S:-470}" "$PYTHON" "$HERE/accelerator_check.py" "$@"

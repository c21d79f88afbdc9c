#!/usr/bin/env bash
# Builds the wheel and the sdist, installs the wheel with the core dependencies only
# (jax, numpy) into a clean venv, checks that no training package came with it, and runs
# the README's first Python snippet (the losses) there. Prints install time and size.
#   bash scripts/check_core_install.sh [WORKDIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK"
echo "core install check in $WORK"
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install -q build
rm -rf "$WORK/dist"
"$WORK/build-env/bin/python" -m build --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; exit 1; }
ls "$WORK/dist"/*.whl "$WORK/dist"/*.tar.gz
rm -rf "$WORK/core"
"$PYTHON" -m venv "$WORK/core"
start=$(date +%s)
"$WORK/core/bin/pip" install -q "$WORK"/dist/*.whl
echo "core install: $(( $(date +%s) - start )) s, site-packages $(du -sm "$WORK"/core/lib/python*/site-packages | cut -f1) MB"
for pkg in flax optax orbax ml_collections tensorflow_datasets grain librosa matplotlib sklearn; do
  if "$WORK/core/bin/python" -c "import $pkg" 2>/dev/null; then
    echo "core install pulled in $pkg" >&2; exit 1
  fi
done
"$WORK/core/bin/python" - "$ROOT/README.md" > "$WORK/snippet.py" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
print(re.search(r"```python\n(.*?)```", text, re.S).group(1))
PY
(cd "$WORK" && JAX_PLATFORMS=cpu "$WORK/core/bin/python" snippet.py)
message="$("$WORK/core/bin/python" -c "import projnce_jax.train" 2>&1 || true)"
if [[ "$message" != *"pip install 'projnce_jax[train]'"* ]]; then
  echo "importing projnce_jax.train without the extra did not name it: $message" >&2; exit 1
fi
echo "core install check: ok"

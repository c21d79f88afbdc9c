# projnce_jax: set-up, tests, demo and benchmarks. Every target creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.projnce_installed
PYTEST_WORKERS ?= 2
# Every install goes through the lock (pinned versions of the whole environment, made on
# CPython 3.11 x86_64 Linux); `make test CONSTRAINTS=` installs without it.
CONSTRAINTS ?= requirements/constraints.txt
PIP_CONSTRAINT_ARGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: help venv lock test docs check-core demo demo-table demo-fresh demo-local demo-local-fresh bench bench-loss clean data

help:
	@echo "make test   - install into .venv (if needed) and run the test suite"
	@echo "make docs   - build the documentation site (docs/ + API reference) into .cache/site, strict"
	@echo "make check-core - build wheel + sdist, install the core (jax, numpy) in a clean venv, run the README snippet"
	@echo "make demo   - ProjNCE vs SupCon vs cross-entropy on MNIST-5k (CPU, ~7 min) -> runs/demo"
	@echo "              (an interrupted demo resumes; make demo-fresh starts it over)"
	@echo "make bench  - train-step benchmark (ProjNCE vs cross-entropy) -> benchmarks/TRAIN_RESULTS.md"
	@echo "make lock   - regenerate requirements/constraints.txt (the pinned environment)"
	@echo "make data   - install Fashion-MNIST and espeak-ng (Debian/Ubuntu apt; root or sudo)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install $(PIP_CONSTRAINT_ARGS) -e '.[train,test]'
	touch $(STAMP)

# Regenerates the lock from a fresh venv with the newest versions setup.cfg allows.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install '.[train,test]'
	{ echo "# The full environment of make test / make demo / CI: pip install -c requirements/constraints.txt"; \
	  echo "# -e '.[train,test]'. Regenerate with make lock (CPython $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version(), platform.machine())'), $$(date +%Y-%m-%d))."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^projnce'; } > requirements/constraints.txt
	rm -rf .lock-venv

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope tests

# The documentation site (docs/, API reference from the docstrings) with warnings as errors.
DOCS_STAMP := $(VENV)/.projnce_docs_installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install $(PIP_CONSTRAINT_ARGS) -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

# A clean venv with the wheel's core dependencies only, running the README's loss snippet.
check-core:
	bash scripts/check_core_install.sh

# Resumes an interrupted demo (main.py resumes from the workdir's checkpoints; a finished
# demo is evaluated again without training). The -fresh targets delete it and start over.
demo: $(STAMP)
	$(BIN)/python main.py --config=configs/demo.py --workdir=runs/demo

# The README's demo table from the last `make demo` run; its results.json is kept as the
# tracked docs/demo/results.json (runs/ is never tracked).
demo-table: $(STAMP)
	$(BIN)/python scripts/demo_table.py runs/demo --keep docs/demo/results.json --load "$$(uptime)"

demo-fresh: $(STAMP)
	rm -rf runs/demo
	$(BIN)/python main.py --config=configs/demo.py --workdir=runs/demo

demo-local: $(STAMP)
	$(BIN)/python main.py --config=configs/demo.py:runlocal --workdir=runs/demo_local

demo-local-fresh: $(STAMP)
	rm -rf runs/demo_local
	$(BIN)/python main.py --config=configs/demo.py:runlocal --workdir=runs/demo_local

bench: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py --write=benchmarks/TRAIN_RESULTS.md

bench-loss: $(STAMP)
	$(BIN)/python benchmarks/loss_bench.py

clean:
	rm -rf runs .pytest_cache

# Offline data from Debian packages: Fashion-MNIST's files and the espeak-ng synthesiser
# behind the spoken_digits dataset. Without apt it says what to install instead.
DATA_APT_PACKAGES := dataset-fashion-mnist espeak-ng
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v espeak-ng >/dev/null 2>&1; then \
	  echo "data: dataset-fashion-mnist and espeak-ng are already installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "data: apt-get not found. Install the Debian/Ubuntu packages $(DATA_APT_PACKAGES) by other means:"; \
	  echo "  Fashion-MNIST: put train-images-idx3-ubyte.gz and the three other idx files in a folder and set PROJNCE_FASHION_MNIST_DIR to it"; \
	  echo "  espeak-ng: install it from your package manager (brew install espeak-ng, ...) or set PROJNCE_ESPEAK to its path"; \
	  exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y $(DATA_APT_PACKAGES) || { apt-get update && apt-get install -y $(DATA_APT_PACKAGES); }; \
	elif command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get install -y $(DATA_APT_PACKAGES) || { sudo apt-get update && sudo apt-get install -y $(DATA_APT_PACKAGES); }; \
	else \
	  echo "data: run as root: apt-get install -y $(DATA_APT_PACKAGES)"; exit 1; \
	fi

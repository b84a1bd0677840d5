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

.PHONY: install models demo test test-fast lint docs wheel container services clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,lint,docs]"
	touch $@

models: install
	$(BIN)/textworker models build-defaults --dir $(MODELS)

demo: install
	$(BIN)/textworker demo --models-dir $(MODELS)

services:
	bash .ci/services.sh

lint: install
	$(BIN)/ruff check worker schemas tests infra/schemas setup.py
	$(BIN)/mypy worker schemas
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet infra/kubernetes/*.yaml
	$(BIN)/python infra/schemas/kuberay.py validate infra/kuberay/*.yaml
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(CURDIR)/build/site

# the documentation site (docs/, mkdocs.yml) into build/site
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(CURDIR)/build/site

# the wheel into dist/ (pipelines/, seed data, migrations and the dashboard page inside)
wheel: install
	rm -rf build/lib build/bdist.*
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .

# build the image with podman and run it (demo, run over a mounted input, serve + curl); see docs/deployment.md
container:
	infra/container/smoke.sh

test: install models services lint
	$(BIN)/python -m pytest

test-fast: install models
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) $(MODELS) *.db build dist *.egg-info

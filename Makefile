# slimllm developer targets. `make help` lists them.
SHELL := bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(PY): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	@touch $(PY)

.PHONY: install
install: $(PY) ## Create .venv with slimllm and its test and lint tools

.PHONY: docker
docker: ## Install and start a Docker engine with buildx and compose (Debian hosts, as root)
	bash scripts/install-docker.sh

.PHONY: base-image
base-image: ## Make debian:bookworm-slim available (pull, or build it with debootstrap)
	bash scripts/bootstrap-base-image.sh

.PHONY: model
model: $(PY) ## Place the embedded default model in ./models
	$(VENV)/bin/slimllm model fetch default --models-dir models

.PHONY: lint
lint: $(PY) ## Run ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: $(PY) ## Run the test suite (needs the Docker engine and base image; see .ci/run)
	$(PY) -m pytest $(PYTEST_ARGS)

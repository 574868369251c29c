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

.PHONY: install test test-deps test-ray-deps lint format bench clean serve bundle docker

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

# System packages the suite needs: Debian's prometheus (the dashboard test scrapes a live server with it),
# chromium and chromium-driver (the /ui test drives the viewer in a headless browser), orthanc and
# orthanc-dicomweb (the PACS tests run a real Orthanc, tests/server/test_pacs.py). Tests skip without them.
test-deps:
	@missing=""; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	[ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's$$missing for the dashboard, browser and PACS tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "note:$$missing not installed and cannot apt-get here; the tests that need them will skip"; fi

# Ray is the optional extra `.[ray]` (vital serve --ray, vital batch --ray): the tests install it (~385 MB) and
# run on a two-node Ray on this machine (tests/server/test_ray_cluster.py); `make serve` never installs it.
$(VENV)/.installed-ray: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e ".[$(EXTRAS),ray]"
	touch $@

test-ray-deps: $(VENV)/.installed-ray

test: lint test-deps test-ray-deps
	$(BIN)/python -m pytest -q

# The embedded default bundle is committed (bundles/vital-tiny); `make bundle` rebuilds it from nothing
# (compositional phantom + held-out gates -> tiny MedSigLIP -> ROI -> perception -> stage 0 chain -> latent
# curriculum -> merge -> index -> scores), ~40 min on 2 cores.
$(BUNDLE)/vital.yaml: | $(VENV)/.installed
	$(BIN)/vital build-tiny-bundle --out $(BUNDLE)

bundle: install
	$(BIN)/vital build-tiny-bundle --out $(BUNDLE)

serve: install $(BUNDLE)/vital.yaml
	@echo "VITAL: serving $(BUNDLE) on http://$(HOST):$(PORT)  (API docs: http://$(HOST):$(PORT)/docs)"
	$(BIN)/vital serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

bench: install
	$(BIN)/vital bench --out bench/results

docker:
	docker build -t vital:latest .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info data/tiny-build runs

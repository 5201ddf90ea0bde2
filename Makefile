# omnifer: two commands set everything up on a fresh machine.
#   make demo   venv + installs + model files + demo world + one nightly run, end to end
#   make test   venv + installs + model files + lint + pytest
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

# Model files come from a local mirror when there is one (never committed to this repo).
ifneq ($(wildcard ../shared/models),)
export OMNIFER_MODEL_MIRROR ?= $(abspath ../shared/models)
endif
# Keep Prefect offline and quiet: no telemetry, a temporary local server per run.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

PYTEST_ARGS ?=

.PHONY: demo test setup lint fast-test clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dask]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/omnifer models fetch

lint: $(STAMP)
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

fast-test: setup
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/omnifer demo --out demo

clean-demo:
	rm -rf demo data/catalog

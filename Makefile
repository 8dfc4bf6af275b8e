# The README's two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: setup run test browser ui bench compare clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

run: setup            ## set up, then run the whole pipeline on the default model
	dvc repro

test: setup browser   ## set up, then run the test suite
	pytest

browser:              ## Debian's chromium, for the MLflow UI test (skipped without it unless CI)
	@command -v chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed; the browser test needs it"

ui:                   ## the MLflow UI on the project's store
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

compare: setup        ## experiments x variants: SNR, passes, NE share, latency (fits a terminal)
	python -m pipeline.compare

bench: setup          ## emulator speed and precision-search benchmarks
	python -m benchmarks.emulator_speed
	python -m benchmarks.search

clean:
	rm -rf artifacts mlruns mlflow.db mlflow.db.lock

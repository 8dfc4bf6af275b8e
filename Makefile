# The README's two commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: setup run test browser ui bench compare clean mlflow-server mlflow-server-stop \
        ray-head ray-worker ray-mac-worker ray-stop

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

run: setup            ## set up, then run the whole pipeline on the default model
	dvc repro

# One test process per core, each taking whole files (a file's fixtures, like test_dvc's repo, are
# built once), the longest files first (tests/conftest.py); `pytest tests/x.py` runs in one process.
test: setup browser   ## set up, then run the test suite
	pytest -n auto --dist loadfile --no-loadscope-reorder

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
	python -m benchmarks.sweep_parallel

# Fan out (README, "Fan out"): a shared MLflow server and a Ray cluster for hydra/launcher=cluster
MLFLOW_PORT ?= 5050
MLFLOW_HOST ?= 127.0.0.1
RAY_PORT    ?= 6379
HEAD        ?= 127.0.0.1:$(RAY_PORT)

mlflow-server: setup  ## MLflow on PostgreSQL (installed if missing), artifacts proxied, in .mlflow-server/
	python -m pipeline.services.mlflow_server start --dir .mlflow-server --port $(MLFLOW_PORT) --host $(MLFLOW_HOST)

mlflow-server-stop:
	python -m pipeline.services.mlflow_server stop --dir .mlflow-server

ray-head: setup       ## the Ray head: schedules jobs, runs none (workers do)
	PYTHONPATH=$(CURDIR) ray start --head --port=$(RAY_PORT) --num-cpus=0 --include-dashboard=false --disable-usage-stats

ray-worker: setup     ## a Linux worker (emulator jobs): make ray-worker HEAD=host:6379
	PYTHONPATH=$(CURDIR) ray start --address=$(HEAD) --disable-usage-stats

ray-mac-worker: setup ## a Mac worker (takes backend=coreml jobs): make ray-mac-worker HEAD=host:6379
	@test "$$(uname -s)" = Darwin || { echo "error: ray-mac-worker offers the 'macos' resource: run it on a Mac -- use make ray-worker here"; exit 2; }
	PYTHONPATH=$(CURDIR) ray start --address=$(HEAD) --resources='{"macos": 1}' --disable-usage-stats

ray-stop:             ## stop this machine's Ray node(s)
	ray stop

clean:
	rm -rf artifacts mlruns mlflow.db mlflow.db.lock

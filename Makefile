# visionflow: `make repro` runs the pipeline, `make test` the tests. Both set up
# the virtualenv first (python3 -m venv + pip), so each works on a fresh clone.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
# mlflow-server's stores: any SQLAlchemy URI (postgresql://...) and any artifact URI (s3://...)
MLFLOW_BACKEND_URI ?= sqlite:///$(CURDIR)/mlflow-server/mlflow.db
MLFLOW_ARTIFACTS_DESTINATION ?= $(CURDIR)/mlflow-server/artifacts

# Tools started from make (dvc, prefect, mlflow) get the same quiet, offline,
# in-project settings that visionflow sets for itself at import.
export PATH := $(abspath $(BIN)):$(PATH)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_UI_STATIC_DIRECTORY := $(CURDIR)/.cache/prefect/ui
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
export NO_PROXY := 127.0.0.1,localhost

.PHONY: install constraints dag repro repro-gpu flow test test-slow ui prefect-ui mlflow-ui mlflow-server bench throughput clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

## constraints: re-pin constraints.txt to what the virtualenv holds (after editing dependencies)
constraints:
	$(BIN)/pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(VENV)/.installed

## dag: write dvc.yaml for params.yaml (generated: the stages, their params, deps and outs)
dag: install
	$(BIN)/visionflow dag

## repro: run the whole pipeline with DVC (only what changed), then a row per family: headline
## metrics against target and baseline (all of them: dvc metrics show; the page: reports/index.html)
repro: dag
	$(BIN)/dvc repro
	@$(BIN)/visionflow summary

## repro-gpu: the pipeline with the GPU profile (params.gpu.yaml) as a DVC experiment
## (dvc.yaml is generated before the profile applies: the profile must not change `tasks`, `pretrained`
## or a key a family's cross-family inputs depend on; `visionflow dag --check` after it would say so)
repro-gpu: dag
	$(BIN)/dvc exp run $$($(BIN)/visionflow profile params.gpu.yaml)
	@$(BIN)/visionflow summary

## push: upload the DVC-tracked outputs (data, models, reports) to the default DVC remote
push: install
	$(BIN)/dvc push

## pull: fetch the outputs dvc.lock names from the DVC remote (a fresh clone gets the trained models, no recompute)
pull: install
	$(BIN)/dvc pull

.PHONY: push pull

## flow: run the same stages as a Prefect flow (visible in the Prefect UI)
flow: dag
	$(BIN)/python pipelines/flow.py

## deploy: the flow as deployment visionflow/visionflow on process work pool visionflow (needs `make ui`);
##   GPU_POOL=visionflow-gpu also sends train and evaluate stages to that pool
## worker: a Prefect worker that runs the deployment's flow runs; then `prefect deployment run visionflow/visionflow`
## worker-gpu: a worker of the GPU pool, on the GPU machine (same project folder)
GPU_POOL ?=
.PHONY: deploy worker worker-gpu
deploy worker worker-gpu: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api
deploy: install
	$(BIN)/python pipelines/deploy.py $(if $(GPU_POOL),--gpu-pool $(GPU_POOL))
worker: install
	$(BIN)/prefect worker start --pool visionflow
worker-gpu: install
	$(BIN)/prefect worker start --pool $(or $(GPU_POOL),visionflow-gpu)

## test: the fast test suite
test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

## ui: Prefect UI on http://127.0.0.1:4200 and MLflow UI on http://127.0.0.1:5000 (Ctrl-C stops both)
ui: install
	BIN=$(BIN) PREFECT_PORT=$(PREFECT_PORT) MLFLOW_PORT=$(MLFLOW_PORT) bash scripts/ui.sh

prefect-ui: install
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts

## mlflow-server: shared MLflow tracking server on $(MLFLOW_PORT): runs in MLFLOW_BACKEND_URI, artifacts proxied to MLFLOW_ARTIFACTS_DESTINATION
mlflow-server: install
	mkdir -p $(CURDIR)/mlflow-server
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri $(MLFLOW_BACKEND_URI) --serve-artifacts --artifacts-destination $(MLFLOW_ARTIFACTS_DESTINATION)

## throughput: loader, step and end-to-end images/s of every family (needs the synthetic data)
throughput: install
	$(BIN)/python bench/throughput.py --task all

## bench: run the default pipeline from scratch in a temp copy; print time, memory, metrics per stage
bench: install
	$(BIN)/python bench/pipeline.py

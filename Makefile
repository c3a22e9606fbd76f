# fourd: `make demo` sets everything up and runs the bundled example; `make test` runs the CPU test suite.
# Both create/refresh the project venv (.venv) with the pinned dependencies of pyproject.toml first.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
EXTRAS := all,dev,pipeline,rembg
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.DEFAULT_GOAL := help
.PHONY: help setup render-env demo repro report test test-main test-render test-gpu smoke style quality consistency mlflow-ui clean \
	flow prefect-server prefect-stop prefect-setup prefect-worker prefect-run prefect-env docker-images test-docker

## Show this help
help:
	@awk '/^## /{doc=substr($$0, 4); next} /^[a-z-]+:/{if (doc) {split($$1, t, ":"); printf "  make %-12s %s\n", t[1], doc}; doc=""}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

## Create .venv and install the pinned dependencies (torch==2.13.0 CPU wheel here)
setup: $(STAMP)

RENDER_VENV := .venv-render
RENDER_STAMP := $(RENDER_VENV)/.installed-$(shell cat stages/render/requirements.txt | sha256sum | cut -c1-16)

$(RENDER_STAMP): stages/render/requirements.txt
	test -x $(RENDER_VENV)/bin/python || $(PYTHON) -m venv $(RENDER_VENV)
	$(RENDER_VENV)/bin/pip install --quiet -r stages/render/requirements.txt pytest==9.2.0 pytest-timeout==2.4.0
	$(RENDER_VENV)/bin/pip install --quiet --no-deps -e .
	rm -f $(RENDER_VENV)/.installed-* && touch $@

## Create .venv-render for the render stage (bpy 4.5.15 needs numpy<2, so it cannot share .venv)
render-env: $(RENDER_STAMP)

## Set up, then run the bundled example through preprocess → mvgen → distill → eval on the CPU (small 4DM of weights/demo)
demo: setup
	@mkdir -p weights/eval  # eval's dependency: its networks go here (weights/README.md); without them, metrics are skipped
	@if [ -f weights/demo/fourdm/model_index.json ]; then \
		$(BIN)/python -m flows.tracking --name demo/fox --config-set demo -- dvc repro pipelines/demo/dvc.yaml:eval@fox; \
	else $(BIN)/python -m flows.tracking --name demo/fox --config-set demo -- \
		dvc repro pipelines/demo/dvc.yaml:preprocess@fox && \
		echo "demo: mvgen → distill → eval skipped: weights/demo/fourdm is missing (weights/demo/README.md)"; fi
	@echo "demo: results in data/demo/ (preprocess, mvgen, distill, eval); open data/demo/eval/fox/report.html and"
	@echo "      data/demo/distill/fox/preview.mp4; metrics in reports/demo/fox.json; MLflow runs in ./mlflow.db (make mlflow-ui)"

## Run the production pipeline (dvc repro, REPRO_ARGS) under one MLflow parent run (needs weights/fourdm, weights/eval)
REPRO_ARGS ?=
repro: setup
	$(BIN)/python -m flows.tracking --name repro -- dvc repro $(REPRO_ARGS)

## Aggregate every subject's eval metrics into reports/metrics.json (DVC metrics)
report: setup
	$(BIN)/python -m stages.eval.aggregate --output reports/metrics.json data/eval/*

## Run every CPU test: the main suite in .venv, then the render stage's in .venv-render
test: test-main test-render

## Run the main CPU test suite (no GPU, no slow, no real weights)
test-main: setup
	$(BIN)/python -m pytest -m "not gpu and not slow and not weights"

## Run the render stage's tests in .venv-render (Blender, Cycles on CPU; a few seconds)
test-render: render-env
	$(RENDER_VENV)/bin/python -m pytest tests/render "tests/test_stage_contract.py::test_stage_contract[render]"

## Run only the GPU tests (on a CUDA machine)
test-gpu:
	RUN_GPU_TESTS=1 python -m pytest -m gpu

## Run every stage on tiny inputs with configs/tiny (a quick end-to-end check)
smoke: setup
	FOURD_TRACKING=off $(BIN)/python -m stages.preprocess --config configs/tiny/preprocess.yaml \
		--input examples/fox/video.mp4 --output out/smoke/preprocess --subject fox
	test ! -x $(RENDER_VENV)/bin/python || FOURD_TRACKING=off $(RENDER_VENV)/bin/python -m stages.render \
		--config configs/tiny/render.yaml --input examples/fox/Fox.glb --clip Survey --output out/smoke/render --subject fox

## Format and autofix with ruff
style: setup
	$(BIN)/ruff format stages flows tests benchmarks
	$(BIN)/ruff check --fix stages flows tests benchmarks

## Lint, format check and repository consistency
quality: setup
	$(BIN)/ruff check stages flows tests benchmarks
	$(BIN)/ruff format --check stages flows tests benchmarks
	$(BIN)/python -m pytest -q tests/test_repo_consistency.py

## Check stages ↔ configs ↔ READMEs ↔ dvc.yaml ↔ STAGE_ORDER
consistency: setup
	$(BIN)/python -m pytest -q tests/test_repo_consistency.py

# Prefect (flows/fourd.py, prefect.yaml): the server's SQLite database and settings live in .prefect/.
PREFECT_PORT ?= 4200
PREFECT_ENV := PREFECT_HOME=$(abspath .prefect) PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api
FLOW_ARGS ?= --subject fox

## Run the Prefect flow once (FLOW_ARGS='--video clip.mp4 --prompt "…"' or '--subject fox --config-set demo')
flow: setup
	$(BIN)/python -m flows $(FLOW_ARGS)

## Start the Prefect server in the background on 127.0.0.1:4200 (PREFECT_PORT; SQLite in .prefect/), wait for it
prefect-server: setup
	PREFECT_HOME=$(abspath .prefect) $(BIN)/prefect server start --background --host 127.0.0.1 --port $(PREFECT_PORT)
	@for i in $$(seq 360); do \
		$(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
			http://127.0.0.1:$(PREFECT_PORT)/api/health 2>/dev/null && exit 0; sleep 0.5; done; \
		echo "prefect-server: no answer on 127.0.0.1:$(PREFECT_PORT) after 3 minutes (make prefect-stop)" >&2; exit 1

## Stop the background Prefect server
prefect-stop: setup
	PREFECT_HOME=$(abspath .prefect) $(BIN)/prefect server stop

## Create the work pools and the `gpu` concurrency limit (one per GPU), then deploy prefect.yaml (needs prefect-server)
prefect-setup: setup
	$(PREFECT_ENV) $(BIN)/prefect work-pool create fourd-process --type process --overwrite
	$(PREFECT_ENV) $(BIN)/prefect concurrency-limit create gpu $$($(BIN)/python -m flows.gpus --count)
	$(PREFECT_ENV) $(BIN)/prefect --no-prompt deploy --name local --name docker
	@if $(BIN)/python -c "import prefect_kubernetes" 2>/dev/null; then \
		$(PREFECT_ENV) $(BIN)/prefect work-pool create fourd-k8s-gpu --type kubernetes --overwrite \
			--base-job-template flows/k8s-gpu-job-template.json && \
		$(PREFECT_ENV) $(BIN)/prefect --no-prompt deploy --name k8s-gpu; \
	else echo "prefect-setup: no prefect-kubernetes, so no fourd-k8s-gpu pool (prefect.yaml says how)"; fi

## Start a process worker for fourd-process in the foreground (stop with Ctrl-C: it ignores SIGTERM)
prefect-worker: setup
	$(PREFECT_ENV) $(BIN)/prefect worker start --pool fourd-process --limit 2

## Run deployment fourd/local on VIDEO=/abs/clip.mp4 (PROMPT, CONFIG_SET=auto|default|demo) or SUBJECT=fox; on failure print why
VIDEO ?=
SUBJECT ?=
PROMPT ?=
CONFIG_SET ?= auto
prefect-run: setup
	$(PREFECT_ENV) $(BIN)/prefect deployment run fourd/local --watch -p 'config_set="$(CONFIG_SET)"' \
		$(if $(VIDEO),-p video=$(abspath $(VIDEO))) $(if $(SUBJECT),-p 'subject="$(SUBJECT)"') \
		$(if $(PROMPT),-p 'prompt="$(PROMPT)"') \
		|| { $(PREFECT_ENV) $(BIN)/python -m flows --why; exit 1; }

## Print what a shell needs for the README's `prefect` commands: eval "$(make -s prefect-env)" (settings, .venv/bin)
prefect-env:
	@echo "export $(PREFECT_ENV) PATH=$(abspath $(BIN)):\$$PATH"

## Build the stage images fourd/<stage>:0.1.0 (DOCKER_STAGES, DOCKER_BUILD_ARGS: docker/README.md); they record this commit
DOCKER_STAGES ?= preprocess eval render mvgen distill
DOCKER_BUILD_ARGS ?=
CODE_VERSION = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)
docker-images:
	for s in $(DOCKER_STAGES); do \
		docker build --build-arg FOURD_CODE_VERSION=$(CODE_VERSION) $(DOCKER_BUILD_ARGS) \
			-f docker/Dockerfile.$$s -t fourd/$$s:0.1.0 . || exit 1; done

## Opt-in: build the preprocess image from local wheels and run its stage through the flow (docker/wheels/README.md)
test-docker: setup
	RUN_DOCKER_TESTS=1 $(BIN)/python -m pytest -m docker tests/flows -p no:cacheprovider

## Start the MLflow UI on the project's store ./mlflow.db, on the runs of experiment fourd (http://127.0.0.1:5000)
mlflow-ui: setup
	@echo "mlflow-ui: runs of experiment fourd at $$(MLFLOW_TRACKING_URI=sqlite:///$(abspath mlflow.db) \
		$(BIN)/python -m flows.tracking --ui-url http://127.0.0.1:5000)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(abspath mlflow.db)

## Remove the venv, caches and scratch outputs (not data/ or weights/)
clean:
	rm -rf $(VENV) $(RENDER_VENV) .pytest_cache .ruff_cache out

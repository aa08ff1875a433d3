# The README's two commands: `make serve` (set up, train if needed, export, serve)
# and `make test` (set up, lint, tests). .ci/run calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= best
DEVICE ?= auto
# make wheelhouse: the serve extra's wheels for a GPU server without a package index (docs/gpu.md)
PYTHON_VERSION ?= 3.12
EXTRA ?= serve
# The wheel platform tags the target accepts, newest first (pip does not widen manylinux_2_28 to older glibcs).
PLATFORM ?= manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux2014_x86_64 linux_x86_64
WHEELHOUSE ?= wheelhouse

.PHONY: help setup data train export serve test lint bench bench-load bench-batch peers keys telemetry-cost reliability \
	bento-check bento-profiles reliability-tests soak fuzz clean test-fast test-lab test-bench test-timing inputs \
	robustness tilt-choice tilt-choice-full calibration ood scale-out wheelhouse protos grpc-vs-rest costs route-profile

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the project (quick when done already)

data: setup ## Make sure verified Fashion-MNIST is on this machine
	@$(PY) -m fashion ensure-data --no-download 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's dataset-fashion-mnist..."; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true; \
	  fi; \
	  $(PY) -m fashion ensure-data; }

train: data ## Train the $(PRESET) preset in both frameworks unless a finished run exists
	$(PY) -m training --framework both --preset $(PRESET) --if-missing

export: train ## Export the latest $(PRESET) runs (ONNX, SavedModel, state dict), verify, register in BentoML
	$(PY) -m export --framework both --preset $(PRESET) --if-missing

serve: export ## Set up, train if needed, export, serve on localhost:3000
	@echo
	@echo "Serving on http://localhost:3000 (web page at /ui/, OpenAPI page at /). Try it:"
	@echo "  curl -F images=@fashion/samples/9-ankle-boot-test0.png http://localhost:3000/classify"
	@echo
	$(VENV)/bin/bentoml serve service.service:FashionClassifier --host 127.0.0.1 --port 3000

lint: setup ## ruff
	$(PY) -m ruff check .

test: data ## Set up, lint, run the test suite (what CI runs)
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: setup ## Unit tests only (no data, no models, no server): under a minute
	$(PY) -m pytest -m unit tests/unit

test-lab: data ## Only the tests of the lab (benchmark/) and of the docs (pytest -m lab)
	$(PY) -m pytest -m lab

test-bench: data ## The benchmark runs among the tests (quick benchmark, peers smoke; pytest -m benchmark), left out of make test
	$(PY) -m pytest -m benchmark

bento-check: export ## Build each Bento profile (full, onnx), serve it from a fresh venv of only its requirements, check it (results/bento-check.txt)
	$(PY) -m tests.bento_check

bento-profiles: export ## The profiles side by side: environment size, worker memory, time to ready, default route -> results/bento-profiles-<machine>.md (needs wrk)
	$(PY) -m benchmark.profiles

inputs: export ## Accuracy on transformed test photos via HTTP, both framings -> results/inputs.md (~15 min)
	$(PY) -m benchmark.quality.inputs --limit 1000

calibration: export ## ECE before/after temperature scaling per exported model -> results/calibration.md
	$(PY) -m benchmark.quality.calibration

robustness: export ## MNIST-C corruptions, delivery and capture variants via HTTP, both frameworks -> results/robustness.md
	$(PY) -m benchmark.quality.robustness --limit 1000

tilt-choice: data ## Tilt: deskew against training both frameworks on turned images (short runs) -> results/tilt-choice.md
	OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 $(PY) -m benchmark.quality.tilt_choice --epochs 6 --train-limit 12000 --turns 25:25:0.5 10:10:0.5

tilt-choice-full: data ## The same study at the preset's own length (all epochs, all training images) -> results/tilt-choice-full.md
	$(PY) -m benchmark.quality.tilt_choice --epochs 50 --turns 25:25:0.5 25:25:0.2 25:25:0.5:10 --name tilt-choice-full

ood: export ## "Not clothing": AUROC/FPR on packaged OOD images via HTTP -> results/ood.md
	$(PY) -m benchmark.quality.ood

test-timing: data ## Time each test tier once -> results/test-suite.md
	$(PY) -m tests.timing

bench-load: data ## Time loading + verifying all 70,000 images -> results/data-load.txt
	$(PY) -m fashion bench-load

bench: export ## Side-by-side benchmark of every backend -> results/benchmark-<machine>.md (needs wrk; DEVICE=cuda on a GPU)
	$(PY) -m benchmark --device $(DEVICE)

peers: export ## Side by side with BentoML, LitServe, Ray Serve, MLServer, KServe, bare app; perf_analyzer -> results/peers-<machine>.md (needs wrk; venvs cached)
	$(PY) -m benchmark.peers

costs: export ## The work around the model, in process: "not clothing" score per batch, a /classify upload before/after -> results/{ood,upload}-cost-<machine>.md
	$(PY) -m benchmark.work_cost ood
	$(PY) -m benchmark.work_cost upload

bench-batch: export ## Batch throughput over 1M images vs bare session.run -> results/batch-bench-<machine>.md
	$(PY) -m benchmark.batch

scale-out: export ## PostgreSQL tuning + haproxy replica tests (the engines a cluster runs, started here)
	$(PY) -m pytest tests/integration/test_tune_postgres.py tests/e2e/test_scale_out.py

keys: export ## API keys: cost with and without keys against the last commit before them, and one key's flood beside another key -> results/keys-{cost,isolation}-<machine>.md (needs wrk)
	$(PY) -m benchmark.keys cost
	$(PY) -m benchmark.keys isolation --reps 7  # a p99 ratio: three repetitions proved too few to settle it

telemetry-cost: export ## Request telemetry and OTLP tracing: cost against the last commit before them -> results/telemetry-cost-<machine>.md (needs wrk)
	$(PY) -m benchmark.telemetry_cost

reliability: export ## Overload (30 s flood), SIGTERM, SIGKILL, hostile clients -> results/reliability.md (needs wrk)
	$(PY) -m benchmark.reliability

reliability-tests: export ## The same scenarios at full length as tests (pytest -m long)
	$(PY) -m pytest -m long tests/e2e/test_reliability.py

soak: export ## 30 minutes at 70% of measured capacity -> results/reliability.md (not in CI)
	$(PY) -m benchmark.reliability soak

fuzz: setup ## Coverage-guided fuzzing of the image decoder for 5 minutes (atheris)
	$(PY) -m tests.fuzz_imaging -max_total_time=300

wheelhouse: ## Wheels of the project and its EXTRA (default serve) for PYTHON_VERSION/PLATFORM (default: cp312, manylinux x86-64) -> $(WHEELHOUSE)/
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE) .
	$(PY) -m pip download -q -d $(WHEELHOUSE) --only-binary=:all: --implementation cp \
	  --python-version $(PYTHON_VERSION) $(foreach tag,$(PLATFORM),--platform $(tag)) \
	  "$$(ls $(WHEELHOUSE)/fashion_serve-*.whl)[$(EXTRA)]"
	@echo "Offline, on the target: pip install --no-index --find-links $(WHEELHOUSE) 'fashion-serve[$(EXTRA)]'"

clean: ## Remove the venv and caches (keeps runs/ and data/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

protos: ## Regenerate the gRPC stubs (service/protocol/*_pb2*.py) from open_inference.proto with grpcio-tools
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. service/protocol/open_inference.proto

route-profile: export ## Where a v2 request's time goes in the worker (py-spy under wrk), before and after the inference lane -> results/route-profile-<machine>.md (needs wrk)
	$(PY) -m benchmark.route_profile

grpc-vs-rest: export ## gRPC beside REST on one worker, perf_analyzer for both -> results/grpc-vs-rest-<machine>.md
	$(PY) -m benchmark.grpc_vs_rest

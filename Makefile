# Each target sets itself up: a .venv is made on first use and refreshed when
# pyproject.toml changes; a second run skips the install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-dask test-dask-oldest demo chromium dashboard-screenshot bench bench-protocol bench-e2e bench-transfer bench-memory bench-collections bench-gpu lint check-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-lint: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	touch $@

$(VENV)/.installed-gpu: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,gpu]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

$(VENV)/.installed-deploy: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,deploy]'
	touch $@

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A selection of dask's own test suite, on a shoal LocalCluster and on dask's local
# scheduler, with pass/fail counts side by side (tests/dask_suite/run.py). Long:
# most of an hour on 2 cores.
test-dask: $(VENV)/.installed-test
	$(BIN)/python -m tests.dask_suite.run $(DASK_SUITE_ARGS)

# The oldest dask shoal supports, in a venv of its own: shoal's dask tests, then
# the dask suite's fast subset (as in `make test`).
DASK_OLDEST := 2025.1.0
OLDEST := .venv-dask-oldest
$(OLDEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e '.[test]' 'dask[array,bag,dataframe,delayed]==$(DASK_OLDEST)' 'pandas==2.2.3'
	touch $@

test-dask-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q tests/test_dask_translate.py tests/test_dask_collections.py tests/test_dask_suite.py $(PYTEST_ARGS)

# Debian's Chromium for tests/test_dashboard_browser.py (.ci/run calls it too).
chromium:
	bash .ci/chromium.sh

# The README's picture of the dashboard: the browser test saves it while a graph runs.
dashboard-screenshot: $(VENV)/.installed-test chromium
	SHOAL_DASHBOARD_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest -q tests/test_dashboard_browser.py

demo: $(VENV)/.installed-test
	$(BIN)/shoal demo

bench-protocol: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.protocol $(BENCH_ARGS)

bench-e2e: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.e2e $(BENCH_ARGS)

bench-transfer: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.transfer $(BENCH_ARGS)

bench-memory: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.memory $(BENCH_ARGS)

# GPU nodes (benchmarks/gpu.py): overhead per task of a cupy matmul graph, and device
# to device moves against a raw copy. Needs an NVIDIA GPU; elsewhere it says so and fails.
bench-gpu: $(VENV)/.installed-gpu
	$(BIN)/python -m benchmarks.gpu $(BENCH_ARGS)

bench-collections: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.collections_bench $(BENCH_ARGS)

# Every side-by-side workload (e2e, transfer, memory, collections) in one table;
# --out FILE writes JSON.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

# ruff over everything; mypy over shoal/ (configured in pyproject.toml).
lint: $(VENV)/.installed-lint
	$(BIN)/ruff check shoal tests benchmarks
	$(BIN)/ruff format --check shoal tests benchmarks
	$(BIN)/mypy

# The Dockerfile (hadolint) and the Helm chart (helm lint --strict, manifests
# rendered for a matrix of values and validated for the two newest Kubernetes
# versions, assertions on them, and a smoke test that runs the rendered
# commands on loopback). The tools are installed first; the checks then run
# with no network but loopback (a network namespace), to show they need none.
check-deploy: $(VENV)/.installed-deploy
	.ci/offline $(BIN)/hadolint --failure-threshold style Dockerfile
	.ci/offline $(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info .pytest_cache .hypothesis

# Each target sets itself up: a .venv is made on first use and refreshed when
# pyproject.toml changes; a second run skips the install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo bench bench-protocol bench-e2e bench-transfer bench-memory lint check-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-lint: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[lint]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

$(VENV)/.installed-deploy: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,deploy]'
	touch $@

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

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

# Every side-by-side workload (e2e, transfer, memory) in one table; --out FILE writes JSON.
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
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

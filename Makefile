# Two commands on a fresh machine: `make serve` and `make test`. Both create .venv when missing.
# `make serve` installs the runtime dependencies only; `make test` (and lint) add the test tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

LINTED := gateway tests $(wildcard benchmarks/*.py)

.PHONY: serve test lint bench clean venv

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

venv: $(STAMP)

serve: $(RUNTIME)
	$(BIN)/llm-gateway serve $(ARGS)

test: lint
	bin/ensure-test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# The whole run takes about 10 minutes; ARGS="--quick" for a smoke run, ARGS="--only idle" for one.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis var

# The two commands of the README are `make demo` and `make test`; each creates or updates .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format schemas schemas-check bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

## The main job: a real small dataset, an AutoML search, the best model exported.
demo: $(STAMP)
	$(PY) -m automl.demo --out demo_results

## Everything that must pass: lint, the schema check, the whole test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check mae automl tests benchmarks
	$(PY) -m mae.schemas --check
	$(PY) -m pytest -q

## The fast subset for the development loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check mae automl tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format mae automl tests benchmarks
	$(VENV)/bin/ruff check --fix mae automl tests benchmarks

## Regenerate schemas/ from mae/config.py (commit the result).
schemas: $(STAMP)
	$(PY) -m mae.schemas

schemas-check: $(STAMP)
	$(PY) -m mae.schemas --check

clean:
	rm -rf demo_results .pytest_cache

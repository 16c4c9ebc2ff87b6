# The two commands of the README are `make demo` and `make test`; each creates or updates .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format schemas schemas-check bench clean lock venv

LOCK := constraints.txt
LOCK_PYTHON := 3.11

# The lock pins every package to the versions the last `make test` passed on; it was written on Python
# $(LOCK_PYTHON), whose wheels other Pythons may lack, so they install from pyproject.toml's ranges (and say so).
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$(LOCK_PYTHON)" ]; then \
		echo "$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'"; \
		$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'; \
	else \
		echo "note: $(LOCK) is for Python $(LOCK_PYTHON); installing the newest versions pyproject.toml allows"; \
		$(PY) -m pip install --quiet -e '.[dev]'; \
	fi
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

## Rewrite constraints.txt from .venv (after changing dependencies and a passing `make test`).
lock: $(STAMP)
	@{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --exclude-editable; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@echo "$(LOCK): $$(grep -vc '^#' $(LOCK)) packages pinned"

clean:
	rm -rf demo_results .pytest_cache

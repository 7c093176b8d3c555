# `make test` and `make demo` each set up .venv on first use (CPU torch from the local wheel, then the package).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test test-all demo setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: setup  ## the default suite (slow tests excluded; see README)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: setup  ## everything, slow tests included
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup  ## the main job (see README)
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache

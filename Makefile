# Two commands do all the set-up: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo lint test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)  ## create the virtual environment and install the package

demo: setup  ## run the embedded demo end to end (train, validate, checkpoint, summary)
	$(PY) -m synthrel_lightning demo

lint: setup  ## ruff lint and format check (line length 120, configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint  ## lint, then run the whole (offline, CPU) test suite, the slow tests included
	$(PY) -m pytest -q -p no:cacheprovider

test-all: setup  ## run every test (the same selection as `test`, without the lint)
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

clean:
	rm -rf $(VENV) outputs lightning_logs

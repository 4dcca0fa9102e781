# Two commands do all the set-up: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo lint docs test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs]"
	touch $(STAMP)

setup: $(STAMP)  ## create the virtual environment and install the package

demo: setup  ## run the embedded demo end to end (train, validate, checkpoint, summary)
	$(PY) -m synthrel_lightning demo

lint: setup  ## ruff lint and format check, then the mypy type check of the package (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

SITE ?= site

docs: setup  ## build the documentation site strictly (any warning fails) into $(SITE)/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d $(SITE)

test: lint docs  ## lint, build the documentation strictly, then run the whole (offline, CPU) test suite, the slow tests included
	$(PY) -m pytest -q -p no:cacheprovider

test-all: setup  ## run every test (the same selection as `test`, without the lint)
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

clean:
	rm -rf $(VENV) outputs lightning_logs $(SITE)

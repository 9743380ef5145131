# make test: create .venv if missing, install vglaw with its dev, demo and export extras, run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-all bench demo serve

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo,export]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

bench: install
	$(PY) benchmarks/bench.py

demo: install
	$(PY) -m vglaw demo

serve: install
	$(PY) -m vglaw serve

# `make test` is the one test command: the README gives it and .ci/run runs it.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench serve clean

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: install
	$(PY) -m bench

serve: install
	$(VENV)/bin/chatsession serve

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

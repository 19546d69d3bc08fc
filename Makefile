# `make test` is the one test command: the README gives it and .ci/run runs it.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench serve clean

# llama-cpp-python has no binary wheel: installing it compiles llama.cpp (about 4 minutes
# on 2 cores). Built portable (AVX2) rather than for this very CPU: a native build uses AMX
# where the CPU has it, and crashes under hypervisors that do not allow AMX. --no-cache-dir
# keeps pip from reusing a wheel built earlier with other flags.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir \
		'llama-cpp-python[server]>=0.3'
	$(PY) -m pip install --quiet -e '.[dev,local,openai]'
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

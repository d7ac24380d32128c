# Two commands from nothing: `make demo` and `make test`. Each creates the venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint bench check-upstream clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,cli]'
	touch $(STAMP)

# Short end-to-end steering run: Stanley, MLP before/after, plots (2 cores: 4.5 min from an empty kernel cache, 3 warm).
demo: $(STAMP)
	$(VENV)/bin/genesis-grad demo --out out/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q tests

# The documentation pages (docs/, mkdocs.yml), strict: a broken link or a page missing from the nav fails.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check genesis_grad_patch genesis_grad tests benchmarks examples
	$(VENV)/bin/ruff format --check genesis_grad_patch genesis_grad tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# The regression suite against Genesis patched with patches/*.patch, the plugin disabled (see CONTRIBUTING.md).
check-upstream: $(STAMP)
	PYTHON=$(abspath $(PY)) scripts/check_upstream_patch.sh

clean:
	rm -rf $(VENV)

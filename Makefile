# Two commands on a fresh machine: `make demo` and `make test`. Each creates the
# virtual environment when needed (only Python 3.11+ and pip are assumed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast bench golden clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bortsearch needs Python 3.11+, found " + sys.version.split()[0] + "; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bortsearch space search_spaces/demo.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/bench.py

# Regenerates the committed transformers golden files (needs torch; not used by CI).
golden:
	$(PYTHON) -m venv .golden-venv
	.golden-venv/bin/python -m pip install --quiet -e '.[golden]'
	.golden-venv/bin/python tests/golden/make_golden.py

clean:
	rm -rf $(VENV) .golden-venv build *.egg-info .pytest_cache

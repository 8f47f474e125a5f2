# Set-up and the two README commands. `make demo` runs the main job, `make test` the whole test suite.
# Both create .venv and install the CPU build of torch first (override TORCH for another build).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml) $(wildcard examples/*/pyproject.toml))

.PHONY: setup demo test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) $(wildcard examples/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]" $(foreach p,$(PLUGINS),-e $(p))
	touch $@

demo: setup
	$(BIN)/attnreg list
	$(BIN)/attnreg show longt5-tglobal --length 40 --local-radius 3 --global-block-size 8 --pad 6
	$(BIN)/attnreg bench longt5-tglobal

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

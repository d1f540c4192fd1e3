# The two quick-start commands, and the chores around them.
#   make up    install into .venv and run the whole mesh (embedded Postgres unless
#              GOVMESH_DATABASE_URL is set); the engine listens on 127.0.0.1:50051
#   make test  install with the development tools and run the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test lint protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

up: $(VENV)/.installed
	$(BIN)/govmesh up

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

protos: $(VENV)/.installed-dev
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make run`: create .venv, install Semantik (CPU torch), start everything on one box.
# `make test`: the full suite, lint and types (tox).
PYTHON ?= python3
VENV ?= .venv
# Extra pip options for torch, e.g. PyTorch's CPU wheel index on a machine without the CPU wheel at hand.
TORCH_PIP_ARGS ?=

.PHONY: run install test lint

run: install
	$(VENV)/bin/semantik up

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(VENV)/bin/pip install -q -e '.[test,lint,bench]'
	touch $@

test:
	tox

lint: install
	$(VENV)/bin/ruff check semantik workers tests bench
	$(VENV)/bin/ruff format --check semantik workers tests bench
	$(VENV)/bin/mypy

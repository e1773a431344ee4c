# `make run`: create .venv, install Semantik (CPU torch), start everything on one box.
# `make test`: on a fresh machine too: tox in .tox-venv, redis-server and chromium (apt-get),
#   then the full suite, lint and types (tox). Extra tox arguments: make test TOX_ARGS="-e py311 -- -k foo"
PYTHON ?= python3
VENV ?= .venv
# Extra pip options for torch, e.g. PyTorch's CPU wheel index on a machine without the CPU wheel at hand.
TORCH_PIP_ARGS ?=
TOX_VENV ?= .tox-venv
TOX_ARGS ?=

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

test: $(TOX_VENV)/bin/tox
	sh scripts/test-deps.sh
	$(TOX_VENV)/bin/tox $(TOX_ARGS)

$(TOX_VENV)/bin/tox:
	$(PYTHON) -m venv $(TOX_VENV)
	$(TOX_VENV)/bin/pip install -q 'tox>=4.11'

lint: install
	$(VENV)/bin/ruff check semantik workers tests bench
	$(VENV)/bin/ruff format --check semantik workers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

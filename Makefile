# Two commands on a fresh machine with Python 3.11+:
#   make train   # set up .venv, train the default config, print test accuracy, save a checkpoint
#   make test    # set up .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= experiments/configs/default.py
ARGS   ?=

.PHONY: setup train test clean

$(BIN)/mnist-flax: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/mnist-flax

train: setup
	$(BIN)/mnist-flax train --config $(CONFIG) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

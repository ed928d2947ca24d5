# Two commands on a fresh machine with Python 3.11+:
#   make train   # set up .venv, train the default config, print test accuracy, save a checkpoint
#   make test    # set up the test environments (nox) and run the test suite in both
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= default
ARGS   ?=
# nox finds its interpreters (python3.11, python3.13) on PATH; pyenv keeps them in versions/*/bin.
PYENV_BINS := $(shell for d in $$(pyenv root 2>/dev/null)/versions/3.1[1-3]*/bin; do [ -d "$$d" ] && printf '%s:' "$$d"; done)

.PHONY: setup train test test-envs test-fast test-colab clean

$(BIN)/mnist-flax: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,dev]' nox
	touch $@

setup: $(BIN)/mnist-flax

# The test environments are nox's own venvs: .venv needs only nox for them.
$(BIN)/nox:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet nox

train: setup
	$(BIN)/mnist-flax train --config $(CONFIG) $(ARGS)

# Both environments of noxfile.py, side by side: the whole suite on Python 3.11 (with
# TensorFlow), the TensorFlow-free tests on Python 3.13 with a Colab TPU runtime's versions. On
# 2 cores they overlap well (much of a test is one thread: imports, XLA compilation, a child
# process starting), and their files never meet (each test writes under its own tmp_path,
# servers take a free port). The colab session's output follows the tests session's.
test: $(BIN)/nox
	@mkdir -p .nox
	PATH="$(PYENV_BINS)$$PATH" $(BIN)/nox -s colab -- $(ARGS) > .nox/colab.log 2>&1 & colab=$$!; \
	PATH="$(PYENV_BINS)$$PATH" $(BIN)/nox -s tests -- $(ARGS); tests_rc=$$?; \
	wait $$colab; colab_rc=$$?; \
	echo "---- nox -s colab, run alongside (.nox/colab.log):"; cat .nox/colab.log; \
	echo "make test: tests session exit $$tests_rc, colab session exit $$colab_rc"; \
	[ $$tests_rc -eq 0 ] && [ $$colab_rc -eq 0 ]

# The fast tier, for use while editing: the tests marked `fast` (tests/test_fast.py tours every
# module with one 2-step training; the layer rules; the config), under a minute on the 2-core
# CPU. Runs with .venv's pytest (make setup first) or PYTEST="/path/to/python -m pytest";
# `make test` stays what CI runs.
PYTEST ?= $(BIN)/python -m pytest
test-fast:
	$(PYTEST) -q -m fast -p no:cacheprovider $(ARGS)

# The nox environments alone (created and installed, no test run): CI builds them while it
# installs Chromium.
test-envs: $(BIN)/nox
	PATH="$(PYENV_BINS)$$PATH" $(BIN)/nox --install-only

test-colab: $(BIN)/nox
	PATH="$(PYENV_BINS)$$PATH" $(BIN)/nox -s colab -- $(ARGS)

clean:
	rm -rf $(VENV) .nox .pytest_cache

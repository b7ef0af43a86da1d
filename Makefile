# `make test` and `make demo` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, so no other requirement pulls a different build (CPU wheel here, CUDA elsewhere).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast demo clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The reference implementation, for parity tests and benchmarks; its own pins would replace torch.
	$(BIN)/python -m pip install --quiet --no-deps transcriptformer==0.6.1
	touch $@

setup: $(STAMP)

# one test process per core (pytest-xdist); each gets its share of the threads (tests/conftest.py)
PYTEST := $(BIN)/python -m pytest -q -n logical --dist worksteal

test: $(STAMP)
	$(PYTEST)

# the everyday loop: everything but the tests marked slow (multi-process, end-to-end, TF-sized builds,
# a tfx command started in a new process)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

demo: $(STAMP)
	$(BIN)/tfx quickstart --output quickstart

clean:
	rm -rf $(VENV) quickstart

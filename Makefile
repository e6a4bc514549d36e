# microtrain: `make demo` and `make test` are the whole quick start on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CSRC   := $(wildcard cext/*.c cext/*.h cext/include/*.h) cext/build_chip.py cext/build_framing.py

.PHONY: setup lint test test-fast demo bench clean

$(STAMP): pyproject.toml setup.py $(CSRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install --quiet -e '.[test,federated]'
	touch $@

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -x

demo: setup
	$(BIN)/microtrain demo

bench: setup
	$(BIN)/microtrain bench gemm

clean:
	rm -rf $(VENV) build *.egg-info device_model/_chip*.so device_model/_chip.c \
	       protocol/_framing_c*.so protocol/_framing_c.c

# Two entry points for a fresh machine: `make demo` (tune the embedded engine) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-warn-script-location -e '.[transformers]'

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-warn-script-location -e '.[transformers,serve,dev]'

demo: install
	$(BIN)/harness tune examples/quickstart.yaml

test: install-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs

# Every target builds .venv from pyproject.toml when it is missing, so a fresh clone needs nothing else.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine override it, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test lint demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

test: lint
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV)

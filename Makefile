PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo clean

# torch is pinned first so pip takes the CPU build on this kind of machine instead of a
# multi-GB CUDA build; any torch >= 2.2 works with the package itself. Override for a GPU, e.g.
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,sweep]"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest

demo: install
	$(BIN)/python -m micro.cli.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

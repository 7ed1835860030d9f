# `make demo` and `make test` work on a fresh machine: they build (or reuse) the virtual
# environment, cached under ~/.cache/convlens by the hash of the requirement files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: venv demo test lint typecheck unit bench clean

venv:
	$(PYTHON) tools/venv.py

demo: venv
	$(BIN)/convlens demo --out $(OUT)

lint: venv
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache

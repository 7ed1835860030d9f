# `make demo` and `make test` work on a fresh machine: they build (or reuse) the virtual
# environment, cached under ~/.cache/convlens by the hash of the requirement files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: venv browser demo test lint typecheck unit bench clean

venv:
	$(PYTHON) tools/venv.py

# The browser tests drive Debian's chromium through Playwright (never `playwright install`).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	  else \
	    echo "the browser tests need chromium: sudo apt-get install chromium"; exit 1; \
	  fi; \
	fi

demo: venv
	$(BIN)/convlens demo --out $(OUT)
	$(BIN)/convlens serve

lint: venv
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/ruff format --check src tests tools benchmarks

typecheck: venv
	$(BIN)/mypy

unit: venv browser
	$(BIN)/python -m pytest -q

test: lint typecheck unit

bench: venv
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache

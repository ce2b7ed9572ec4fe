# The two commands in the README are the contract: `make run` and `make test`
# each do every set-up step from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export QT_QPA_PLATFORM ?= $(if $(DISPLAY)$(WAYLAND_DISPLAY),,offscreen)

.PHONY: setup run test lint typecheck unit bench package lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## run: open the desktop app on the embedded SQLite store (demo traffic when nothing is configured)
run: setup
	$(BIN)/controlroom ui --demo-if-empty $(ARGS)

## test: layers, lint, types, then the whole test suite (slow tests included)
test: setup lint typecheck
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check app storage tests

typecheck: setup
	$(BIN)/mypy app/core storage

## unit: the headless logic only, fast
unit: setup
	$(PY) -m pytest -m "not gui and not slow" -q

## bench: the figures of product.md, measured against baselines in the same run
bench: setup
	$(PY) -m pytest tests/bench -p no:randomly -s -q -o addopts="" -o timeout=1800 $(PYTEST_ARGS)

## package: a PyInstaller onedir bundle and a .deb, under dist/
package: setup
	bash packaging/build.sh

## lock: refresh requirements.lock from the current venv (review the diff)
lock:
	$(PY) -m pip freeze --exclude-editable --exclude controlroom | grep -v '^-e ' > requirements.lock

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache

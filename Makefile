# Two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
# Setup is idempotent: .venv is created once and reinstalled only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned first: a looser requirement elsewhere would pull a multi-GB CUDA build.
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check -c .ci/constraints.txt

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m prefetch demo --out out/demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf out .pytest_cache

# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench study results notebooks install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,crf,figures]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ugcn demo

# The suite on TEST_WORKERS processes (pytest-xdist): XLA compiles on one thread, so one process leaves a core idle.
# --dist loadfile keeps each file on one worker, so module- and session-scoped fixtures (trained models, compiled
# programs) are built once per file, not once per worker. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Static checks (configured in pyproject.toml): ruff (style, imports, likely bugs) and mypy (types).
lint: $(STAMP)
	$(BIN)/ruff check ugcn tests benchmarks notebooks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py $(if $(SIZE),--size $(SIZE))

# The regime study of method R: where refinement helps and where it makes a segmentation worse (SIZE=full: larger).
study: $(STAMP)
	$(BIN)/python benchmarks/study_refine.py $(if $(SIZE),--size $(SIZE))

# Rewrites the README's results section from benchmarks/results/*.json and ugcn-demo/ (run after bench, demo).
results: $(STAMP)
	$(BIN)/python benchmarks/readme_results.py

notebooks: $(STAMP)
	$(BIN)/python notebooks/build_notebooks.py

clean:
	rm -rf $(VENV) build *.egg-info

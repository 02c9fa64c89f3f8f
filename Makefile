# The whole user journey: `make demo` (set up, run the quickstart sweep, analyse it) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fgray-installed
RESULTS ?= fgray-results
REPORT  ?= reports/quickstart

.PHONY: setup demo test test-fast lint format bench gpu-check mutants clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/fgray sweep sweeps/quickstart.yaml --overwrite --verbose 0
	$(BIN)/fgray analyze $(RESULTS)/quickstart --out $(REPORT) --by model,method

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: setup
	$(BIN)/ruff check fgray tests benchmarks mutants
	$(BIN)/ruff format --check fgray tests benchmarks mutants

format: setup
	$(BIN)/ruff format fgray tests benchmarks mutants
	$(BIN)/ruff check --fix fgray tests benchmarks mutants

bench: setup
	$(BIN)/python -m benchmarks.run --big --write BENCHMARKS.md

# On a machine with a CUDA GPU: every model and method on cuda against cpu, eager and compiled,
# throughput and a fractional-GPU sweep, into BENCHMARKS.md; exit 2 without a GPU.
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check --write BENCHMARKS.md

# Curated deliberate bugs (mutants/catalogue.py), each applied to a scratch copy and checked
# against the tests that should catch it; not part of `make test` (it takes a while).
mutants: setup
	$(BIN)/python -m mutants

clean:
	rm -rf $(RESULTS) reports .pytest_cache .ruff_cache

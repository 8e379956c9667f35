# One entry point for people and CI. `make demo` trains on built-in data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast parity-report mutation bench-quick gpu-parity gpu-bench gpu-import clean

# Pinned versions (constraints.txt) keep CI repeatable; pyproject.toml keeps ranges for users.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[torch,export,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/unet-jax train --preset demo

test: install
	$(PY) -m pytest -q --durations=10

# Unit tests only (tests/unit, not slow): no process started, no end-to-end run.
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests/unit

parity-report: install
	$(PY) -m parity_tests.run_report --out parity_tests/results/cpu

# Deliberate bugs in both models, the port, the losses and the crops, and precision bugs, each
# run against its tests (~12 min on 2 cores; not part of `make test`). Report:
# parity_tests/results/mutation/. A subset: make mutation MUTATION_ARGS=--precision (or --only NAME ...).
MUTATION_ARGS ?=
mutation: install
	$(PY) -m parity_tests.mutation_check $(MUTATION_ARGS)

bench-quick: install
	$(PY) -m benchmarks.run --quick --out benchmarks/results/cpu-quick

# On a GPU machine (no install: its python3 has the packages); see scripts/gpu_check.sh.
gpu-parity:
	bash scripts/gpu_check.sh parity

gpu-bench:
	bash scripts/gpu_check.sh bench

# Here, after a GPU call: copy what it brought back into parity_tests/results/<device>/ or
# benchmarks/results/<device>/ (FROM= the folder the device tool put the files in).
gpu-import:
	bash scripts/gpu_check.sh import "$(FROM)"

clean:
	rm -rf $(VENV) .pytest_cache runs

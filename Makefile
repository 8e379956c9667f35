# One entry point for people and CI. `make demo` trains on built-in data; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-fast parity-report mutation bench-quick gpu-parity gpu-bench gpu-import gpu-try gpu-aot clean

# Pinned versions (constraints.txt) keep CI repeatable; pyproject.toml keeps ranges for users.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[torch,export,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/unet-jax train --preset demo

# Two workers, whole files each (module fixtures stay in one process): on 2 cores the suite's
# single-threaded parts (tracing, XLA compiles, process start-ups) overlap: 899 -> 711-758 s on a
# 2-core Intel Xeon (docs/development.md).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10

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

# Before a device call, here: the GPU machine's versions (docs/gpu-runs.md) in a venv outside the
# repository, and the whole call with small settings (QUICK=1) on this CPU. PyPI's torch 2.11.0 is
# the CUDA 13 build (~3 GB with its nvidia-* wheels); it runs on a CPU too. DEVICE_PYTHON: a 3.12.
DEVICE_PYTHON ?= python3.12
DEVICE_VENV ?= /tmp/venv-device
DEVICE_PACKAGES := jax==0.11.2 jaxlib==0.11.2 flax==0.12.10 optax==0.2.8 torch==2.11.0 numpy==2.5.2 safetensors==0.8.0 \
	orbax-checkpoint scipy tifffile pillow matplotlib tqdm pytest onnx onnxscript onnxruntime

$(DEVICE_VENV)/.installed:
	$(DEVICE_PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install -q $(DEVICE_PACKAGES)
	touch $@

gpu-try: $(DEVICE_VENV)/.installed
	PYTHON=$(DEVICE_VENV)/bin/python OUT=/tmp/gpu-try-dev QUICK=1 bash scripts/gpu_check.sh all

# The JAX train step compiled for an H200 without one (benchmarks/gpu_aot.py), in its own venv:
# the CUDA plugin, on a machine without a GPU, logs an error at every JAX start.
AOT_VENV ?= /tmp/venv-aot
AOT_OUT ?= benchmarks/results/gpu-aot-h200

$(AOT_VENV)/.installed:
	$(DEVICE_PYTHON) -m venv $(AOT_VENV)
	$(AOT_VENV)/bin/python -m pip install -q "jax[cuda13]==0.11.2" flax==0.12.10 optax==0.2.8 orbax-checkpoint \
		numpy==2.5.2 scipy tifffile pillow matplotlib safetensors tqdm
	touch $@

gpu-aot: $(AOT_VENV)/.installed
	PYTHONPATH=. $(AOT_VENV)/bin/python -m benchmarks.gpu_aot --out $(AOT_OUT) \
		--compare benchmarks/results/nvidia-h200-fair/results.json benchmarks/results/nvidia-h200-sweep/results.json

clean:
	rm -rf $(VENV) .pytest_cache runs

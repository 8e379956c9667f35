"""Loaded by pytest before every other conftest.py and test module of this repository, whatever
subset is run (`pytest`, `pytest benchmarks/`, `pytest parity_tests/test_forward.py`, ...).

On a GPU, JAX takes 75% of the card when its backend starts unless told otherwise. Every pytest
process here either holds JAX beside torch (parity_tests, tests) or starts JAX/torch children on
the same GPU while holding JAX itself (benchmarks' quick run, the determinism children), so JAX
must allocate on demand. Set here, before anything can import jax; children inherit it.
Forced rather than defaulted: a shell that asks for preallocation would starve torch the same way.
`parity_tests/test_gpu_run.py` checks that jax is never imported without it.
"""

import os

os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

# Strict JAX, as Equinox's test suite runs: no implicit dtype promotion (a silent float64 or
# weak-type upcast becomes an error) and no implicit rank promotion (a broadcast between arrays
# of different rank must be written out). Environment variables, so that the CLI and benchmark
# children the tests start run under the same rules. The library is written to pass them.
os.environ["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

# The XLA:CPU flags that `unet-jax` sets when it starts (unet_jax/runtime/xla_cpu.py: XLA's own convolutions
# instead of jaxlib 0.10's slower YNNPACK ones), so that the suite checks what the command line
# computes. tests/unit/test_xla_cpu.py runs parity tests under jaxlib's defaults as well.
from unet_jax.runtime import xla_cpu  # noqa: E402  (after the environment above, before any backend starts)

xla_cpu.apply()

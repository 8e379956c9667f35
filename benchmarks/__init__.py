"""Train-step and predict timing harness for the JAX U-Net and its PyTorch reference.

Every variant runs in its own subprocess (`benchmarks.jax_step`, `benchmarks.torch_step`) so
that compile caches, allocator pools and peak-memory counters never leak between variants;
`benchmarks.run` plans, spawns and collects them, `benchmarks.report` writes the tables.
"""

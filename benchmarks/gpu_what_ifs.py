"""benchmarks.gpu_aot's compile-only what-ifs: one change to how the model is traced, none a model option.

Each computes the same function (values and gradients; the max-pool's gradient goes to the first
maximum of its window in row-major order, as PyTorch's does) and changes only the form XLA sees:

- `relu-output-barrier`: the ReLU's saved output behind `lax.optimization_barrier`, so XLA cannot
  recompute it from the convolution's output (since built as `UNet.pin_relu_output`);
- `pool-backward-barrier`: the max-pool's custom backward as it is, its result behind an optimization
  barrier, so that it is its own fusion and not part of the bias gradient's reduction fusion;
- `pool-reduce-window`: the plain JAX max-pool (`flax.linen.max_pool`, a `reduce_window`), whose
  gradient is XLA's select-and-scatter (ties: its `ge` select keeps the window's first maximum);
- `pool-window-reshape`: the custom backward's four masked gradients stacked into
  [N, H/2, 2, W/2, 2, C] and reshaped to [N, H, W, C], instead of four interior-padded pads summed;
- `pool-window-select`: one select on that [N, H/2, 2, W/2, 2, C] layout: each position's gradient is the
  window's `dy` where the position is the window's first maximum (an index 0-3 from the same
  comparisons; 4, no position, where none holds, as with a NaN), an element-wise form without pads.

Every pool form is traced inside `jax.named_scope(POOL_SCOPE)`, so the optimized HLO names the
pool backward's instructions (`transpose(...)/.../max_pool_2x2/...`) wherever XLA fuses them.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unet_jax.model import cpu_kernels
from unet_jax.model import unet as unet_module

WHAT_IFS = ("relu-output-barrier", "pool-backward-barrier", "pool-reduce-window", "pool-window-reshape", "pool-window-select")
POOL_SCOPE = "max_pool_2x2"


def _relu_forward_behind_barrier(x):
    y = cpu_kernels.relu(x)
    return y, lax.optimization_barrier(y)


@jax.custom_vjp
def _pool_backward_barrier(x):
    return cpu_kernels.max_pool_2x2(x)


def _pool_forward(x):
    return cpu_kernels.max_pool_2x2(x), x


def _pool_backward_behind_barrier(x, dy):
    return tuple(lax.optimization_barrier(cpu_kernels.max_pool_2x2.bwd(x, dy)))


_pool_backward_barrier.defvjp(_pool_forward, _pool_backward_behind_barrier)


def _pool_reduce_window(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@jax.custom_vjp
def _pool_window_reshape(x):
    return cpu_kernels.max_pool_2x2(x)


def _window_firsts(x):
    """The first-maximum masks of the four views, taken from x as [N, H/2, 2, W/2, 2, C]."""
    n, h, w, c = x.shape
    windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return cpu_kernels.first_maxima(*(windows[:, :, row, :, col] for row in (0, 1) for col in (0, 1)))


def _pool_backward_window_reshape(x, dy):
    n, h, w, c = x.shape
    zero = jnp.zeros((), dy.dtype)
    grads = [jnp.where(first, dy, zero) for first in _window_firsts(x)]
    stacked = jnp.stack([jnp.stack(grads[:2], axis=3), jnp.stack(grads[2:], axis=3)], axis=2)
    return (stacked.reshape(n, h, w, c),)


_pool_window_reshape.defvjp(_pool_forward, _pool_backward_window_reshape)


@jax.custom_vjp
def _pool_window_select(x):
    return cpu_kernels.max_pool_2x2(x)


def _pool_backward_window_select(x, dy):
    n, h, w, c = x.shape
    first = jnp.int8(4)  # [N, H/2, W/2, C]; selects, not jnp.select, whose argmax XLA keeps as a reduction
    for index, mask in reversed(list(enumerate(_window_firsts(x)))):
        first = jnp.where(mask, jnp.int8(index), first)
    shape = (1, 1, 2, 1, 2, 1)
    position = 2 * lax.broadcasted_iota(jnp.int8, shape, 2) + lax.broadcasted_iota(jnp.int8, shape, 4)
    dx = jnp.where(first[:, :, None, :, None] == position, dy[:, :, None, :, None], jnp.zeros((), dy.dtype))
    return (dx.reshape(n, h, w, c),)


_pool_window_select.defvjp(_pool_forward, _pool_backward_window_select)

POOL_FORMS = {"pool-backward-barrier": _pool_backward_barrier, "pool-reduce-window": _pool_reduce_window,
              "pool-window-reshape": _pool_window_reshape, "pool-window-select": _pool_window_select}


def _scoped(pool):
    def scoped_pool(x):
        with jax.named_scope(POOL_SCOPE):
            return pool(x)

    return scoped_pool


@contextlib.contextmanager
def what_if(name):
    """The model as it is (None), or with one compile-only change (WHAT_IFS) while the job is traced;
    the pool, whatever its form, inside the POOL_SCOPE name scope."""
    if name is not None and name not in WHAT_IFS:
        raise ValueError(f"unknown what-if {name!r}: one of {WHAT_IFS}")
    relu, pool = cpu_kernels.relu, unet_module.max_pool_2x2
    saved_relu = (relu.fwd, relu.bwd)
    unet_module.max_pool_2x2 = _scoped(POOL_FORMS.get(name, pool))
    if name == "relu-output-barrier":
        relu.defvjp(_relu_forward_behind_barrier, relu.bwd)
    try:
        yield
    finally:
        relu.defvjp(*saved_relu)
        unet_module.max_pool_2x2 = pool

"""The forms in which XLA:CPU computes the U-Net's ReLU, max-pool and convolutions fast: the same
functions as the plain JAX ones (tests/unit/test_layers.py, test_tap_gradients.py,
test_few_channel_conv.py), with backward passes that keep less or copy less."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from unet_jax.model.layers import at_least_float32, per_channel

# The ReLU and the max-pool carry their own backward passes. Both compute the same values
# and gradients as `nn.relu` and a max over the window; what changes is what the backward
# pass keeps. `nn.relu`'s JVP keeps its input beside its output (and a zeros tensor of the same
# size), and the gradient of `jnp.maximum` keeps six float tensors per pool (the masks and
# the halves that split a tie): 19.4 GiB kept for backward in the seed network at 572 px,
# batch 16, float32, where backprop needs 9.7 GiB (`python -m benchmarks.memory`). These keep
# only what the convolutions' gradients keep anyway, the ReLU's output and the pool's input:
# 9.9 GiB, the weights included.


@jax.custom_vjp
def relu(x):
    """max(x, 0), whose backward reads its output (y > 0 exactly where x > 0), as PyTorch's does."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _relu_forward(x):
    y = relu(x)
    return y, y


def _relu_backward(y, dy):
    return (jnp.where(y > 0, dy, jnp.zeros((), dy.dtype)),)  # 0 at x = 0, as nn.relu


relu.defvjp(_relu_forward, _relu_backward)


@jax.custom_vjp
def relu_pinned(x):
    """`relu` whose kept output XLA may not recompute (`UNet.pin_relu_output`): the same values and gradients."""
    return relu(x)


def _relu_pinned_forward(x):
    # Without the barrier XLA:GPU recomputes the kept output from the convolution's output inside the
    # backward pass's fusions, so both stay alive until then, and cuDNN cannot take the ReLU into the
    # convolution (benchmarks/NOTES.md, "the H200 step compiled without a device": 7.38 -> 5.65 GiB of
    # temporaries, seed network, 572 px, batch 16, bf16, compiled for an H200 without a device).
    y = relu(x)
    return y, lax.optimization_barrier(y)


relu_pinned.defvjp(_relu_pinned_forward, _relu_backward)


def _window_views(x):
    """The four strided views of 2x2 windows, in row-major window order: [N, H/2, W/2, C] each."""
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_2x2(x):
    """2x2 max-pool, stride 2, as the element-wise max of the window's four strided views.

    Its gradient goes to the first maximum of each window in row-major order, as PyTorch's
    `max_pool2d` does, computed with element-wise selects (no select-and-scatter, so it stays
    usable under XLA's deterministic-ops mode). Not `reshape + max(axis=(2, 4))`: under
    `jax.jit` on XLA:CPU (jax 0.10.2) the gradient of that reduction came out wrong in
    BatchNorm + valid-padding U-Nets (encoder gradients off by O(1), also in float64; correct
    op by op and with `--xla_disable_hlo_passes=algsimp`), which parity_tests/test_gradients.py
    caught.
    """
    top_left, top_right, bottom_left, bottom_right = _window_views(x)
    return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_forward(x):
    return max_pool_2x2(x), x


def first_maxima(top_left, top_right, bottom_left, bottom_right):
    """For each view of the window (row-major order), where it holds the window's first maximum.

    From comparisons between the views alone. Not `view == pooled max`: with that form XLA:CPU's
    algebraic simplifier (jax 0.10.2) produced wrong float64 gradients in a BatchNorm U-Net
    (parity_tests/test_gradients.py)."""
    return (
        (top_left >= top_right) & (top_left >= bottom_left) & (top_left >= bottom_right),
        (top_right > top_left) & (top_right >= bottom_left) & (top_right >= bottom_right),
        (bottom_left > top_left) & (bottom_left > top_right) & (bottom_left >= bottom_right),
        (bottom_right > top_left) & (bottom_right > top_right) & (bottom_right > bottom_left),
    )


def _max_pool_backward(x, dy):
    firsts = first_maxima(*_window_views(x))
    zero = jnp.zeros((), dy.dtype)
    # Each view's gradient goes back to its strided positions: a pad with one zero between
    # elements (the transpose of a strided slice), shifted by the view's offset in the window.
    # [N, H/2, W/2, C] -> [N, H, W, C] each.
    dx = sum(
        lax.pad(jnp.where(first, dy, zero), zero, ((0, 0, 0), (row, 1 - row, 1), (col, 1 - col, 1), (0, 0, 0)))
        for first, (row, col) in zip(firsts, ((0, 0), (0, 1), (1, 0), (1, 1)))
    )
    return (dx,)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


def conv_with_tap_gradients(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                            dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` whose input gradient, where the kernel outweighs the activations
    (KERNEL_OVER_GRADIENT), is nine matmuls against the kernel as stored instead of a convolution.

    XLA computes a convolution's input gradient as a convolution with the kernel flipped and its
    channel axes swapped, which on XLA:CPU means copying the whole kernel transposed on every
    step. Deep in the seed network at batch 1 the kernels are the big tensors (1024 -> 1024 on
    6 px maps: 37.7 MB of kernel, 0.1 MB of gradient), and that input gradient took 44 ms,
    against 10.6 ms as one `g_shifted @ kernel[i, j]^T` per tap (benchmarks/NOTES.md, 19). The
    forward pass and the weight gradient are the convolution's own; only on the CPU backend.
    For flax's `nn.Conv(conv_general_dilated=...)`, NHWC and HWIO; strides, dilations or groups
    other than 1 go to `lax.conv_general_dilated` unchanged."""
    if not _plain(window_strides, lhs_dilation, rhs_dilation, feature_group_count) or jax.default_backend() != "cpu":
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    return _valid_conv_tap_gradients(_pad_spatially(lhs, rhs, padding), rhs)


KERNEL_OVER_GRADIENT = 10  # kernel elements per element of the zero-padded output gradient, from which taps win


def _plain(window_strides, lhs_dilation, rhs_dilation, feature_group_count) -> bool:
    """Stride 1, no dilation, no groups: the convolutions the two forms above rewrite."""
    ones = (*window_strides, *(lhs_dilation or ()), *(rhs_dilation or ()), feature_group_count)
    return all(value == 1 for value in ones)


def _pad_spatially(lhs, rhs, padding):
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    if any(p != (0, 0) for p in map(tuple, padding)):
        lhs = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    return lhs


@jax.custom_vjp
def _valid_conv_tap_gradients(x, kernel):
    return _valid_convolution(x, kernel)


def _conv_forward(x, kernel):
    return _valid_convolution(x, kernel), (x, kernel)


def _conv_tap_backward(inputs, dy):
    x, kernel = inputs
    rows, cols, _, out_channels = kernel.shape
    padded = dy.shape[0] * (dy.shape[1] + 2 * (rows - 1)) * (dy.shape[2] + 2 * (cols - 1)) * out_channels
    if kernel.size < KERNEL_OVER_GRADIENT * padded:
        return _convolution_gradients(inputs, dy)
    kernel_gradient = jax.vjp(lambda k: _valid_convolution(x, k), kernel)[1](dy)[0]
    # dx[p] = sum over taps (i, j) of dy[p - (i, j)] @ kernel[i, j]^T, dy zero outside its map.
    height, width = x.shape[1:3]
    wide = at_least_float32(dy.dtype)
    dy = jnp.pad(dy, ((0, 0), (rows - 1, rows - 1), (cols - 1, cols - 1), (0, 0)))
    dx = sum(
        lax.dot_general(dy[:, rows - 1 - i : rows - 1 - i + height, cols - 1 - j : cols - 1 - j + width, :],
                        kernel[i, j], (((3,), (1,)), ((), ())), preferred_element_type=wide)
        for i in range(rows) for j in range(cols))
    return dx.astype(x.dtype), kernel_gradient


_valid_conv_tap_gradients.defvjp(_conv_forward, _conv_tap_backward)


FEW_CHANNELS = 4  # input channels up to which few_channel_conv computes the forward pass


def few_channel_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for a convolution of an image with few channels (the U-Net's
    first, on grayscale or RGB tiles): the same function, as kh*kw*C multiply-adds over shifted
    views of the input, accumulated in at least float32 like a convolution's.

    A convolution library contracts over kh*kw*C = 9 products per output here, far too few for
    its matrix kernels: XLA:CPU ran the demo's first convolution (1 -> 16 channels, 124 px,
    batch 8) in 3.1-3.8 ms, against 0.3 ms for the fused multiply-adds, and 5.5 against 1.6 ms
    with 3 channels; from 8 channels on the convolution is faster (benchmarks/NOTES.md, 18).
    The backward pass stays the convolution's own (its multiply-add form's weight gradient was
    slower). For flax's `nn.Conv(conv_general_dilated=...)` with NHWC inputs and HWIO kernels;
    strides, dilations or groups other than 1 go to `lax.conv_general_dilated` unchanged."""
    if not _plain(window_strides, lhs_dilation, rhs_dilation, feature_group_count):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    return _valid_multiply_adds(_pad_spatially(lhs, rhs, padding), rhs)


@jax.custom_vjp
def _valid_multiply_adds(x, kernel):
    """The valid convolution of NHWC `x` with HWIO `kernel`, as one sum of broadcast products."""
    rows, cols, channels, _ = kernel.shape
    height, width = x.shape[1] - rows + 1, x.shape[2] - cols + 1
    wide = at_least_float32(x.dtype)
    x, wide_kernel = x.astype(wide), kernel.astype(wide)
    total = sum(x[:, i : i + height, j : j + width, c : c + 1] * per_channel(wide_kernel[i, j, c])
                for i in range(rows) for j in range(cols) for c in range(channels))
    return total.astype(kernel.dtype)


def _valid_convolution(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _multiply_adds_forward(x, kernel):
    return _valid_multiply_adds(x, kernel), (x, kernel)


def _convolution_gradients(inputs, dy):
    return jax.vjp(_valid_convolution, *inputs)[1](dy)


_valid_multiply_adds.defvjp(_multiply_adds_forward, _convolution_gradients)

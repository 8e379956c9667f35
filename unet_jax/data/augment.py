"""Random flips and 90-degree rotations of training tiles, on the device inside the jitted step.

Running them under jit keeps the host loop to tile cutting and keeps augmentation out of the
host-device transfer. The input tile and the label tile are concentric (the label is the centre
of the input), so a symmetry of the square about its centre keeps them aligned.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def augment(key: jax.Array, x: jax.Array, y: jax.Array, w: Optional[jax.Array] = None):
    """Apply one of the 8 symmetries of the square, drawn uniformly per sample, to x and y alike.

    x: [B, S_in, S_in, C] images; y: [B, S_out, S_out] labels (any dtype, kept); w: optional
    per-pixel loss weights shaped like y, moved with it. Returns (x, y), or (x, y, w) with w.

    A random horizontal flip, vertical flip and rotation by k*90 degrees (k in 0..3) together
    reach the same 8 transforms, each with probability 1/8. Here each transform is drawn as one
    index whose bits choose transpose, row flip and column flip: three selects over the batch,
    no gather and no per-sample switch.
    """
    batch, rows, cols = x.shape[:3]
    if rows != cols or y.shape[1] != y.shape[2] or y.shape[0] != batch:
        raise ValueError(f"augment needs square tiles and one label per image, got x {x.shape} and y {y.shape}")
    if (rows - y.shape[1]) % 2:
        raise ValueError(f"labels {y.shape} must be centred in the images {x.shape}: the size difference must be even")
    choice = jax.random.randint(key, (batch,), 0, 8)  # [B], index into the 8 symmetries
    transpose = (choice & 4) != 0
    flip_rows = (choice & 2) != 0
    flip_cols = (choice & 1) != 0

    def transform(a):  # a: [B, S, S, ...]
        def pick(flag, changed, same):
            return jnp.where(flag.reshape((batch,) + (1,) * (a.ndim - 1)), changed, same)

        a = pick(transpose, jnp.swapaxes(a, 1, 2), a)
        a = pick(flip_rows, a[:, ::-1], a)
        return pick(flip_cols, a[:, :, ::-1], a)

    return (transform(x), transform(y)) if w is None else (transform(x), transform(y), transform(w))


def chain(*augmentations: Callable) -> Callable:
    """One augmentation `(key, x, y[, w])` that applies each of `augmentations` in turn, each with its own key."""
    if len(augmentations) == 1:
        return augmentations[0]  # the same key use as the augmentation alone

    def augment_all(key, x, y, w=None):
        for part_key, augmentation in zip(jax.random.split(key, len(augmentations)), augmentations):
            if w is None:
                x, y = augmentation(part_key, x, y)
            else:
                x, y, w = augmentation(part_key, x, y, w)
        return (x, y) if w is None else (x, y, w)

    return augment_all

"""On-device augmentation: image and label get the same symmetry, and all 8 symmetries occur."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.data.augment import augment

SIZE_IN, SIZE_OUT = 20, 12
MARGIN = (SIZE_IN - SIZE_OUT) // 2


def _symmetries(a):
    """The 8 symmetries of the square applied to a [S, S, ...], built from rot90 and a flip."""
    return [np.rot90(b, k, axes=(0, 1)) for b in (a, a[:, ::-1]) for k in range(4)]


def _which(transformed, original):
    matches = [i for i, t in enumerate(_symmetries(original)) if np.array_equal(t, transformed)]
    assert len(matches) == 1, "result is not exactly one symmetry of the input"
    return matches[0]


def _batch(batch, seed=0):
    """Labels with no symmetry of their own, embedded as the centre of otherwise random images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 1000, (batch, SIZE_OUT, SIZE_OUT)).astype(np.int32)  # [B, So, So]
    x = rng.uniform(2000, 3000, (batch, SIZE_IN, SIZE_IN, 2)).astype(np.float32)  # [B, Si, Si, 2]
    x[:, MARGIN:-MARGIN, MARGIN:-MARGIN, 0] = y
    return x, y


def test_image_and_label_stay_aligned_under_jit():
    x, y = _batch(32)
    xa, ya = jax.jit(augment)(jax.random.key(0), jnp.asarray(x), jnp.asarray(y))
    xa, ya = np.asarray(xa), np.asarray(ya)
    assert xa.shape == x.shape and xa.dtype == np.float32 and ya.shape == y.shape and ya.dtype == np.int32
    np.testing.assert_array_equal(xa[:, MARGIN:-MARGIN, MARGIN:-MARGIN, 0], ya)
    for b in range(len(x)):
        assert _which(xa[b], x[b]) == _which(ya[b], y[b])


def test_each_of_the_8_symmetries_occurs():
    x, y = _batch(1)
    x, y = np.repeat(x, 256, axis=0), np.repeat(y, 256, axis=0)  # P(one missing) < 1e-13
    xa, ya = jax.jit(augment)(jax.random.key(1), jnp.asarray(x), jnp.asarray(y))
    seen = {_which(t, y[0]) for t in np.asarray(ya)}
    assert seen == set(range(8))
    assert {_which(t, x[0]) for t in np.asarray(xa)} == seen


def test_same_key_same_result_other_key_other_result():
    x, y = (jnp.asarray(a) for a in _batch(16))
    first = augment(jax.random.key(3), x, y)
    np.testing.assert_array_equal(first[0], augment(jax.random.key(3), x, y)[0])
    assert not np.array_equal(first[1], augment(jax.random.key(4), x, y)[1])


def test_non_square_or_off_centre_tiles_are_refused():
    x, y = (jnp.asarray(a) for a in _batch(2))
    with pytest.raises(ValueError, match="square"):
        augment(jax.random.key(0), x[:, :, :-2], y)
    with pytest.raises(ValueError, match="centred"):
        augment(jax.random.key(0), x, y[:, :-1, :-1])

"""Elastic deformation: the zero field is the identity, labels stay labels, one field moves
image, mask and weights together, and a key always gives the same deformation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.data.elastic import GRID, displacement_field, elastic_deform, warp

S = 40


def _tiles(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, S, S, 2)).astype(np.float32)
    y = rng.choice(np.array([0, 3, 17, 40000], np.int32), (batch, S, S))  # sparse ids, one far above the rest
    w = rng.uniform(0.5, 10, (batch, S, S)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)


@pytest.mark.slow
def test_the_zero_field_is_the_identity():
    x, y, w = _tiles()
    xs, ys, ws = jax.jit(warp)(jnp.zeros((3, S, S, 2), jnp.float32), x, y, w)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(ws, w)
    # sigma 0: the random field itself is zero.
    xs, ys = jax.jit(lambda k, a, b: elastic_deform(k, a, b, sigma=0.0))(jax.random.key(0), x, y)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_the_mask_stays_within_its_label_set_and_keeps_its_dtype():
    x, y, w = _tiles()
    for seed in range(4):
        _, ys, _ = jax.jit(elastic_deform)(jax.random.key(seed), x, y, w)
        assert ys.dtype == jnp.int32
        for b in range(len(y)):
            assert set(np.unique(ys[b])) <= set(np.unique(y[b]))
        assert not np.array_equal(ys, y)  # it did move


def test_a_key_gives_the_same_result_every_time_and_another_key_another():
    x, y, w = _tiles()
    deform = jax.jit(elastic_deform)
    first = deform(jax.random.key(5), x, y, w)
    again = deform(jax.random.key(5), x, y, w)
    other = deform(jax.random.key(6), x, y, w)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.slow
def test_one_field_moves_image_mask_and_weights_together():
    """The image holds each pixel's own (row, column), bilinear sampling of which returns the
    position read exactly; the mask holds each pixel's id, nearest sampling of which returns
    the pixel nearest to that position; the weights hold the row again."""
    rows, cols = np.indices((S, S)).astype(np.float32)
    x = jnp.asarray(np.stack([rows, cols], -1)[None].repeat(2, 0))  # [2, S, S, 2]
    y = jnp.asarray((rows * S + cols).astype(np.int32)[None].repeat(2, 0))  # [2, S, S]
    w = jnp.asarray(rows[None].repeat(2, 0))
    field = displacement_field(jax.random.key(3), 2, S, sigma=2.0)
    xs, ys, ws = (np.asarray(a) for a in jax.jit(warp)(field, x, y, w))
    read_row, read_col = rows + np.asarray(field[..., 0]), cols + np.asarray(field[..., 1])
    inside = (read_row >= 0) & (read_row <= S - 1) & (read_col >= 0) & (read_col <= S - 1)  # no mirroring there
    assert inside.mean() > 0.5
    np.testing.assert_allclose(xs[..., 0][inside], read_row[inside], atol=2e-5)  # bilinear of a linear ramp
    np.testing.assert_allclose(xs[..., 1][inside], read_col[inside], atol=2e-5)
    np.testing.assert_allclose(ws[inside], read_row[inside], atol=2e-5)
    nearest_row, nearest_col = np.divmod(ys, S)
    assert np.all(np.abs(nearest_row - read_row)[inside] <= 0.5 + 1e-4)
    assert np.all(np.abs(nearest_col - read_col)[inside] <= 0.5 + 1e-4)


@pytest.mark.slow
def test_the_field_is_smooth_and_has_the_papers_scale():
    field = np.asarray(displacement_field(jax.random.key(0), 400, 120))  # 10 px: the paper's sigma
    # Bicubic up-sampling of the 3x3 draws keeps each node's N(0, 10^2) scale near the nodes
    # and averages between them: the spread over all pixels lies a little below 10.
    assert 7.0 < field.std() < 10.5
    # Neighbouring pixels differ by a small fraction of the displacement: no per-pixel noise.
    assert np.median(np.abs(np.diff(field, axis=1))) < 0.2
    coarse = 10 * np.asarray(jax.random.normal(jax.random.key(0), (400, GRID, GRID, 2)))
    assert coarse.std() == pytest.approx(field.std(), rel=0.25)


def test_mismatched_shapes_are_refused():
    x, y, w = _tiles()
    with pytest.raises(ValueError, match="masks of the images' size"):
        warp(jnp.zeros((3, S, S, 2)), x, y[:, 2:-2, 2:-2])
    with pytest.raises(ValueError, match="must have the mask's shape"):
        warp(jnp.zeros((3, S, S, 2)), x, y, w[:, :, :-1])

"""Losses against PyTorch's definitions, Dice bounds, and metrics on hand-counted examples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.inference.metrics import add_counts, class_counts, scores_from_counts, segmentation_counts
from unet_jax.training.losses import cross_entropy, make_loss, soft_dice_loss

# Jitted once per shape: eager JAX compiles every small op on its own, which is slower here.
cross_entropy_jit = jax.jit(cross_entropy)
soft_dice_jit = jax.jit(soft_dice_loss)
counts_jit = jax.jit(segmentation_counts)


def _random_batch(seed, n=2, h=5, w=7, c=3, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=(n, h, w, c))).astype(np.float32)  # [N, H, W, C]
    labels = rng.integers(0, c, size=(n, h, w)).astype(np.int32)  # [N, H, W]
    return logits, labels


@pytest.mark.parametrize("seed, classes", [(0, 2), (1, 3), (2, 5)])
def test_cross_entropy_equals_torch(seed, classes):
    torch = pytest.importorskip("torch")
    logits, labels = _random_batch(seed, c=classes)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 3, 1, 2),  # torch wants [N, C, H, W]
        torch.from_numpy(labels).long(),
    )
    np.testing.assert_allclose(float(cross_entropy_jit(jnp.asarray(logits), jnp.asarray(labels))), expected.item(), rtol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_pixels():
    # d/dlogits of the mean cross-entropy = (softmax - one_hot) / pixels, computed here in float64 numpy.
    logits, labels = _random_batch(3, c=4)
    got = jax.jit(jax.grad(cross_entropy))(jnp.asarray(logits), jnp.asarray(labels))
    wide = logits.astype(np.float64)
    softmax = np.exp(wide - wide.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    expected = (softmax - np.eye(4)[labels]) / labels.size
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-8)


def test_cross_entropy_by_hand():
    # Two pixels, two classes: logits (0, 0) -> -log(1/2); logits (log 3, 0) with label 0 -> -log(3/4).
    logits = jnp.array([[[[0.0, 0.0], [np.log(3.0), 0.0]]]])  # [1, 1, 2, 2]
    labels = jnp.array([[[1, 0]]])
    np.testing.assert_allclose(float(cross_entropy_jit(logits, labels)), (np.log(2) + np.log(4 / 3)) / 2, rtol=1e-6)


def test_soft_dice_is_in_unit_interval():
    for seed in range(6):
        logits, labels = _random_batch(seed, scale=1.0 + 3 * seed)
        loss = float(soft_dice_jit(jnp.asarray(logits), jnp.asarray(labels)))
        assert 0.0 <= loss <= 1.0


def test_soft_dice_is_zero_for_confident_correct_logits_and_near_one_for_wrong():
    _, labels = _random_batch(0, n=2, h=8, w=8, c=3)
    one_hot = np.eye(3, dtype=np.float32)[labels]  # [N, H, W, C]
    perfect = 40.0 * one_hot  # margin 40: softmax is one-hot to within e^-40
    assert float(soft_dice_jit(jnp.asarray(perfect), jnp.asarray(labels))) == pytest.approx(0.0, abs=1e-6)
    wrong = 40.0 * np.roll(one_hot, 1, axis=-1)  # always another class
    # intersection 0: each foreground class scores smooth / (its pixels + smooth), i.e. near 0
    assert float(soft_dice_jit(jnp.asarray(wrong), jnp.asarray(labels))) > 0.95


@pytest.mark.parametrize("seed, classes", [(5, 2), (6, 3)])
def test_soft_dice_equals_its_definition_over_the_foreground_classes(seed, classes):
    # 1 - mean over classes 1..C-1 of (2 sum p t + 1) / (sum p + sum t + 1), sums over the
    # whole batch, in float64 numpy: the background (class 0) takes no part.
    logits, labels = _random_batch(seed, c=classes, scale=1.5)
    probs = np.exp(logits.astype(np.float64))
    probs /= probs.sum(-1, keepdims=True)
    truth = np.eye(classes)[labels]
    dice = [(2 * (probs[..., k] * truth[..., k]).sum() + 1) / (probs[..., k].sum() + truth[..., k].sum() + 1)
            for k in range(1, classes)]
    got = float(soft_dice_jit(jnp.asarray(logits), jnp.asarray(labels)))
    np.testing.assert_allclose(got, 1 - np.mean(dice), rtol=1e-5)  # float32 sums of ~70 terms


def test_soft_dice_gradient_is_finite():
    logits, labels = _random_batch(3)
    grad = jax.jit(jax.grad(soft_dice_loss))(jnp.asarray(logits), jnp.asarray(labels))
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).sum() > 0


def test_make_loss():
    logits, labels = map(jnp.asarray, _random_batch(4))
    assert make_loss("ce") is cross_entropy and make_loss("dice") is soft_dice_loss
    np.testing.assert_allclose(
        float(jax.jit(make_loss("ce+dice"))(logits, labels)),
        float(cross_entropy_jit(logits, labels)) + float(soft_dice_jit(logits, labels)),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="focal"):
        make_loss("focal")


# Hand-built example, 2x4 pixels, classes 0..2:
#   labels     0 0 1 1      predicted  0 1 1 1
#              2 2 1 0                 2 0 1 0
# class 0: actual 3, predicted 3, both at (0,0),(1,3) -> tp 2
# class 1: actual 3 (0,2),(0,3),(1,2); predicted 4 (adds (0,1)) -> tp 3
# class 2: actual 2 (1,0),(1,1); predicted 1 (1,0) -> tp 1
LABELS = np.array([[[0, 0, 1, 1], [2, 2, 1, 0]]])
PREDICTED = np.array([[[0, 1, 1, 1], [2, 0, 1, 0]]])


def test_segmentation_counts_by_hand():
    logits = 10.0 * np.eye(3)[PREDICTED]
    counts = counts_jit(jnp.asarray(logits), jnp.asarray(LABELS))
    np.testing.assert_array_equal(counts["true_positive"], [2, 3, 1])
    np.testing.assert_array_equal(counts["predicted"], [3, 4, 1])
    np.testing.assert_array_equal(counts["actual"], [3, 3, 2])


def test_scores_from_counts_by_hand():
    scores = scores_from_counts({"true_positive": [2, 3, 1], "predicted": [3, 4, 1], "actual": [3, 3, 2]})
    # dice = 2 tp / (pred + actual), iou = tp / (pred + actual - tp)
    dice = [2 * 2 / 6, 2 * 3 / 7, 2 * 1 / 3]
    iou = [2 / 4, 3 / 4, 1 / 2]
    assert scores["dice_per_class"] == pytest.approx(dice)
    assert scores["iou_per_class"] == pytest.approx(iou)
    assert scores["dice"] == pytest.approx((6 / 7 + 2 / 3) / 2)  # foreground classes 1 and 2 only
    assert scores["iou"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)


def test_absent_class_scores_one_and_missed_class_scores_zero():
    labels = np.zeros((1, 2, 2), np.int64)
    labels[0, 0, 0] = 1  # class 1 present once, class 2 absent everywhere
    predicted = np.zeros_like(labels)  # predicts background only: class 1 is missed
    counts = counts_jit(jnp.asarray(10.0 * np.eye(3)[predicted]), jnp.asarray(labels))
    scores = scores_from_counts(counts)
    assert scores["dice_per_class"][2] == 1.0 and scores["iou_per_class"][2] == 1.0
    assert scores["dice_per_class"][1] == 0.0 and scores["iou_per_class"][1] == 0.0
    assert scores["dice"] == pytest.approx(0.5)


def test_counts_add_up_over_batches():
    logits, labels = _random_batch(5, n=4, c=3)
    whole = counts_jit(jnp.asarray(logits), jnp.asarray(labels))
    total = None
    for i in range(4):
        total = add_counts(total, counts_jit(jnp.asarray(logits[i : i + 1]), jnp.asarray(labels[i : i + 1])))
    for key in whole:
        np.testing.assert_array_equal(total[key], whole[key])
    assert scores_from_counts(total) == scores_from_counts(whole)
    assert int(total["actual"].sum()) == int(total["predicted"].sum()) == labels.size


def test_numpy_counts_equal_the_training_metric():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 9, 7, 3)).astype(np.float32)  # [1, H, W, K]
    labels = rng.integers(0, 3, (1, 9, 7))
    expected = segmentation_counts(jnp.asarray(logits), jnp.asarray(labels))
    counts = class_counts(logits.argmax(-1), labels, 3)
    for key, value in expected.items():
        np.testing.assert_array_equal(counts[key], np.asarray(value))


def test_weighted_cross_entropy_is_the_weighted_mean_of_pixel_losses():
    from unet_jax.training.losses import needs_weights, weighted_cross_entropy

    logits, labels = _random_batch(7, c=2)
    weights = np.random.default_rng(7).uniform(0.5, 10, labels.shape).astype(np.float32)
    # -log softmax at the true class, in float64 numpy.
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    pixel = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    got = float(jax.jit(make_loss("weighted-ce"))(logits, labels, weights))
    assert got == pytest.approx(float((weights * pixel).mean()), rel=1e-6)
    ones = np.ones_like(weights)
    assert float(weighted_cross_entropy(logits, labels, ones)) == pytest.approx(float(cross_entropy_jit(logits, labels)), rel=1e-6)
    assert needs_weights("weighted-ce") and not needs_weights("ce")

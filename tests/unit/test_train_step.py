"""One real, jit-compiled train step on tiny data: it learns, donates, and updates BatchNorm.

Keys here use the "rbg" PRNG: with this JAX on CPU, compiling Flax's He init over threefry
keys takes ~20 s even for a 4-feature U-Net; rbg compiles in a few seconds. The step itself
is the same for any key type.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.training.losses import cross_entropy
from unet_jax.training.step import (
    create_train_state,
    make_eval_step,
    make_optax_optimizer,
    make_train_step,
    state_from_variables,
)

CFG = UNetConfig(features=4, depth=2)
INPUT = 44  # 44 -> 40, pool 20 -> 16, pool 8 -> bottleneck 4 -> up 8 -> 4 -> up 8 -> 4
OUTPUT = 4
BATCH = 2
LEARNING_RATE = 1e-3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(BATCH, INPUT, INPUT, 1)), jnp.float32)  # [N, H, W, C]
    masks = jnp.asarray(rng.integers(0, 2, size=(BATCH, INPUT, INPUT)), jnp.int32)  # input-sized masks
    return images, masks


def _host_copy(tree):
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def _tree_diff_norm(a, b):
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return math.sqrt(sum(float(np.sum((np.asarray(x, np.float64) - y) ** 2)) for x, y in pairs))


def test_sizes_are_what_the_tests_assume():
    assert CFG.output_size(INPUT) == OUTPUT


@pytest.mark.slow
def test_one_adam_step_learns_and_donates_the_state():
    model = UNet(CFG)
    state = create_train_state(model, make_optax_optimizer("adam", LEARNING_RATE), 0, INPUT)
    images, masks = _data()
    before = _host_copy(state.params)

    # The loss the step should report: cross-entropy of the logits on the centre-cropped masks.
    logits = jax.jit(model.apply)({"params": state.params}, images)
    margin = (INPUT - OUTPUT) // 2
    expected_loss = float(cross_entropy(logits, masks[:, margin : margin + OUTPUT, margin : margin + OUTPUT]))

    step = make_train_step(cross_entropy)
    passed_leaf = state.params["head"]["kernel"]
    new_state, metrics = step(state, images, masks)

    # Donation: the buffers of the state passed in were handed to the new state.
    assert passed_leaf.is_deleted(), "the train step should donate its input state (donate_argnums=0)"

    loss = float(metrics["loss"])
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert int(new_state.step) == 1
    assert math.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    pixels = BATCH * OUTPUT * OUTPUT
    assert int(np.sum(metrics["predicted"])) == int(np.sum(metrics["actual"])) == pixels

    after = _host_copy(new_state.params)
    assert jax.tree_util.tree_structure(after) == jax.tree_util.tree_structure(before)
    assert _tree_diff_norm(after, before) > 0
    # Adam's first step moves each weight by lr * m / (sqrt(v) + eps) = lr * g / (|g| + eps):
    # never more than lr, and exactly lr where the gradient is not tiny. The head's two biases
    # get gradients sum(softmax - one_hot) = +-g, never 0 for random data.
    pairs = zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before))
    largest_move = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    assert largest_move <= LEARNING_RATE * (1 + 1e-4)
    np.testing.assert_allclose(np.abs(after["head"]["bias"] - before["head"]["bias"]), LEARNING_RATE, rtol=1e-3)

    # The returned state is usable again (and the step does not recompile for it).
    newer_state, metrics2 = step(new_state, images, masks)
    assert int(newer_state.step) == 2 and float(metrics2["loss"]) != loss


@pytest.mark.slow
def test_one_sgd_step_with_batch_norm_updates_batch_stats():
    model = UNet(UNetConfig(features=4, depth=2, norm="batch"))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, INPUT, INPUT, 1)))
    learning_rate = 0.1
    tx = make_optax_optimizer("sgd", learning_rate, momentum=0.9)
    state = state_from_variables(model, tx, variables, jax.random.key(1, impl="rbg"))
    before = _host_copy(state.params)
    stats_before = _host_copy(state.batch_stats)
    passed_leaf = state.batch_stats["down1"]["norm1"]["mean"]
    images, masks = _data(1)

    new_state, metrics = make_train_step(cross_entropy)(state, images, masks)
    assert passed_leaf.is_deleted()
    assert math.isfinite(float(metrics["loss"]))

    # SGD with momentum starts from an empty trace, so its first update is -lr * grad and the
    # parameters move by exactly lr * (global gradient norm).
    moved = _tree_diff_norm(_host_copy(new_state.params), before)
    assert moved == pytest.approx(learning_rate * float(metrics["grad_norm"]), rel=1e-4)

    stats = _host_copy(new_state.batch_stats)
    flat_before = dict(jax.tree_util.tree_leaves_with_path(stats_before))
    norms = 0
    for path, value in jax.tree_util.tree_leaves_with_path(stats):
        name = jax.tree_util.keystr(path)
        if name.endswith("['num_batches_tracked']"):
            norms += 1
            assert int(value) == 1, name
        else:  # running mean left 0 and running var left 1: both moved toward the batch's
            assert not np.allclose(value, flat_before[path]), name
    assert norms == 2 * 5  # down1, down2, bottom, up1, up2: two norms each

    # The eval step (what validation runs) is inference mode: running statistics, no update.
    metrics = make_eval_step(cross_entropy)(new_state, images, masks)
    variables = {"params": new_state.params, "batch_stats": new_state.batch_stats}
    logits = model.apply(variables, images, train=False)
    margin = (INPUT - OUTPUT) // 2
    expected = cross_entropy(logits, masks[:, margin : margin + OUTPUT, margin : margin + OUTPUT])
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-6)
    np.testing.assert_array_equal(metrics["predictions"], np.argmax(logits, -1))
    assert int(np.sum(metrics["actual"])) == BATCH * OUTPUT * OUTPUT
    assert int(new_state.step) == 1 and not new_state.params["head"]["kernel"].is_deleted()  # read, not donated


def test_make_optimizer():
    assert isinstance(make_optax_optimizer("adam"), optax.GradientTransformation)
    assert isinstance(make_optax_optimizer("sgd", 0.01, momentum=0.99), optax.GradientTransformation)
    with pytest.raises(ValueError, match="rmsprop") as info:
        make_optax_optimizer("rmsprop")
    assert "adam" in str(info.value) and "sgd" in str(info.value)

"""The deliberate bugs the suite must catch: each is a set of exact text edits to the sources.

Every edit names a file, a text that must occur in it exactly once, and its replacement, so
a mutation that no longer applies (the code it targets was rewritten) is reported as stale
rather than silently skipped; `test_mutations.py` checks that in CI. `python -m
parity_tests.mutation_check` applies each mutation to a copy of the tree and runs its tests.

"both" mutations make the same bug in unet_jax and unet_torch: parity between the two cannot
see them, only a reference that shares no code with either (the numpy forward, the seed's
golden figures, hand-computed losses) can.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # what a developer would have got wrong
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids or files, run in this order, first failure wins
    # "gpu": a bug only an NVIDIA GPU can show (TF32). On a CPU the check runs it and reports it
    # as surviving there, expected, rather than faking a catch; a GPU run must catch it.
    shows_on: str = "any"


FLAX_MODEL, TORCH_MODEL = "unet_jax/model/unet.py", "unet_torch/model.py"
FLAX_LAYERS, PORT = "unet_jax/model/layers.py", "unet_jax/weights/port.py"
FLAX_KERNELS = "unet_jax/model/cpu_kernels.py"  # the ReLU, max-pool and convolutions as XLA:CPU computes them

# The tests a wiring bug should trip, cheapest first (the slow float64 golden run of the
# numpy reference is not among them: it checks the reference, not the models).
FORWARD_TESTS = (
    "tests/unit/test_model.py",
    "tests/unit/test_layers.py",
    "tests/unit/test_port.py",
    "parity_tests/test_conv_transpose.py",
    "parity_tests/test_forward.py::test_forward_strict_float32",
    "parity_tests/test_seed_checkpoint.py",
)
TRAIN_TESTS = ("tests/unit/test_losses_metrics.py", "tests/unit/test_train_step.py", "parity_tests/test_train_steps.py")

_FLAX_CONCAT = Edit(
    FLAX_MODEL, "x = jnp.concatenate([skip, x], axis=-1)", "x = jnp.concatenate([x, skip], axis=-1)"
)
_TORCH_CONCAT = Edit(
    TORCH_MODEL,
    "x = torch.cat([center_crop(skips[cfg.depth - step], x.shape[2], x.shape[3]), x], dim=1)",
    "x = torch.cat([x, center_crop(skips[cfg.depth - step], x.shape[2], x.shape[3])], dim=1)",
)
# The skip crop one pixel up and left of centre (where there is room: valid padding).
_FLAX_SKIP_CROP = Edit(
    FLAX_MODEL,
    "skip = center_crop(skips[depth - step], x.shape[1], x.shape[2])",
    "skip = skips[depth - step]\n"
    "            skip = center_crop(skip, x.shape[1] + 2, x.shape[2] + 2)[:, :-2, :-2] if skip.shape[1] > x.shape[1] "
    "else skip",
)
_TORCH_SKIP_CROP = Edit(
    TORCH_MODEL,
    "x = torch.cat([center_crop(skips[cfg.depth - step], x.shape[2], x.shape[3]), x], dim=1)",
    "skip = skips[cfg.depth - step]\n"
    "            skip = center_crop(skip, x.shape[2] + 2, x.shape[3] + 2)[..., :-2, :-2] if skip.shape[2] > x.shape[2] "
    "else skip\n"
    "            x = torch.cat([skip, x], dim=1)",
)
_FLAX_LABEL_CROP = Edit(
    "unet_jax/training/step.py",
    "labels = center_crop(masks, logits.shape[1], logits.shape[2])",
    "labels = center_crop(masks, logits.shape[1] + 2, logits.shape[2] + 2)[:, :-2, :-2] "
    "if masks.shape[1] > logits.shape[1] else masks",
)
_TORCH_LABEL_CROP = Edit(
    "unet_torch/train_step.py",
    "labels = center_crop(masks, logits.shape[-2], logits.shape[-1])",
    "labels = center_crop(masks, logits.shape[-2] + 2, logits.shape[-1] + 2)[..., :-2, :-2] "
    "if masks.shape[-2] > logits.shape[-2] else masks",
)
# The bottleneck's second ReLU left out.
_FLAX_NO_RELU = Edit(
    FLAX_MODEL, "x = (relu_pinned if self.pin_relu_output else relu)(x)",
    'x = x if (self.name == "bottom" and i == 2) else (relu_pinned if self.pin_relu_output else relu)(x)'
)
_TORCH_NO_RELU = Edit(
    TORCH_MODEL,
    "x = self.bottom(x)",
    "x = self.bottom.norm2(self.bottom.conv2(F.relu(self.bottom.norm1(self.bottom.conv1(x)))))",
)
_FLAX_AVG_POOL = Edit(
    FLAX_KERNELS,
    "return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))",
    "return (top_left + top_right + bottom_left + bottom_right) / 4",
)
_TORCH_AVG_POOL = Edit(TORCH_MODEL, "x = F.max_pool2d(x, 2)", "x = F.avg_pool2d(x, 2)")

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("concat-order-both", "skip and up-sampled features concatenated the other way round, in both models",
             (_FLAX_CONCAT, _TORCH_CONCAT), FORWARD_TESTS),
    Mutation("concat-order-flax", "the concat order swapped in the Flax model only", (_FLAX_CONCAT,), FORWARD_TESTS),
    Mutation("skip-crop-off-by-one-both", "the skip crop one pixel off centre, in both models",
             (_FLAX_SKIP_CROP, _TORCH_SKIP_CROP), FORWARD_TESTS),
    Mutation("skip-crop-off-by-one-torch", "the skip crop one pixel off centre in unet_torch only",
             (_TORCH_SKIP_CROP,), FORWARD_TESTS),
    Mutation("up-conv-transposed-not-flipped",
             "the port transposes the 2x2 up-conv kernel's spatial axes instead of flipping them",
             (Edit(PORT, "lambda w: np.flip(w.transpose(2, 3, 0, 1), (0, 1)),", "lambda w: w.transpose(3, 2, 0, 1),"),
              Edit(PORT, "lambda k: np.flip(k, (0, 1)).transpose(2, 3, 0, 1),", "lambda k: k.transpose(2, 3, 1, 0),")),
             FORWARD_TESTS),
    Mutation("up-conv-not-flipped", "the port forgets to flip the up-conv kernel",
             (Edit(PORT, "lambda w: np.flip(w.transpose(2, 3, 0, 1), (0, 1)),", "lambda w: w.transpose(2, 3, 0, 1),"),
              Edit(PORT, "lambda k: np.flip(k, (0, 1)).transpose(2, 3, 0, 1),", "lambda k: k.transpose(2, 3, 0, 1),")),
             FORWARD_TESTS),
    Mutation("conv-kernel-hw-swapped", "the port writes conv kernels as WHIO instead of HWIO",
             (Edit(PORT, "lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)",
                   "lambda w: w.transpose(3, 2, 1, 0), lambda k: k.transpose(3, 2, 1, 0)"),),
             FORWARD_TESTS),
    Mutation("relu-dropped-bottom-both", "the bottleneck's second ReLU left out, in both models",
             (_FLAX_NO_RELU, _TORCH_NO_RELU), FORWARD_TESTS),
    Mutation("relu-dropped-bottom-flax", "the bottleneck's second ReLU left out in the Flax model only",
             (_FLAX_NO_RELU,), FORWARD_TESTS),
    Mutation("average-pool-both", "2x2 average pooling instead of max pooling, in both models",
             (_FLAX_AVG_POOL, _TORCH_AVG_POOL), FORWARD_TESTS),
    Mutation("batchnorm-no-bessel", "the running variance updated with the biased batch variance (no n/(n-1))",
             (Edit(FLAX_LAYERS, "count / max(count - 1, 1)", "1"),), FORWARD_TESTS),
    Mutation("batchnorm-flax-momentum", "Flax's momentum convention (0.9 kept) instead of PyTorch's (0.1 new)",
             (Edit(FLAX_LAYERS, "momentum: float = 0.1", "momentum: float = 0.9"),), FORWARD_TESTS),
    Mutation("batchnorm-eval-uses-batch-stats", "evaluation mode normalises with the batch's own statistics",
             (Edit(FLAX_LAYERS, "mean, var = running_mean.value, running_var.value",
                   "mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))"),), FORWARD_TESTS),
    Mutation("label-crop-off-by-one-both", "labels cropped one pixel off centre in both train steps",
             (_FLAX_LABEL_CROP, _TORCH_LABEL_CROP), TRAIN_TESTS),
    Mutation("label-crop-off-by-one-flax", "labels cropped one pixel off centre in the JAX train step only",
             (_FLAX_LABEL_CROP,), TRAIN_TESTS),
    Mutation("cross-entropy-summed", "the cross-entropy summed over pixels instead of averaged",
             (Edit("unet_jax/training/losses.py", "return pixel_cross_entropy(logits, labels).mean()",
                   "return pixel_cross_entropy(logits, labels).sum()"),), TRAIN_TESTS),
    Mutation("soft-dice-counts-background", "the soft Dice loss averaged over the background class too",
             (Edit("unet_jax/training/losses.py", "probs = jax.nn.softmax(logits, axis=-1)[..., 1:]",
                   "probs = jax.nn.softmax(logits, axis=-1)"),
              Edit("unet_jax/training/losses.py", "truth = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)[..., 1:]",
                   "truth = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)")), TRAIN_TESTS),
)


# ---------------------------------------------------------------- precision bugs
# Bugs that only precision can show: the models compute the same function, only in the wrong
# dtype or with the wrong constant. The precision contracts test each promise directly (bounds of
# a few float32 rounding units); the precision-mode tests then show what the bug costs beside
# torch in the same mode. Files edited: unet_jax/training/losses.py, unet_jax/model/unet.py,
# unet_jax/training/step.py, and the test harness's strict mode (parity_tests/harness.py).
PRECISION_TESTS = ("parity_tests/test_precision_contracts.py", "parity_tests/test_precision_modes.py")
PRECISION_MUTATIONS: tuple[Mutation, ...] = (
    Mutation("cross-entropy-in-bf16", "the cross-entropy's log-softmax computed in bfloat16",
             (Edit("unet_jax/training/losses.py", "log_probs = jax.nn.log_softmax(logits, axis=-1)  # [N, H, W, C]",
                   "log_probs = jax.nn.log_softmax(logits.astype(jnp.bfloat16), axis=-1)  # [N, H, W, C]"),),
             PRECISION_TESTS),
    Mutation("logits-not-cast-up", "the logits left in the compute dtype (bf16) before the softmax",
             (Edit(FLAX_MODEL, 'return layers["head"](x).astype(at_least_float32(self.dtype))',
                   'return layers["head"](x)'),),
             PRECISION_TESTS),
    Mutation("adam-eps-changed", "Adam's eps 1e-7 (Keras's) instead of torch's and optax's 1e-8",
             (Edit("unet_jax/training/step.py", "return optax.adam(learning_rate)", "return optax.adam(learning_rate, eps=1e-7)"),),
             PRECISION_TESTS),
    Mutation("bf16-master-weights", "the train state keeps the parameters in the compute dtype (bf16 master weights)",
             (Edit("unet_jax/training/step.py",
                   'apply_fn=model.apply, params=variables["params"], tx=tx,',
                   'apply_fn=model.apply, params=jax.tree.map(lambda p: p.astype(model.dtype), variables["params"]), tx=tx,'),),
             PRECISION_TESTS),
    Mutation("tf32-on-in-strict", "strict mode leaves TF32 on: JAX's default matmul precision, torch's cuDNN TF32 flag",
             (Edit("parity_tests/harness.py", 'stack.enter_context(jax.default_matmul_precision("highest"))',
                   "pass  # JAX left at its default precision"),
              Edit("parity_tests/harness.py", "torch.backends.cudnn.allow_tf32 = False", "torch.backends.cudnn.allow_tf32 = True")),
             PRECISION_TESTS, shows_on="gpu"),
)
MUTATIONS = MUTATIONS + PRECISION_MUTATIONS

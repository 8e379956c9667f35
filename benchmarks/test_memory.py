"""The memory accounting of benchmarks.memory: the count of what backprop needs, by hand, and the
model keeping exactly that (plus the weights) for its backward pass."""

import jax
import jax.numpy as jnp

from benchmarks.memory import kept_for_backward_bytes, main, needed_activation_elements
from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet


def test_needed_activations_counted_by_hand():
    # depth 1, features 2, 20 px, valid padding; inputs of: down1 conv1 20*20*1, conv2 18*18*2,
    # pool 16*16*2; bottom conv1 8*8*2, conv2 6*6*4; up-conv 4*4*4; up1 conv1 8*8*(2+2),
    # conv2 6*6*2; head 4*4*2.
    by_hand = 400 + 648 + 512 + 128 + 144 + 64 + 256 + 72 + 32
    assert needed_activation_elements(UNetConfig(features=2, depth=1), 20) == by_hand


def test_the_model_keeps_what_backprop_needs_and_the_weights_and_no_more():
    # A second copy of any activation (nn.relu keeping its input, a pool keeping masks) would
    # exceed the bound; a count that misses a layer would fall below the first.
    config, size, batch = UNetConfig(features=8, depth=3), 92, 2
    needed = batch * needed_activation_elements(config, size) * 4
    shapes = jax.eval_shape(UNet(config).init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    parameters = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes["params"]))  # float32 bytes
    kept = kept_for_backward_bytes(UNet(config, dtype=jnp.float32), batch, size)
    assert needed <= kept <= needed + parameters


def test_command_writes_its_report(tmp_path):
    main(["--features", "4", "--depth", "2", "--size", "44", "--batch", "1", "--dtypes", "float32", "--remat", "none",
          "--no-compile", "--out", str(tmp_path)])
    assert "| float32 | none |" in (tmp_path / "memory.md").read_text()
    assert (tmp_path / "memory.json").exists()

"""The torch<->flax table: strict mismatch reports, prefixes, seed naming, layouts.

Pure numpy state_dicts here (see conftest.random_state_dict); no torch needed.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.weights.namings import detect_naming, seed_layer_names
from unet_jax.weights.port import (
    PARAMS,
    PortError,
    flax_to_torch,
    torch_to_flax,
)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


CONFIGS = [
    UNetConfig(features=8),
    UNetConfig(features=4, depth=2, norm="batch"),
    UNetConfig(features=4, depth=3, upsample="bilinear", in_channels=3, num_classes=4),
    UNetConfig(features=4, depth=2, norm="batch", upsample="bilinear", padding="same"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["plain", "batchnorm", "bilinear", "bn-bilinear-same"])
def test_round_trip_is_exact_and_keeps_dtypes(cfg, make_state_dict):
    sd = make_state_dict(cfg)
    variables = torch_to_flax(sd, cfg)
    assert set(variables) == ({"params", "batch_stats"} if cfg.norm else {"params"})
    if cfg.norm:
        assert variables["batch_stats"]["down1"]["norm1"]["num_batches_tracked"].dtype == np.int32
        assert variables["batch_stats"]["down1"]["norm1"]["num_batches_tracked"].shape == ()
    back = flax_to_torch(variables, cfg)
    assert list(back) == list(sd)
    for key in sd:
        assert back[key].dtype == sd[key].dtype and back[key].shape == sd[key].shape, key
        np.testing.assert_array_equal(back[key], sd[key])


def test_conv_kernel_is_oihw_to_hwio(make_state_dict):
    cfg = UNetConfig(features=4, depth=1)
    sd = make_state_dict(cfg)
    kernel = torch_to_flax(sd, cfg)["params"]["down1"]["conv2"]["kernel"]
    weight = sd["down1.conv2.weight"]  # [O, I, kH, kW]
    assert kernel.shape == (3, 3, 4, 4)
    for o, i, h, w in [(0, 1, 0, 2), (3, 2, 2, 1), (1, 3, 1, 0)]:
        assert kernel[h, w, i, o] == weight[o, i, h, w]


def test_ported_conv_computes_torch_cross_correlation():
    """Flax Conv with a ported kernel == PyTorch's Conv2d formula, written out in numpy:
    out[n, o, y, x] = b[o] + sum_{c, i, j} w[o, c, i, j] * in[n, c, y + i, x + j]."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)  # not symmetric in any way
    bias = rng.normal(size=3).astype(np.float32)
    images = rng.normal(size=(1, 2, 6, 7)).astype(np.float32)  # NCHW
    expected = np.zeros((1, 3, 4, 5), np.float32)
    for y in range(4):
        for x in range(5):
            patch = images[0, :, y : y + 3, x : x + 3]
            expected[0, :, y, x] = (weight * patch).sum(axis=(1, 2, 3)) + bias
    to_kernel = PARAMS["conv"][0].to_flax
    params = {"params": {"kernel": to_kernel(weight), "bias": bias}}
    out = nn.Conv(3, (3, 3), padding="VALID").apply(params, images.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_ported_conv_transpose_computes_torch_conv_transpose_with_a_non_symmetric_kernel():
    """PyTorch's ConvTranspose2d(k=2, s=2) scatters each input pixel into a 2x2 block:
    out[n, o, 2y + a, 2x + b] = bias[o] + sum_c in[n, c, y, x] * w[c, o, a, b]."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(3, 2, 2, 2)).astype(np.float32)  # (in, out, kH, kW)
    bias = rng.normal(size=2).astype(np.float32)
    images = rng.normal(size=(1, 3, 3, 4)).astype(np.float32)  # NCHW
    expected = np.zeros((1, 2, 6, 8), np.float32)
    for a in range(2):
        for b in range(2):
            expected[0, :, a::2, b::2] = np.einsum("chw,co->ohw", images[0], weight[:, :, a, b]) + bias[:, None, None]

    layer = nn.ConvTranspose(2, (2, 2), strides=(2, 2), padding="VALID")
    to_kernel = PARAMS["conv_transpose"][0].to_flax

    def run(kernel):
        out = layer.apply({"params": {"kernel": kernel, "bias": bias}}, images.transpose(0, 2, 3, 1))
        return np.asarray(out).transpose(0, 3, 1, 2)

    np.testing.assert_allclose(run(to_kernel(weight)), expected, rtol=1e-5, atol=1e-5)
    # The flip is what makes it right: a plain transpose gives another (wrong) result.
    assert not np.allclose(run(weight.transpose(2, 3, 0, 1)), expected, atol=1e-3)


def test_port_error_lists_missing_unexpected_and_misshaped_at_once(make_state_dict):
    cfg = UNetConfig(features=8)
    sd = make_state_dict(cfg)
    del sd["up4.conv1.bias"]  # up4 is the last decoder block: features channels
    sd["junk.weight"] = np.zeros((3, 3), np.float32)
    sd["down3.conv2.weight"] = sd["down3.conv2.weight"].reshape(32, 32, 9, 1)
    with pytest.raises(PortError) as info:
        torch_to_flax(sd, cfg)
    message = str(info.value)
    assert "missing: up4.conv1.bias (expected shape (8,))" in message
    assert "unexpected: junk.weight (shape (3, 3))" in message
    assert "wrong shape: down3.conv2.weight is (32, 32, 9, 1), expected (32, 32, 3, 3)" in message
    assert message.count("\n  ") == 3  # exactly these three, nothing else


def test_weights_of_another_config_list_every_mismatched_key(make_state_dict):
    small, big = UNetConfig(features=8), UNetConfig(features=16)
    sd = make_state_dict(big)
    small_sd = make_state_dict(small)
    # Every tensor's shape depends on `features` except the head's bias (num_classes,).
    mismatched = [k for k in sd if sd[k].shape != small_sd[k].shape]
    assert set(sd) - set(mismatched) == {"head.bias"}
    with pytest.raises(PortError) as info:
        torch_to_flax(sd, small)
    message = str(info.value)
    for key in mismatched:
        assert f"wrong shape: {key} is {sd[key].shape}, expected {small_sd[key].shape}" in message
    assert message.count("wrong shape:") == len(mismatched)
    assert "features=8" in message  # the config it was checked against


def test_flax_to_torch_is_strict_too(make_state_dict):
    cfg = UNetConfig(features=4, depth=2, norm="batch")
    variables = torch_to_flax(make_state_dict(cfg), cfg)
    del variables["batch_stats"]["up1"]["norm2"]["var"]
    variables["params"]["extra"] = {"kernel": np.zeros(2)}
    variables["params"]["head"]["kernel"] = np.zeros((1, 1, 4, 3), np.float32)
    with pytest.raises(PortError) as info:
        flax_to_torch(variables, cfg)
    message = str(info.value)
    assert "missing: batch_stats/up1/norm2/var" in message
    assert "unexpected: params/extra/kernel" in message
    assert "wrong shape: params/head/kernel" in message


def test_wrong_norm_config_is_reported_not_ignored(make_state_dict):
    cfg = UNetConfig(features=4, depth=2, norm="batch")
    with pytest.raises(PortError, match="unexpected: down1.norm1.running_var"):
        torch_to_flax(make_state_dict(cfg), UNetConfig(features=4, depth=2))


def test_module_prefix_is_stripped(make_state_dict):
    cfg = UNetConfig(features=4, depth=2, norm="batch")
    sd = make_state_dict(cfg)
    wrapped = {"module." + k: v for k, v in sd.items()}  # nn.DataParallel's keys
    assert_trees_equal(torch_to_flax(wrapped, cfg), torch_to_flax(sd, cfg))
    # Only a prefix that every key has is a wrapper's; a partial one is reported.
    partial = dict(sd)
    partial["module.head.bias"] = partial.pop("head.bias")
    with pytest.raises(PortError, match="unexpected: module.head.bias"):
        torch_to_flax(partial, cfg)


# The seed `Unet`'s own attribute names (seed/ document): conv1_1 .. conv9_2, up_conv_1..4, conv_10.
SEED_LAYERS = (
    [f"conv{level}_{i}" for level in range(1, 10) for i in (1, 2)] + [f"up_conv_{j}" for j in range(1, 5)] + ["conv_10"]
)


def test_seed_layer_names_for_the_seed_config():
    names = seed_layer_names(UNetConfig())
    assert sorted(names.values()) == sorted(SEED_LAYERS)
    assert names["down1.conv1"] == "conv1_1"
    assert names["bottom.conv2"] == "conv5_2"
    assert names["upconv1"] == "up_conv_1"
    assert names["up1.conv1"] == "conv6_1"  # the first decoder block follows the deepest up-conv
    assert names["up4.conv2"] == "conv9_2"
    assert names["head"] == "conv_10"


def test_seed_naming_is_detected_and_ports_like_unet_torch_naming(make_state_dict):
    cfg = UNetConfig(features=4)  # depth 4 like the seed, small channels
    sd = make_state_dict(cfg)
    names = seed_layer_names(cfg)
    seed_sd = {}
    for key, value in sd.items():
        layer, tensor = key.rsplit(".", 1)
        seed_sd[f"{names[layer]}.{tensor}"] = value
    assert {k.rsplit(".", 1)[0] for k in seed_sd} == set(SEED_LAYERS)
    assert detect_naming(seed_sd) == "seed" and detect_naming(sd) == "unet_torch"
    assert_trees_equal(torch_to_flax(seed_sd, cfg), torch_to_flax(sd, cfg))
    assert_trees_equal(torch_to_flax({"module." + k: v for k, v in seed_sd.items()}, cfg), torch_to_flax(sd, cfg))
    # and back out in the seed's naming
    assert flax_to_torch(torch_to_flax(sd, cfg), cfg, naming="seed").keys() == seed_sd.keys()


@pytest.mark.parametrize(
    "cfg, named",
    [(UNetConfig(norm="batch"), "norm='batch'"), (UNetConfig(upsample="bilinear"), "upsample='bilinear'")],
)
def test_seed_naming_refuses_configs_the_seed_does_not_have(cfg, named):
    with pytest.raises(ValueError, match="seed") as info:
        seed_layer_names(cfg)
    assert named in str(info.value)


def test_unknown_naming_is_refused(make_state_dict):
    cfg = UNetConfig(features=4, depth=1)
    with pytest.raises(ValueError, match="naming"):
        flax_to_torch(torch_to_flax(make_state_dict(cfg), cfg), cfg, naming="timm")


def test_ported_variables_run_in_the_flax_model(make_state_dict):
    from unet_jax.model.unet import UNet

    cfg = UNetConfig(features=4, depth=1, norm="batch")
    variables = jax.tree_util.tree_map(jnp.asarray, torch_to_flax(make_state_dict(cfg), cfg))
    logits = jax.jit(UNet(cfg).apply)(variables, jnp.ones((1, 20, 20, 1)))
    assert logits.shape == (1, 4, 4, 2) and np.isfinite(np.asarray(logits)).all()

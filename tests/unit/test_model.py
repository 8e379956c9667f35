"""The Flax U-Net: parameter count, shapes, dtypes, input checks, layer names, BatchNorm,
and agreement of both models with the torch<->flax table in `unet_jax.weights.port`."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.config import UNetConfig
from unet_jax.model.unet import UNet
from unet_jax.weights.port import PARAMS, flatten_variables, layer_table

SEED_PARAMETERS = 31_030_658
# The seed's count, layer by layer (3x3 conv: 9*cin*cout + cout; 2x2 up-conv: 4*cin*cout + cout;
# 1x1 conv: cin*cout + cout):
#   down1   9*1*64+64      + 9*64*64+64       =     37,568
#   down2   9*64*128+128   + 9*128*128+128    =    221,440
#   down3   9*128*256+256  + 9*256*256+256    =    885,248
#   down4   9*256*512+512  + 9*512*512+512    =  3,539,968
#   bottom  9*512*1024+1024 + 9*1024*1024+1024 = 14,157,824
#   upconv1 4*1024*512+512                    =  2,097,664
#   up1     9*1024*512+512 + 9*512*512+512    =  7,078,912
#   upconv2 4*512*256+256                     =    524,544
#   up2     9*512*256+256  + 9*256*256+256    =  1,769,984
#   upconv3 4*256*128+128                     =    131,200
#   up3     9*256*128+128  + 9*128*128+128    =    442,624
#   upconv4 4*128*64+64                       =     32,832
#   up4     9*128*64+64    + 9*64*64+64       =    110,720
#   head    64*2+2                            =        130
#   total                                     = 31,030,658

CONFIGS = [
    UNetConfig(),
    UNetConfig(features=8, norm="batch"),
    UNetConfig(features=8, upsample="bilinear"),
    UNetConfig(features=4, depth=2, in_channels=3, num_classes=5, padding="same"),
    UNetConfig(features=6, depth=3, norm="batch", upsample="bilinear"),
]
CONFIG_IDS = ["seed", "batchnorm", "bilinear", "same-rgb-5class", "bn-bilinear-d3"]


def expected_parameter_count(cfg: UNetConfig) -> int:
    """The same arithmetic as the comment above, for any config (BatchNorm: the conv loses
    its bias and the norm has a scale and a shift per channel; bilinear: a 1x1 conv)."""
    bn = cfg.norm == "batch"

    def conv3x3(cin, cout):
        return 9 * cin * cout + (2 * cout if bn else cout)

    total = 0
    cin = cfg.in_channels
    for level in range(cfg.depth + 1):  # encoder levels and the bottleneck
        cout = cfg.features * 2**level
        total += conv3x3(cin, cout) + conv3x3(cout, cout)
        cin = cout
    for _ in range(cfg.depth):
        cout = cin // 2
        kernel_area = 4 if cfg.upsample == "transpose" else 1
        total += kernel_area * cin * cout + cout  # up-conv
        total += conv3x3(2 * cout, cout) + conv3x3(cout, cout)  # after concatenating the skip
        cin = cout
    return total + cin * cfg.num_classes + cfg.num_classes


def _sample_size(cfg):
    return cfg.nearest_valid_input_sizes(1)[1]  # the smallest valid input


def _variable_shapes(model, size, batch=1):
    x = jax.ShapeDtypeStruct((batch, size, size, model.config.in_channels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def _random_variables(shapes, seed=0):
    """Real values for a variable tree without running (and compiling) Flax's random init."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "num_batches_tracked" in name:
            return jnp.full(s.shape, 5, s.dtype)
        if "'var'" in name:
            return jnp.asarray(rng.uniform(0.5, 2.0, s.shape), s.dtype)
        fan_in = math.prod(s.shape[:-1]) or 1
        return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------- parameters
def test_seed_parameter_count():
    shapes = _variable_shapes(UNet(), 572)
    assert set(shapes) == {"params"}  # no BatchNorm: nothing else
    assert _count(shapes["params"]) == SEED_PARAMETERS == expected_parameter_count(UNetConfig())


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=CONFIG_IDS[1:])
def test_parameter_count_of_other_configs(cfg):
    assert _count(_variable_shapes(UNet(cfg), _sample_size(cfg))["params"]) == expected_parameter_count(cfg)


def test_stable_layer_names():
    params = _variable_shapes(UNet(), 572)["params"]
    expected = {f"down{i}" for i in range(1, 5)} | {"bottom", "head"}
    expected |= {f"upconv{i}" for i in range(1, 5)} | {f"up{i}" for i in range(1, 5)}
    assert set(params) == expected
    for block in expected - {"head"} - {f"upconv{i}" for i in range(1, 5)}:
        assert set(params[block]) == {"conv1", "conv2"}
        assert set(params[block]["conv1"]) == {"kernel", "bias"}
    assert set(params["upconv1"]) == set(params["head"]) == {"kernel", "bias"}

    bn = _variable_shapes(UNet(UNetConfig(features=4, depth=2, norm="batch")), 44)
    assert set(bn["params"]["down1"]) == {"conv1", "norm1", "conv2", "norm2"}
    assert set(bn["params"]["down1"]["conv1"]) == {"kernel"}  # BatchNorm makes the bias redundant
    assert set(bn["params"]["down1"]["norm1"]) == {"scale", "bias"}
    assert set(bn["batch_stats"]["up2"]["norm2"]) == {"mean", "var", "num_batches_tracked"}


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_flax_variables_have_the_port_tables_shapes(cfg):
    shapes = _variable_shapes(UNet(cfg), _sample_size(cfg))
    actual = {k: tuple(v.shape) for k, v in flatten_variables(shapes).items()}
    expected = {}
    for layer in layer_table(cfg):
        for param in PARAMS[layer.kind]:
            flax_shape = np.shape(param.to_flax(np.zeros(param.torch_shape(layer))))
            expected["/".join((param.collection, *layer.path, param.leaf))] = flax_shape
    assert actual == expected


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_torch_model_matches_the_port_table_and_the_count(cfg):
    torch = pytest.importorskip("torch")
    from unet_torch import UNet as TorchUNet

    torch.manual_seed(0)
    model = TorchUNet(**{f.name: getattr(cfg, f.name) for f in cfg.__dataclass_fields__.values()})
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        ".".join(layer.path) + "." + param.torch_name: param.torch_shape(layer)
        for layer in layer_table(cfg)
        for param in PARAMS[layer.kind]
    }
    assert actual == expected
    assert list(actual) == list(expected)  # same order too: the table lists layers in forward order
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(cfg)


# -------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "cfg, height, width, batch",
    [
        (UNetConfig(), 572, 572, 1),
        (UNetConfig(), 572, 188, 2),  # non-square: each side on its own
        (UNetConfig(features=4, depth=2), 44, 60, 3),
        (UNetConfig(features=4, depth=2, padding="same", in_channels=3, num_classes=5), 32, 48, 2),
        (UNetConfig(features=4, depth=3, upsample="bilinear", norm="batch"), 92, 92, 1),
    ],
)
def test_output_shapes(cfg, height, width, batch):
    x = jax.ShapeDtypeStruct((batch, height, width, cfg.in_channels), jnp.float32)
    logits, _ = jax.eval_shape(functools.partial(UNet(cfg).init_with_output, jax.random.key(0)), x)
    assert logits.shape == (batch, cfg.output_size(height), cfg.output_size(width), cfg.num_classes)
    assert logits.dtype == jnp.float32


# -------------------------------------------------------------------- dtypes
def _conv_operand_dtypes(jaxpr):
    """dtypes of (input, kernel) of every convolution in a jaxpr, nested ones included: the
    conv primitives, the matmuls of the 2x2 up-convolutions (layers.UpConv2x2), and the
    convolutions of few input channels computed as multiply-adds (cpu_kernels.few_channel_conv)."""
    found = []
    for eqn in jaxpr.eqns:
        multiply_adds = eqn.primitive.name == "custom_vjp_call" and (
            eqn.params["call_jaxpr"].jaxpr.debug_info.func_name == "_valid_multiply_adds")
        if eqn.primitive.name in ("conv_general_dilated", "dot_general") or multiply_adds:
            found.append((eqn.invars[0].aval.dtype, eqn.invars[1].aval.dtype))
        if multiply_adds:
            continue  # its products are float32 on purpose: it accumulates as a convolution does
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    found += _conv_operand_dtypes(sub)
    return found


@pytest.mark.parametrize("norm", [None, "batch"])
def test_bfloat16_compute_gives_float32_logits(norm):
    cfg = UNetConfig(features=4, depth=2, norm=norm)
    model = UNet(cfg, dtype=jnp.bfloat16)
    shapes = _variable_shapes(model, 44)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes["params"]))
    x = jax.ShapeDtypeStruct((2, 44, 44, 1), jnp.float32)
    apply = functools.partial(model.apply, train=norm is not None, mutable=["batch_stats"] if norm else False)
    out = jax.eval_shape(apply, shapes, x)
    logits = out[0] if norm else out
    assert logits.dtype == jnp.float32 and logits.shape == (2, 4, 4, 2)

    convs = _conv_operand_dtypes(jax.make_jaxpr(apply)(shapes, x).jaxpr)
    n_conv_layers = sum(layer.kind.startswith("conv") for layer in layer_table(cfg))
    assert len(convs) == n_conv_layers
    assert all(dtypes == (jnp.bfloat16, jnp.bfloat16) for dtypes in convs), convs
    if norm:  # running statistics stay float32 under bf16 compute
        new_stats = out[1]["batch_stats"]
        assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in jax.tree_util.tree_leaves(new_stats))


def test_float32_compute_has_float32_convs():
    model = UNet(UNetConfig(features=4, depth=2))
    shapes = _variable_shapes(model, 44)
    x = jax.ShapeDtypeStruct((1, 44, 44, 1), jnp.float32)
    convs = _conv_operand_dtypes(jax.make_jaxpr(model.apply)(shapes, x).jaxpr)
    assert convs and all(dtypes == (jnp.float32, jnp.float32) for dtypes in convs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_param_dtype_is_respected(dtype):
    model = UNet(UNetConfig(features=4, depth=2, norm="batch"), dtype=dtype, param_dtype=jnp.bfloat16)
    shapes = _variable_shapes(model, 44)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes["params"])} == {jnp.dtype(jnp.bfloat16)}
    stats = flatten_variables(shapes["batch_stats"])
    assert {v.dtype for k, v in stats.items() if not k.endswith("num_batches_tracked")} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((1, 44, 44, 1), jnp.float32)
    assert jax.eval_shape(model.apply, shapes, x).dtype == jnp.float32


# -------------------------------------------------------------- input checks
@pytest.mark.parametrize("shape", [(1, 570, 570, 1), (1, 572, 570, 1), (1, 570, 572, 1)])
def test_invalid_size_is_a_trace_time_value_error_under_jit(shape):
    model = UNet()
    with pytest.raises(ValueError) as info:
        jax.jit(model.init)(jax.random.key(0), jnp.zeros(shape))
    message = str(info.value)
    assert "570" in message and "556" in message and "572" in message
    assert "Nearest valid input sizes" in message


def test_invalid_size_through_jitted_apply():
    cfg = UNetConfig(features=4, depth=2)
    model = UNet(cfg)
    variables = _random_variables(_variable_shapes(model, 44))
    lower, upper = cfg.nearest_valid_input_sizes(50)
    assert lower < 50 < upper
    with pytest.raises(ValueError) as info:
        jax.jit(model.apply)(variables, jnp.zeros((1, 50, 50, 1)))
    assert str(lower) in str(info.value) and str(upper) in str(info.value)


def test_wrong_channel_count_names_in_channels():
    with pytest.raises(ValueError, match="in_channels=1") as info:
        jax.eval_shape(UNet().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 572, 572, 3), jnp.float32))
    assert "3 channels" in str(info.value)


@pytest.mark.parametrize("shape", [(572, 572, 1), (1, 1, 572, 572, 1), (572, 572)])
def test_non_4d_input_is_refused(shape):
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(UNet().init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


# ---------------------------------------------------------------- BatchNorm
EPS = 1e-5  # PyTorch's BatchNorm2d default
MOMENTUM = 0.1  # PyTorch's convention: running = (1 - m) * running + m * batch


def _norm_paths(tree, prefix=()):
    for name, child in tree.items():
        if name.startswith("norm"):
            yield prefix + (name,)
        elif isinstance(child, dict):
            yield from _norm_paths(child, prefix + (name,))


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


@pytest.fixture(scope="module")
def batchnorm_run():
    cfg = UNetConfig(features=4, depth=1, norm="batch")  # 20 -> 16 -> pool 8 -> 4 -> up 8 -> 4
    model = UNet(cfg)
    variables = _random_variables(_variable_shapes(model, 20), seed=1)
    images = jnp.asarray(np.random.default_rng(2).normal(size=(3, 20, 20, 1)), jnp.float32)

    @functools.partial(jax.jit, static_argnames="train")
    def run(variables, images, train):
        return model.apply(
            variables, images, train=train, mutable=["batch_stats", "intermediates"], capture_intermediates=True
        )

    return variables, {train: run(variables, images, train) for train in (True, False)}


def _conv_and_norm_outputs(intermediates, path):
    conv_path = path[:-1] + ("conv" + path[-1][len("norm") :],)
    conv_out = np.asarray(_get(intermediates, conv_path)["__call__"][0], np.float64)  # [N, H, W, C]
    norm_out = np.asarray(_get(intermediates, path)["__call__"][0], np.float64)
    return conv_out, norm_out


def test_batchnorm_train_mode_uses_batch_statistics_and_updates_running_ones(batchnorm_run):
    variables, runs = batchnorm_run
    logits, updates = runs[True]
    assert np.isfinite(np.asarray(logits)).all()
    paths = list(_norm_paths(variables["batch_stats"]))
    assert len(paths) == 6  # down1, bottom, up1: two norms each
    for path in paths:
        old = _get(variables["batch_stats"], path)
        new = _get(updates["batch_stats"], path)
        params = _get(variables["params"], path)
        conv_out, norm_out = _conv_and_norm_outputs(updates["intermediates"], path)
        count = conv_out.size // conv_out.shape[-1]
        mean = conv_out.mean(axis=(0, 1, 2))
        biased_var = conv_out.var(axis=(0, 1, 2))
        unbiased_var = biased_var * count / (count - 1)  # PyTorch's running-variance rule
        np.testing.assert_allclose(new["mean"], (1 - MOMENTUM) * np.asarray(old["mean"]) + MOMENTUM * mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            new["var"], (1 - MOMENTUM) * np.asarray(old["var"]) + MOMENTUM * unbiased_var, rtol=1e-5, atol=1e-6
        )
        assert int(new["num_batches_tracked"]) == int(old["num_batches_tracked"]) + 1
        # Normalisation itself uses the biased batch variance.
        expected = (conv_out - mean) / np.sqrt(biased_var + EPS) * np.asarray(params["scale"]) + np.asarray(params["bias"])
        np.testing.assert_allclose(norm_out, expected, rtol=1e-4, atol=1e-4)


def test_batchnorm_eval_mode_uses_running_statistics_and_keeps_them(batchnorm_run):
    variables, runs = batchnorm_run
    _, updates = runs[False]
    for path in _norm_paths(variables["batch_stats"]):
        stats = _get(variables["batch_stats"], path)
        params = _get(variables["params"], path)
        for name in ("mean", "var", "num_batches_tracked"):
            np.testing.assert_array_equal(_get(updates["batch_stats"], path)[name], stats[name])
        conv_out, norm_out = _conv_and_norm_outputs(updates["intermediates"], path)
        expected = (conv_out - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + EPS)
        expected = expected * np.asarray(params["scale"]) + np.asarray(params["bias"])
        np.testing.assert_allclose(norm_out, expected, rtol=1e-4, atol=1e-4)

"""The PyTorch key names ("namings") a U-Net state_dict may use, each a renaming of unet_torch's layers.

The port's table (`unet_jax.weights.port.layer_table`) names every layer by its unet_torch path
("down1.conv1", "upconv2", "head"). Other PyTorch U-Nets hold the same layers under other
names; a naming here maps each unet_torch layer name to that model's, so the one table
serves every naming, in both directions. Tensor names within a layer (weight, bias,
running_mean, running_var, num_batches_tracked) are torch's own and the same everywhere.

- "unet_torch": this project's reference module (`unet_torch.UNet`).
- "seed": the seed document's `Unet` class (no BatchNorm, transposed up-convs).
- "milesial": milesial/Pytorch-UNet's `UNet(n_channels, n_classes, bilinear=False)`, which is
  `UNetConfig(padding="same", norm="batch", upsample="transpose")` at features 64, depth 4.
"""

from __future__ import annotations

from typing import Collection

from unet_jax.config import ConfigError, UNetConfig, UNetError

NAMINGS = ("unet_torch", "seed", "milesial")
# The two ways `unet-jax convert` goes: a naming is detected reading torch keys, chosen writing them.
# Here, with the namings, rather than in convert.py, so that the command line lists them without JAX.
DIRECTIONS = ("torch-to-flax", "flax-to-torch")

# milesial's DoubleConv is Sequential(conv, BN, ReLU, conv, BN, ReLU): the ReLUs (2, 5) hold no weights.
MILESIAL_DOUBLE_CONV = {"conv1": 0, "norm1": 1, "conv2": 3, "norm2": 4}
# What milesial's network fixes; only these configs have milesial names.
MILESIAL_ARCHITECTURE = {"padding": "same", "norm": "batch", "upsample": "transpose"}


class UnsupportedCheckpointError(UNetError, ValueError):
    """A checkpoint of a network this project does not have; the message says why and what is supported."""


def layer_names(config: UNetConfig, naming: str) -> dict[str, str]:
    """unet_torch layer name -> the naming's name for it (absent: the same name)."""
    if naming not in NAMINGS:
        raise ConfigError(f"naming must be one of {NAMINGS}, got {naming!r}")
    if naming == "seed":
        return seed_layer_names(config)
    if naming == "milesial":
        return milesial_layer_names(config)
    return {}


def seed_layer_names(config: UNetConfig) -> dict[str, str]:
    """unet_torch layer name -> the seed `Unet` class's name for the same layer.

    The seed numbers its 3x3 convs by level (conv1_1 .. conv9_2), its up-convs up_conv_1..4
    and its head conv_10; the scheme extends to any depth. It has no BatchNorm and no
    bilinear variant, so only those configs have seed names.
    """
    if config.norm is not None or config.upsample != "transpose":
        raise ConfigError(
            "the seed's Unet naming exists only for norm=None, upsample='transpose'; "
            f"this config has norm={config.norm!r}, upsample={config.upsample!r}"
        )
    d = config.depth
    names = {}
    for i in (1, 2):
        for level in range(1, d + 1):
            names[f"down{level}.conv{i}"] = f"conv{level}_{i}"
        names[f"bottom.conv{i}"] = f"conv{d + 1}_{i}"
        for step in range(1, d + 1):
            names[f"up{step}.conv{i}"] = f"conv{d + 1 + step}_{i}"
    for step in range(1, d + 1):
        names[f"upconv{step}"] = f"up_conv_{step}"
    names["head"] = f"conv_{2 * d + 2}"
    return names


def milesial_layer_names(config: UNetConfig) -> dict[str, str]:
    """unet_torch layer name -> milesial/Pytorch-UNet's (bilinear=False) name for the same layer.

    milesial calls the first block `inc`, each later encoder block and the bottleneck
    `down{k}.maxpool_conv.1` (index 0 is the weightless max-pool), so our `down{l}` is its
    `down{l-1}` and our `bottom` its `down{depth}`; decoder step j (1 = deepest) is its `up{j}`,
    with the transposed conv `up{j}.up` and the block `up{j}.conv`; the head is `outc.conv`.
    Its code is written for depth 4; the scheme extends to any depth.
    """
    wrong = {k: getattr(config, k) for k, v in MILESIAL_ARCHITECTURE.items() if getattr(config, k) != v}
    if wrong:
        raise ConfigError(
            "milesial/Pytorch-UNet's UNet(bilinear=False) is " + ", ".join(f"{k}={v!r}" for k, v in MILESIAL_ARCHITECTURE.items())
            + "; this config has " + ", ".join(f"{k}={v!r}" for k, v in wrong.items())
            + ", and milesial names exist only for its architecture. Fix: to read a milesial checkpoint, leave out the "
            "architecture options (its shapes give them); to write one, the weights must be of that architecture, else use "
            "--naming unet_torch"
        )
    d = config.depth
    names = {}

    def double_conv(ours: str, theirs: str) -> None:
        for part, index in MILESIAL_DOUBLE_CONV.items():
            names[f"{ours}.{part}"] = f"{theirs}.double_conv.{index}"

    double_conv("down1", "inc")
    for level in range(2, d + 1):
        double_conv(f"down{level}", f"down{level - 1}.maxpool_conv.1")
    double_conv("bottom", f"down{d}.maxpool_conv.1")
    for step in range(1, d + 1):
        names[f"upconv{step}"] = f"up{step}.up"
        double_conv(f"up{step}", f"up{step}.conv")
    names["head"] = "outc.conv"
    return names


def detect_naming(keys: Collection[str]) -> str:
    """The naming of a state_dict's keys: 'seed' (conv1_1.weight ...), 'milesial' (inc.double_conv...) or 'unet_torch'."""
    if "conv1_1.weight" in keys:
        return "seed"
    if "inc.double_conv.0.weight" in keys:
        return "milesial"
    return "unet_torch"


def check_supported(keys: Collection[str], source: str) -> None:
    """Refuse, with the reason, checkpoints of networks that only look like ours.

    milesial's `UNet(bilinear=True)` upsamples with nn.Upsample (no weights, so no `up{j}.up.*`)
    and halves the bottleneck and decoder widths (its `factor = 2`): a different network.
    """
    if detect_naming(keys) == "milesial" and not any(k.startswith("up1.up.") for k in keys):
        raise UnsupportedCheckpointError(
            f"{source} is a milesial/Pytorch-UNet checkpoint trained with bilinear=True: its decoder upsamples "
            "bilinearly without weights and its bottleneck and decoder convs have half the channels, so it is a "
            "different network from this project's U-Net and can't be ported. Supported: milesial's "
            "UNet(n_channels, n_classes, bilinear=False) (transposed-conv upsampling), which is "
            "UNetConfig(padding='same', norm='batch', upsample='transpose')"
        )

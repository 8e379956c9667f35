"""UNetConfig: the seed's defaults, the size rules, and validation of every field."""

import dataclasses

import pytest

from unet_jax.config import UNetConfig


def _brute_force_output(size, depth, padding):
    """Follow one side length through the network conv by conv; None where it breaks.

    Written independently of UNetConfig._trace_size: every 3x3 conv is stepped on its own,
    a 2x2 pool needs an even side, and the copy-and-crop needs the skip to be at least as
    large as the up-sampled map it is concatenated with.
    """
    conv = 2 if padding == "valid" else 0  # an unpadded 3x3 conv loses one pixel per side
    skips = []
    for _ in range(depth):
        for _ in range(2):
            size -= conv
            if size < 1:
                return None
        skips.append(size)
        if size % 2:
            return None
        size //= 2
    for _ in range(2):  # bottleneck
        size -= conv
        if size < 1:
            return None
    for skip in reversed(skips):
        size *= 2  # 2x2 stride-2 up-convolution (or bilinear x2)
        if size > skip:
            return None
        for _ in range(2):
            size -= conv
            if size < 1:
                return None
    return size


def test_defaults_are_the_seed_network():
    cfg = UNetConfig()
    assert (cfg.in_channels, cfg.num_classes, cfg.features, cfg.depth) == (1, 2, 64, 4)
    assert (cfg.padding, cfg.upsample, cfg.norm) == ("valid", "transpose", None)
    assert [cfg.channels(level) for level in range(5)] == [64, 128, 256, 512, 1024]


def test_seed_tile_572_gives_388():
    # The paper's Fig. 1: 572 -> 570 -> 568, pool 284 -> ... -> bottleneck 28, up to 388.
    assert UNetConfig().output_size(572) == 388


@pytest.mark.parametrize(
    "cfg",
    [
        UNetConfig(),
        UNetConfig(depth=1),
        UNetConfig(depth=2),
        UNetConfig(depth=3),
        UNetConfig(depth=5),
        UNetConfig(padding="same"),
        UNetConfig(padding="same", depth=2),
        UNetConfig(padding="same", depth=5),
    ],
    ids=lambda c: f"{c.padding}-d{c.depth}",
)
def test_output_size_matches_a_brute_force_trace(cfg):
    for size in range(1, 700):
        expected = _brute_force_output(size, cfg.depth, cfg.padding)
        assert cfg.is_valid_input_size(size) == (expected is not None), size
        if expected is None:
            with pytest.raises(ValueError, match=f"input size {size} "):
                cfg.output_size(size)
        else:
            assert cfg.output_size(size) == expected, size


def test_valid_sizes_for_depth_4_are_16k_plus_124():
    # With c the bottleneck's side after its two convs, going back down the encoder gives
    # s = ((((c + 4) * 2 + 4) * 2 + 4) * 2 + 4) * 2 + 4 = 16c + 124, and up the decoder
    # c -> 2c - 4 -> 4c - 12 -> 8c - 28 -> 16c - 60, which stays >= 1 only for c >= 4 (c = 3
    # gives 2 then 0). So the valid sizes are 16k + 124 for k >= 4 (188, 204, ...), and the
    # output is (16k + 124) - (16k - 60) = 184 pixels smaller.
    cfg = UNetConfig()
    valid = [s for s in range(1, 1200) if _brute_force_output(s, 4, "valid") is not None]
    assert valid == list(range(16 * 4 + 124, 1200, 16))
    assert valid[:2] == [188, 204] and 556 in valid and 572 in valid
    for s in valid:
        assert cfg.output_size(s) == s - 184


def test_nearest_valid_input_sizes():
    cfg = UNetConfig()
    assert cfg.nearest_valid_input_sizes(570) == (556, 572)
    assert cfg.nearest_valid_input_sizes(572) == (572, 572)
    assert cfg.nearest_valid_input_sizes(10) == (None, 188)  # nothing valid below the smallest


@pytest.mark.parametrize("depth, padding", [(1, "valid"), (2, "valid"), (3, "valid"), (5, "valid"), (1, "same"), (5, "same")])
def test_nearest_valid_input_sizes_are_those_a_search_one_size_at_a_time_finds(depth, padding):
    cfg = UNetConfig(depth=depth, padding=padding)
    valid = [s for s in range(1, 1500) if _brute_force_output(s, depth, padding) is not None]
    for size in range(1, 1200):
        lower = max((s for s in valid if s <= size), default=None)
        assert cfg.nearest_valid_input_sizes(size) == (lower, min(s for s in valid if s >= size)), size


def test_a_deep_network_names_its_sizes_at_once_and_an_absurd_depth_is_refused():
    deepest = UNetConfig(depth=12)  # a search one size at a time from 60 took seconds at this depth
    assert deepest.nearest_valid_input_sizes(60) == (None, deepest.smallest_input_size)
    smallest = deepest.smallest_input_size
    assert deepest.is_valid_input_size(smallest) and not deepest.is_valid_input_size(smallest - 2**12)
    for depth, padding, fix in ((13, "valid", 12), (30, "valid", 12), (17, "same", 16)):
        with pytest.raises(ValueError, match=rf"UNetConfig.depth \(--depth\) {depth}: .* Fix: choose a depth of at most {fix} "):
            UNetConfig(depth=depth, padding=padding)


def test_same_padding_takes_multiples_of_2_to_the_depth():
    cfg = UNetConfig(padding="same")
    assert [s for s in range(1, 200) if cfg.is_valid_input_size(s)] == list(range(16, 200, 16))
    assert cfg.output_size(64) == 64
    assert cfg.nearest_valid_input_sizes(100) == (96, 112)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        cfg.output_size(100)


def test_invalid_size_message_names_both_neighbours():
    with pytest.raises(ValueError) as info:
        UNetConfig().check_input_size(572, 570)
    message = str(info.value)
    assert "570" in message and "556" in message and "572" in message


@pytest.mark.parametrize(
    "field, value",
    [
        ("in_channels", 0),
        ("in_channels", 1.0),
        ("num_classes", 1),
        ("num_classes", True),
        ("features", -8),
        ("features", "64"),
        ("depth", 0),
        ("padding", "full"),
        ("padding", "VALID"),
        ("upsample", "nearest"),
        ("norm", "group"),
        ("norm", "none"),
    ],
)
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=f"UNetConfig.{field} "):
        UNetConfig(**{field: value})


def test_config_is_frozen_and_hashable():
    cfg = UNetConfig(features=32, norm="batch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.features = 16
    same = UNetConfig(features=32, norm="batch")
    assert cfg == same and hash(cfg) == hash(same)
    assert len({cfg, same, UNetConfig()}) == 2
    assert {cfg: "x"}[same] == "x"

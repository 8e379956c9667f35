"""TrainConfig checks itself when built: every value that used to fail late (or never) fails here,
naming the field and its command-line flag."""

import dataclasses
import math

import pytest

from unet_config import DTYPES, LOSSES, OPTIMIZERS, ConfigError, TrainConfig, UNetConfig, UNetError
from unet_jax.training.presets import PRESETS

SMALL = dict(model=UNetConfig(features=4, depth=2), tile_size=60)


@pytest.mark.parametrize(
    "field, value",
    [
        ("checkpoint_every", 0),  # was a ZeroDivisionError after compiling
        ("log_every", 0),
        ("eval_every", 0),
        ("val_tiles_per_image", 0),  # was a TypeError
        ("keep_checkpoints", 0),  # kept no checkpoint, so the run could not be resumed
        ("steps", -3),
        ("batch_size", True),
        ("steps", 1.5),
        ("cells_image_size", 4),
        ("optimizer", "rmsprop"),  # failed only after config.json and normalization.json existed
        ("loss", "focal"),
        ("dtype", "float16"),
        ("learning_rate", -1),  # was accepted silently
        ("learning_rate", 0),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("learning_rate", 5.0),
        ("momentum", 5),  # was accepted silently
        ("momentum", -0.1),
        ("momentum", 1.0),
        ("val_fraction", 0.0),
        ("val_fraction", 1.0),
        ("seed", -1),
        ("seed", 2**63),  # an OverflowError once the run had started, its lock left behind
        ("augment", "yes"),
        ("elastic", 1),
        ("target_gap", "no"),
        ("elastic_sigma", -1.0),
        ("elastic_sigma", math.inf),
        ("weight_w0", -1.0),
        ("weight_w0", math.nan),
        ("weight_sigma", 0.0),  # exp(-d^2 / 0) is no weight map
        ("target_gap_width", 0),
        ("target_gap_width", 1.5),
        ("cells_layout", "dense"),
        ("data", 3),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_its_flag(field, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**SMALL, **{field: value})
    message = str(info.value)
    assert f"TrainConfig.{field}" in message and "--" + field.replace("_", "-") in message
    assert isinstance(info.value, UNetError) and isinstance(info.value, ValueError)


def test_edges_of_the_ranges_are_accepted():
    cfg = TrainConfig(**SMALL, learning_rate=1, momentum=0.0, keep_checkpoints=1, seed=0)
    assert (cfg.learning_rate, cfg.momentum) == (1, 0.0)
    assert TrainConfig(**SMALL, seed=2**63 - 1).seed == 2**63 - 1


def test_tile_size_must_suit_the_network():
    with pytest.raises(ConfigError, match="Nearest valid input sizes: 56 or 60"):
        TrainConfig(model=UNetConfig(features=4, depth=2), tile_size=58)


def test_the_library_names_are_the_checked_ones():
    for name, allowed in (("optimizer", OPTIMIZERS), ("loss", LOSSES), ("dtype", DTYPES)):
        for value in allowed:
            assert getattr(TrainConfig(**SMALL, **{name: value}), name) == value


def test_presets_are_valid_configs():
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_names_unknown_fields():
    values = dict(TrainConfig(**SMALL).to_dict(), learning_rat=0.1)
    with pytest.raises(ConfigError, match="learning_rat"):
        TrainConfig.from_dict(values)
    values = TrainConfig(**SMALL).to_dict()
    values["model"]["featres"] = 3
    with pytest.raises(ConfigError, match="featres"):
        TrainConfig.from_dict(values)


def test_every_field_documents_itself():
    for cls in (TrainConfig, UNetConfig):
        for field in dataclasses.fields(cls):
            assert field.name == "model" or field.metadata.get("help"), f"{cls.__name__}.{field.name}"


def test_a_resumed_run_may_change_the_learning_rate_and_the_steps_and_nothing_else():
    stored = TrainConfig(**SMALL, steps=10, learning_rate=1e-3)
    cfg, changes = stored.resumed_with({"steps": 20, "learning_rate": 1e-4, "batch_size": stored.batch_size})
    assert (cfg.steps, cfg.learning_rate) == (20, 1e-4)
    assert changes == {"steps": (10, 20), "learning_rate": (1e-3, 1e-4)}  # an unchanged value is no change
    assert stored.resumed_with({}) == (stored, {})
    with pytest.raises(ConfigError) as info:
        stored.resumed_with({"features": 8, "optimizer": "sgd", "steps": 30})
    message = str(info.value)
    assert "--features (4 -> 8)" in message and "--optimizer ('adam' -> 'sgd')" in message
    assert "--steps" in message.split("may change only")[1] and "--run-dir" in message


def test_weighted_ce_and_the_gap_option_both_separate_touching_objects():
    assert not TrainConfig(**SMALL).separates_touching
    assert TrainConfig(**SMALL, loss="weighted-ce").separates_touching
    assert TrainConfig(**SMALL, target_gap=True).separates_touching
    assert TrainConfig(**SMALL, elastic_sigma=0.0).elastic_sigma == 0.0  # no deformation, allowed


def test_the_weight_map_options_survive_config_json_and_older_configs_get_the_papers_values():
    cfg = TrainConfig(**SMALL, loss="weighted-ce", weight_w0=20.0, weight_sigma=3.0, target_gap_width=2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    older = {k: v for k, v in cfg.to_dict().items() if k not in ("weight_w0", "weight_sigma", "target_gap_width")}
    restored = TrainConfig.from_dict(older)  # a config.json written before these options existed trained with the paper's
    assert (restored.weight_w0, restored.weight_sigma, restored.target_gap_width) == (10.0, 5.0, 1)

"""Overlap-tile prediction: tiling changes memory and speed, never the answer, on any image size."""

import itertools
import json

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers.random_weights import random_variables
from unet_jax.config import ConfigError, UNetConfig
from unet_jax.data import DataError, Normalization, mirror_crop, mirror_pad
from unet_jax.inference.predictor import Predictor, predict_files, predict_probabilities
from unet_jax.inference.tile_plan import (
    activation_bytes,
    default_margin,
    default_tile_size,
    tile_geometry,
    tile_sizes,
    usable_tile_size,
)
from unet_jax.runtime.safe_files import OutputError
from unet_jax.weights.io import load_variables, save_flax_weights

CONFIG = UNetConfig(features=4, depth=2)  # valid sizes 4k >= 44, output = input - 40
MARGIN = 20


def _image(h, w, channels=1, seed=0):
    return np.random.default_rng(seed).normal(size=(h, w, channels)).astype(np.float32)  # [H, W, C]


@pytest.fixture(scope="module")
def predictor():
    return Predictor(CONFIG, random_variables(CONFIG))


def _whole(predictor, padded):
    """One forward pass over a whole padded image [H, W, C] -> probabilities [H', W', K]."""
    return np.asarray(predictor.forward(padded[None]))[0]


def _relative_max_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _whole_image_reference(predictor, image, geometry):
    """The claim tiling must meet: one pass over the image mirror-padded by the tile context
    (bottom and right grown to the next valid size), cropped by the tile margin -> [H, W, K]."""
    config, context = predictor.config, geometry.context
    height, width = image.shape[:2]
    bottom = next(p for p in range(context, context + 2**config.depth + 1) if config.is_valid_input_size(height + context + p))
    right = next(p for p in range(context, context + 2**config.depth + 1) if config.is_valid_input_size(width + context + p))
    whole = _whole(predictor, mirror_pad(image, context, bottom, context, right))
    return whole[geometry.crop : geometry.crop + height, geometry.crop : geometry.crop + width]


# ------------------------------------------------------------------ the overlap-tile equality
@pytest.mark.slow
def test_tiled_prediction_equals_one_whole_image_pass(predictor):
    image = _image(76, 100)  # padded by the margin: 116 x 140, both valid, output 76 x 100
    with jax.default_matmul_precision("highest"):
        whole = _whole(predictor, mirror_pad(image, MARGIN, MARGIN, MARGIN, MARGIN))
        # tile 60 -> 20 output pixels: 4 x 5 = 20 tiles, batches of 3 (the last holds 2)
        tiled = predict_probabilities(predictor, image, tile_size=60, batch_size=3)
    assert tiled.shape == (76, 100, 2) and tiled.dtype == np.float32
    # Measured 1.2e-7 on CPU (jax 0.10.2): float32 rounding of differently blocked convolutions.
    assert _relative_max_error(tiled, whole) <= 1e-6


@pytest.mark.slow
def test_tiles_start_on_the_pool_grid_at_depth_3():
    """Depth 3 outputs are 4 (mod 8), so the stride is rounded down; without that the pools of
    neighbouring tiles would group different pixel pairs and the result would change."""
    config = UNetConfig(features=4, depth=3)
    predictor = Predictor(config, random_variables(config))
    geometry = tile_geometry(config, 108)  # output 20 -> stride 16
    assert (geometry.context, geometry.stride) == (44, 16)
    image = _image(44, 36, seed=1)  # + 2 * 44 = 132 x 124, valid
    with jax.default_matmul_precision("highest"):
        whole = _whole(predictor, mirror_pad(image, 44, 44, 44, 44))
        tiled = predict_probabilities(predictor, image, tile_size=108, batch_size=4)  # 3 x 3 tiles
    # Measured 0.0 on CPU.
    assert _relative_max_error(tiled, whole) <= 1e-6

    # The paper's stride (the output size, 20) puts tile origins off the 8-pixel pool grid:
    # the answer changes (measured 0.22 here), which is why the stride is rounded down.
    paper = np.empty((60, 60, 2), np.float32)
    for top in range(0, 60, 20):
        for left in range(0, 60, 20):
            tile = mirror_crop(image, top - 44, left - 44, 108, 108)  # [108, 108, 1]
            paper[top : top + 20, left : left + 20] = _whole(predictor, tile)
    assert _relative_max_error(paper[:44, :36], whole) > 0.05


@pytest.mark.slow
def test_batch_norm_tiles_equal_the_whole_image_pass():
    config = UNetConfig(features=4, depth=2, norm="batch")
    predictor = Predictor(config, random_variables(config))
    image = _image(76, 100)
    with jax.default_matmul_precision("highest"):
        tiled = predict_probabilities(predictor, image, tile_size=60, batch_size=3)
        whole = _whole_image_reference(predictor, image, tile_geometry(config, 60))
    # Measured 1.1e-7: running statistics are per pixel, tiling can't see them.
    assert _relative_max_error(tiled, whole) <= 1e-6


BILINEAR_CASES = [(2, 60, (76, 100)), (3, 140, (61, 83))]  # depth, tile size, image: 4 x 5 and 3 x 3 tiles


@pytest.mark.slow
@pytest.mark.parametrize("depth, tile_size, shape", BILINEAR_CASES)
def test_bilinear_tiles_equal_the_whole_image_pass_for_any_weights(depth, tile_size, shape):
    """With the margin of 2**depth - 1 pixels derived in unet_jax.inference.tile_plan, for several draws of
    weights and image. One pixel less is not enough, which shows the margin is the smallest."""
    config = UNetConfig(features=4, depth=depth, upsample="bilinear")
    margin = default_margin(config)
    assert margin == 2**depth - 1
    exact, short = [], []
    for seed in range(4):
        predictor = Predictor(config, random_variables(config, seed=seed))
        image = _image(*shape, seed=seed)
        with jax.default_matmul_precision("highest"):
            for m, errors in ((margin, exact), (margin - 1, short)):
                tiled = predict_probabilities(predictor, image, tile_size, batch_size=4, margin=m)
                reference = _whole_image_reference(predictor, image, tile_geometry(config, tile_size, m))
                errors.append(_relative_max_error(tiled, reference))
    # Measured on CPU (jax 0.10.2), seeds 0-7: at most 1.3e-6 (depth 2) and 7.5e-7 (depth 3), float32
    # rounding of differently sized resizes and convs: the same comparison in float64 gives <= 4.5e-8,
    # the rounding of the float32 output. Without the margin this test's bound was 3e-2 and seeds
    # reached 0.1.
    assert max(exact) <= 3e-6, exact
    # One pixel short, seeds 0-3 reached 1.2e-2 (depth 2) and 2.2e-4 (depth 3); a few draws whose
    # outputs saturate come close to equal, so the largest error over the draws is what shows it.
    assert max(short) > 3e-5, short


# ------------------------------------------------------------------ sizes, batches, padding
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (37, 91), (19, 19)])
def test_any_image_size_gives_a_prediction_of_that_size(predictor, shape):
    probs = predict_probabilities(predictor, _image(*shape), tile_size=60, batch_size=2)
    assert probs.shape == (*shape, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_batch_size_does_not_change_the_result(predictor):
    image = _image(50, 45, seed=2)  # 3 x 3 = 9 tiles of output 20
    one = predict_probabilities(predictor, image, tile_size=60, batch_size=1)
    for batch_size in (2, 4, 9, 32):
        np.testing.assert_allclose(predict_probabilities(predictor, image, 60, batch_size), one, atol=1e-6)


@pytest.mark.slow
def test_same_padding_tiles_without_margin_equal_per_tile_passes():
    config = UNetConfig(features=4, depth=2, padding="same")
    predictor = Predictor(config, random_variables(config))
    image = _image(32, 48, seed=3)  # 2 x 3 abutting tiles of 16
    tiled = predict_probabilities(predictor, image, tile_size=16, batch_size=4, margin=0)
    for top in (0, 16):
        for left in (0, 16, 32):
            expected = _whole(predictor, image[top : top + 16, left : left + 16])
            np.testing.assert_allclose(tiled[top : top + 16, left : left + 16], expected, atol=1e-6)
    # The default margin (2**depth = 4 px) overlaps the tiles: stride 16 - 2 * 4 = 8.
    assert tile_geometry(config, 16).stride == 8
    probs = predict_probabilities(predictor, _image(21, 13), tile_size=16)
    assert probs.shape == (21, 13, 2)


@pytest.mark.parametrize("config", [CONFIG, UNetConfig(depth=1), UNetConfig(padding="same", depth=3),
                                    UNetConfig(upsample="bilinear", depth=3)], ids=str)
def test_tile_sizes_are_every_valid_size_that_leaves_a_stride(config):
    sizes = itertools.islice(tile_sizes(config), 12)
    expected = (s for s in range(1, 10**4) if config.is_valid_input_size(s) and tile_geometry_or_none(config, s) is not None)
    assert list(sizes) == list(itertools.islice(expected, 12))


def tile_geometry_or_none(config, size):
    try:
        return tile_geometry(config, size)
    except ConfigError:
        return None


def test_invalid_tile_sizes_name_the_valid_ones(predictor):
    with pytest.raises(ValueError, match="Nearest valid input sizes: 48 or 52"):
        predict_probabilities(predictor, _image(30, 30), tile_size=50)
    with pytest.raises(ValueError, match="at least 100"):  # depth 3: 92 is valid but outputs only 4 px
        tile_geometry(UNetConfig(features=4, depth=3), 92)


def test_a_tile_larger_than_the_image_needs_is_capped(predictor):
    # The case: --tile-size 100000 on a 64 x 64 image tried to allocate 74 GiB. One tile of
    # 104 (output 104 - 40 = 64) covers the image; anything larger only adds mirrored padding.
    assert usable_tile_size(CONFIG, 100000, 64, 64) == 104
    assert usable_tile_size(CONFIG, 60, 64, 64) == 60  # smaller requests stand
    image = _image(64, 64)
    np.testing.assert_allclose(predict_probabilities(predictor, image, tile_size=100000),
                               predict_probabilities(predictor, image, tile_size=104), atol=1e-6)


def test_a_tile_size_over_the_memory_budget_is_refused_with_the_numbers():
    budget = 4 * activation_bytes(CONFIG, 500)  # four tiles of 500 fit, nothing larger
    needed = 4 * activation_bytes(CONFIG, 1000)
    with pytest.raises(ConfigError) as info:
        usable_tile_size(CONFIG, 1000, 5000, 5000, batch_size=4, budget_bytes=budget)
    message = str(info.value)
    assert f"{needed / 2**30:.2f} GiB" in message and f"{budget / 2**30:.2f} GiB" in message
    assert "at most 500" in message and "--tile-size" in message
    assert usable_tile_size(CONFIG, 500, 5000, 5000, batch_size=4, budget_bytes=budget) == 500


def test_default_tile_size_covers_a_small_image_and_respects_the_memory_budget():
    assert default_tile_size(CONFIG, 30, 20) == 72  # the first tile whose 32-px stride covers 30
    budget = 3 * activation_bytes(CONFIG, 80)
    size = default_tile_size(CONFIG, 1000, 1000, batch_size=3, budget_bytes=budget)
    assert CONFIG.is_valid_input_size(size) and 3 * activation_bytes(CONFIG, size) <= budget
    assert default_tile_size(CONFIG, 1000, 1000, budget_bytes=1) == 44  # nothing fits: the smallest


# ------------------------------------------------------------------ files
def test_predict_files_writes_masks_and_probabilities(tmp_path, predictor):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 31), dtype=np.uint8)).save(inputs / "a.png")
    tifffile.imwrite(inputs / "b.tif", rng.integers(0, 65536, (17, 9), dtype=np.uint16))
    out = tmp_path / "out" / "nested"
    written = predict_files(predictor, [inputs / "a.png", inputs / "b.tif"], out, save_probabilities=True, tile_size=60)
    assert [w["mask"].name for w in written] == ["a_mask.png", "b_mask.png"]
    mask = np.array(Image.open(out / "a_mask.png"))
    probs = np.load(out / "a_probs.npy")
    assert mask.shape == (23, 31) and mask.dtype == np.uint8
    assert probs.shape == (23, 31, 2) and probs.dtype == np.float32
    np.testing.assert_array_equal(mask, probs.argmax(-1))
    assert np.load(out / "b_probs.npy").shape == (17, 9, 2)

    predict_files(predictor, [inputs / "a.png"], out, mask_format="tiff", tile_size=60)
    np.testing.assert_array_equal(tifffile.imread(out / "a_mask.tif"), mask)


def test_predict_files_refuses_clashes_and_names_bad_files(tmp_path, predictor):
    for name in ("a.png", "a_mask.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    with pytest.raises(OutputError, match="a_mask.png is the input .*a_mask.png; it is never replaced"):
        predict_files(predictor, [tmp_path / "a.png", tmp_path / "a_mask.png"], tmp_path)
    (tmp_path / "x").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x" / "a.png")
    with pytest.raises(ValueError, match="share the stem 'a'"):
        predict_files(predictor, [tmp_path / "a.png", tmp_path / "x" / "a.png"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict_files(predictor, [tmp_path / "nope.png"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'x'}: a folder, not an image\. Fix: give its image files"):
        predict_files(predictor, [tmp_path / "x"], tmp_path / "out")  # it was "not found"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + np.arange(3, dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: has 3 channel"):
        predict_files(predictor, [tmp_path / "rgb.png"], tmp_path / "out")
    with pytest.raises(ValueError, match="mask_format"):
        predict_files(predictor, [tmp_path / "a.png"], tmp_path / "out", mask_format="jpg")


def test_a_multi_page_tiff_is_predicted_page_by_page(tmp_path, predictor):
    rng = np.random.default_rng(5)
    stack = rng.integers(0, 256, (3, 21, 26), dtype=np.uint8)  # 3 pages: tifffile would call (3, H, W) RGB
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    [record] = predict_files(predictor, [tmp_path / "stack.tif"], tmp_path / "out", save_probabilities=True, tile_size=60)
    assert record["mask"].name == "stack_mask.tif" and (record["pages"], record["height"], record["width"]) == (3, 21, 26)
    masks, probs = tifffile.imread(record["mask"]), np.load(record["probabilities"])
    assert masks.shape == (3, 21, 26) and probs.shape == (3, 21, 26, 2)
    for page in range(3):
        expected = predict_probabilities(predictor, stack[page, :, :, None] / np.float32(255), tile_size=60)
        np.testing.assert_allclose(probs[page], expected, atol=1e-6)
        np.testing.assert_array_equal(masks[page], expected.argmax(-1))


# ------------------------------------------------------------------ weights files
def test_predictor_from_a_run_directory_uses_its_normalization(tmp_path):
    variables = random_variables(CONFIG)
    save_flax_weights(jax.device_get(variables), CONFIG, tmp_path / "weights.safetensors")
    normalization = Normalization(mean=(0.5,), std=(0.25,))
    (tmp_path / "normalization.json").write_text(json.dumps(normalization.to_dict()))
    predictor = Predictor.from_weights(tmp_path)
    assert predictor.config == CONFIG and predictor.normalization == normalization
    image = _image(30, 30)
    expected = predict_probabilities(Predictor(CONFIG, variables), image, 60)
    np.testing.assert_allclose(predict_probabilities(predictor, image, 60), expected, atol=1e-6)
    np.testing.assert_allclose(predictor.normalize(np.full((2, 2, 1), 0.75)), 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without weights.safetensors"):
        Predictor.from_weights(tmp_path / "empty")


def test_a_run_directory_that_lost_its_normalization_is_refused(tmp_path):
    # It was predicted on images scaled to [0, 1] without a word: 671 of 2,000 mask pixels differed.
    save_flax_weights(jax.device_get(random_variables(CONFIG)), CONFIG, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text("{}")  # a run directory: every run writes normalization.json
    for given in (tmp_path, tmp_path / "weights.safetensors"):
        with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'normalization.json'} is missing: .* Fix: restore"):
            Predictor.from_weights(given)
    (tmp_path / "config.json").unlink()  # weights alone, as `convert` writes them: fed as the reader scales the images
    assert Predictor.from_weights(tmp_path / "weights.safetensors").normalization is None


def test_predictor_from_a_pytorch_state_dict_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from unet_torch import UNet as TorchUNet

    torch.manual_seed(0)
    model = TorchUNet(features=4, depth=2).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    variables, config = load_variables(tmp_path / "model.pt", CONFIG)
    predictor = Predictor.from_weights(tmp_path / "model.pt", CONFIG)
    assert predictor.normalization is None and config == CONFIG
    image = _image(36, 44, seed=4)
    with jax.default_matmul_precision("highest"):
        tiled = predict_probabilities(predictor, image, tile_size=60, batch_size=3)
    padded = mirror_pad(image, MARGIN, MARGIN, MARGIN, MARGIN)  # [76, 84, 1], valid
    with torch.no_grad():
        logits = model(torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()))  # [1, K, 36, 44]
    expected = torch.softmax(logits, 1)[0].numpy().transpose(1, 2, 0)  # [36, 44, K]
    # Two frameworks, float32, strict precision: measured 9.2e-8 on CPU.
    assert _relative_max_error(tiled, expected) <= 1e-6

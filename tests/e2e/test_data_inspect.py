"""`unet-jax inspect --data`: the summary of a data folder, and a warning for each way a data set
leads to all-background predictions, each shown on a folder made to have it (and absent from
one that does not)."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax.cli import main
from unet_jax.data import DataError, load_folder, make_cells
from unet_jax.data.inspect import FOREGROUND_FLOOR, inspect_folder, training_warnings

SIZE = 64


def _save(root, name, image, mask):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    (tifffile.imwrite if mask.dtype == np.uint16 else lambda p, m: Image.fromarray(m).save(p))(
        root / "masks" / f"{name}.{'tif' if mask.dtype == np.uint16 else 'png'}", mask)


def _cells(root, count=6, scale=255, seed=3):
    """Synthetic cells as 8-bit PNGs, masks 0/`scale`; returns the class masks."""
    cells = make_cells(count, size=SIZE, seed=seed)
    for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
        _save(root, f"c{i}", (image[:, :, 0] * 255).astype(np.uint8), (mask * scale).astype(np.uint8))
    return cells


def _warnings_about(report, words):
    return [w for w in report["warnings"] if words in w]


def test_a_clean_folder_is_summarised_without_warnings(tmp_path, capsys):
    cells = _cells(tmp_path)
    assert main(["inspect", "--data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] == [] and report["errors"] == []
    images, masks = report["images"], report["masks"]
    assert (images["count"], images["sizes"], images["channels"], images["dtypes"]) == (6, {"64x64": 6}, {"1": 6}, {"uint8": 6})
    assert (masks["kind"], masks["values"], masks["dtypes"]) == ("binary", [0, 255], {"uint8": 6})
    foreground = float(np.mean(np.asarray(cells.masks) > 0))
    assert masks["class_fractions"]["foreground"] == pytest.approx(foreground)
    assert sum(masks["class_fractions"].values()) == pytest.approx(1)
    assert masks["foreground_fraction"] > FOREGROUND_FLOOR  # so the sparse case below is the only cause
    assert main(["inspect", "--data", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "images: 6; sizes 64x64 (6)" in text and "masks: binary" in text and text.strip().endswith("no warnings")


def _sparse(root):
    """Four images, two of whose masks hold 9 foreground pixels, two none."""
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if i < 2:
            mask[10:13, 10:13] = 255
        _save(root, f"s{i}", rng.integers(60, 120, (SIZE, SIZE), dtype=np.uint8), mask)


def test_sparse_foreground_is_warned_about_with_the_fix(tmp_path):
    _sparse(tmp_path)
    report = inspect_folder(tmp_path)
    [warning] = _warnings_about(report, "foreground is")
    assert f"{100 * 18 / (4 * SIZE * SIZE):.2f}%" in warning and "--loss ce+dice" in warning and "2 of 4 masks hold none" in warning
    assert report["masks"]["empty"] == 2 and report["masks"]["objects_per_image"]["max"] == 1
    # Training warns the same from the samples it read.
    assert training_warnings(load_folder(tmp_path, 1, 2)) == [warning]


def test_binary_masks_saved_two_ways_are_named(tmp_path):
    _cells(tmp_path, scale=255)
    cells = make_cells(2, size=SIZE, seed=9)
    for i, (image, mask) in enumerate(zip(cells.images, cells.masks)):
        _save(tmp_path, f"z{i}", (image[:, :, 0] * 255).astype(np.uint8), mask.astype(np.uint8))  # 0/1
    [warning] = _warnings_about(inspect_folder(tmp_path), "saved two ways")
    assert "2 mark foreground with 1 (z0.png, z1.png), 6 with 255" in warning and "Fix:" in warning


def test_masks_of_class_indices_with_a_0_255_mask_among_them(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        _save(tmp_path, f"k{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), rng.integers(0, 3, (SIZE, SIZE)).astype(np.uint8))
    binary = np.where(rng.random((SIZE, SIZE)) < 0.3, 255, 0).astype(np.uint8)
    _save(tmp_path, "k3", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), binary)
    _save(tmp_path, "k4", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), rng.integers(0, 2, (SIZE, SIZE)).astype(np.uint8))
    report = inspect_folder(tmp_path)
    assert report["masks"]["kind"] == "classes"  # k4, with classes 0 and 1 only, is one of them
    assert set(report["masks"]["class_fractions"]) == {"0", "1", "2", "255"}
    [warning] = _warnings_about(report, "0/255 binary")
    assert "1 mask is 0/255 binary (k3.png) among 3 masks of class indices" in warning
    assert not _warnings_about(report, "saved two ways")


@pytest.mark.parametrize("values, kind", [((0, 127, 254), "scaled"), ((0, 85, 170, 255), "scaled"), (tuple(range(0, 256, 5)), "grey")])
def test_masks_training_would_refuse_or_misread_are_named(tmp_path, values, kind):
    rng = np.random.default_rng(2)
    for i in range(2):
        _save(tmp_path, f"m{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), rng.choice(values, (SIZE, SIZE)).astype(np.uint8))
    report = inspect_folder(tmp_path)
    assert report["masks"]["kinds"] == {kind: 2}
    [warning] = _warnings_about(report, "2 masks are")
    assert ("spread over the grey range" if kind == "scaled" else "many levels") in warning and "Fix:" in warning
    with pytest.raises(DataError):  # what the warning says: the reader refuses them for the classes they mean
        load_folder(tmp_path, 1, len(values) if kind == "scaled" else 2)


def test_object_ids_in_8_bit_files_are_named(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(2):
        ids = np.zeros((SIZE, SIZE), np.uint8)
        for k in range(20):  # 20 objects, ids 1..20: more than a class mask's levels
            ids[3 * k : 3 * k + 2, 5 + k : 15 + k] = k + 1
        _save(tmp_path, f"o{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), ids)
    report = inspect_folder(tmp_path)
    assert report["masks"]["kind"] == "instances-8bit" and report["masks"]["objects_per_image"]["max"] == 20
    [warning] = _warnings_about(report, "2 masks are object ids in 8-bit files")
    assert "16-bit PNG or TIFF" in warning
    with pytest.raises(DataError, match="16-bit"):  # the reader's own rule, which the warning anticipates
        load_folder(tmp_path, 1, 2)


def test_instance_masks_count_their_objects(tmp_path):
    rng = np.random.default_rng(3)
    for i, objects in enumerate((3, 5)):
        ids = np.zeros((SIZE, SIZE), np.uint16)
        for k in range(objects):
            ids[4 + 10 * k : 10 + 10 * k, 5:20] = 300 + k  # ids above 255: a 16-bit file
        _save(tmp_path, f"i{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), ids)
    masks = inspect_folder(tmp_path)["masks"]
    assert masks["kind"] == "instances" and masks["dtypes"] == {"uint16": 2}
    assert masks["objects_per_image"] == {"min": 3, "median": 4, "max": 5}
    assert set(masks["class_fractions"]) == {"background", "foreground"}


def test_an_image_far_brighter_and_sizes_far_apart_are_named(tmp_path):
    rng = np.random.default_rng(4)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:40, 20:40] = 255
    for i in range(5):
        _save(tmp_path, f"b{i}", rng.integers(40, 80, (SIZE, SIZE), dtype=np.uint8), mask)
    _save(tmp_path, "bright", rng.integers(200, 255, (SIZE, SIZE), dtype=np.uint8), mask)
    big = np.zeros((5 * SIZE, 4 * SIZE), np.uint8)
    big[100:200, 100:200] = 255
    _save(tmp_path, "huge", rng.integers(40, 80, big.shape, dtype=np.uint8), big)
    report = inspect_folder(tmp_path)
    [bright] = _warnings_about(report, "far brighter")
    assert "1 image is far brighter" in bright and "bright.png" in bright and not _warnings_about(report, "far darker")
    [sizes] = _warnings_about(report, "sizes differ")
    assert "20x" in sizes and "320x256 (huge.png)" in sizes
    assert training_warnings(load_folder(tmp_path, 1, 2)) == [bright, sizes]


def test_an_isbi_stack_is_inspected_slice_by_slice(tmp_path):
    cells = make_cells(3, size=SIZE, seed=5)
    tifffile.imwrite(tmp_path / "train-volume.tif", (cells.images[..., 0] * 255).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", (cells.masks * 255).astype(np.uint8), photometric="minisblack")
    report = inspect_folder(tmp_path / "train-volume.tif")
    assert report["samples"] == 3 and report["images"]["sizes"] == {"64x64": 3} and report["masks"]["kind"] == "binary"


def test_files_training_would_refuse_are_listed_and_the_exit_status_is_2(tmp_path, capsys):
    _cells(tmp_path, count=3)
    stored = (tmp_path / "masks" / "c1.png").read_bytes()
    (tmp_path / "masks" / "c1.png").write_bytes(stored[: len(stored) // 2])  # its header intact, its pixels cut
    assert main(["inspect", "--data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "error: " in out and "c1.png: cannot be read" in out and "samples" in out
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / "c0.png").read_bytes())  # no mask: the reader's error
    assert main(["inspect", "--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "extra.png: no mask" in error and "Traceback" not in error


@pytest.mark.slow
def test_train_starts_by_logging_the_warnings(tmp_path, capsys):
    _sparse(tmp_path / "data")
    assert main(["train", "--data", str(tmp_path / "data"), "--val-fraction", "0.25", "--run-dir", str(tmp_path / "run"),
                 "--features", "4", "--depth", "2", "--tile-size", "60", "--batch-size", "2", "--steps", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data: warning: foreground is" in out and out.index("data: warning") < out.index("first step")

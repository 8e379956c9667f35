"""Reading a folder: every supported format reads right, every bad input names its file and the fix."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax.data import DataError, Normalization, image_pages, load_folder, make_cells, read_image, split_validation
from unet_jax.data.decoding import read_image_pages


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray(array).save(path)
    else:
        tifffile.imwrite(path, array)
    return path


def _pair(root, stem, image, mask, image_ext=".png", mask_name=None):
    _write(root / "images" / f"{stem}{image_ext}", image)
    _write(root / "masks" / (mask_name or f"{stem}.png"), mask)


def _grey8(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def _binary(h=6, w=8):
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 255
    return mask


# ------------------------------------------------------------------ reading
def test_png_8bit_with_binary_255_mask(tmp_path):
    image = _grey8()
    _pair(tmp_path, "a", image, _binary())
    samples = load_folder(tmp_path, in_channels=1, num_classes=2)
    assert len(samples) == 1 and samples.names[0].endswith("a.png")
    assert samples.images[0].shape == (6, 8, 1) and samples.images[0].dtype == np.float32
    np.testing.assert_allclose(samples.images[0][..., 0], image / 255, rtol=1e-6)
    np.testing.assert_array_equal(samples.masks[0], (_binary() > 0).astype(np.int32))
    assert samples.masks[0].dtype == np.int32 and samples.instances[0] is None


def test_png_16bit_scaled_by_65535_and_class_index_mask(tmp_path):
    image = np.array([[0, 1000, 65535], [30000, 2, 7]], np.uint16)
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    _pair(tmp_path, "a", image, mask)
    samples = load_folder(tmp_path, in_channels=1, num_classes=3)
    np.testing.assert_allclose(samples.images[0][..., 0], image / 65535, rtol=1e-6)
    np.testing.assert_array_equal(samples.masks[0], mask)


def test_tiff_images_and_mask_suffix_pairing_sorted_by_name(tmp_path):
    floats = np.linspace(-1, 3, 48, dtype=np.float32).reshape(6, 8)
    _pair(tmp_path, "b", floats, (_binary() > 0).astype(np.uint8), image_ext=".tif", mask_name="b_mask.tif")
    _pair(tmp_path, "a", _grey8(), _binary(), image_ext=".tiff", mask_name="a.png")
    samples = load_folder(tmp_path, in_channels=1, num_classes=2)
    assert [n.rsplit("/", 1)[-1] for n in samples.names] == ["a.tiff", "b.tif"]
    np.testing.assert_array_equal(samples.images[1][..., 0], floats)  # floats are kept as stored
    train, val = split_validation(samples, 0.5, seed=0)
    assert isinstance(train.images, list) and sorted(train.names + val.names) == list(samples.names)


def test_rgb_for_three_channels_and_grey_saved_as_rgb_for_one(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    _pair(tmp_path / "colour", "a", rgb, _binary())
    samples = load_folder(tmp_path / "colour", in_channels=3, num_classes=2)
    np.testing.assert_allclose(samples.images[0], rgb / 255, rtol=1e-6)
    grey = np.repeat(_grey8()[..., None], 3, axis=-1)
    _pair(tmp_path / "grey", "a", grey, _binary())
    assert load_folder(tmp_path / "grey", in_channels=1, num_classes=2).images[0].shape == (6, 8, 1)


def test_uint16_instance_mask_keeps_ids(tmp_path):
    ids = np.zeros((6, 8), np.uint16)
    for k in range(1, 6):
        ids[k - 1, k : k + 2] = k
    _pair(tmp_path, "a", _grey8(), ids, mask_name="a.tif")
    samples = load_folder(tmp_path, in_channels=1, num_classes=2)
    np.testing.assert_array_equal(samples.masks[0], (ids > 0).astype(np.int32))
    np.testing.assert_array_equal(samples.instances[0], ids.astype(np.int32))


@pytest.mark.parametrize("point_at_file", [False, True])
def test_isbi_stacks_one_sample_per_slice(tmp_path, point_at_file):
    volume = np.random.default_rng(2).integers(0, 256, (3, 10, 12)).astype(np.uint8)
    labels = np.where(np.random.default_rng(3).random((3, 10, 12)) < 0.6, 255, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    samples = load_folder(tmp_path / "train-volume.tif" if point_at_file else tmp_path, in_channels=1, num_classes=2)
    assert len(samples) == 3 and "slice 2" in samples.names[2]
    for k in range(3):
        np.testing.assert_allclose(samples.images[k][..., 0], volume[k] / 255, rtol=1e-6)
        np.testing.assert_array_equal(samples.masks[k], labels[k] // 255)


# ------------------------------------------------------------------ bad inputs
def _error(path, in_channels=1, num_classes=2):
    with pytest.raises(DataError) as info:
        load_folder(path, in_channels=in_channels, num_classes=num_classes)
    return str(info.value)


def test_all_unpaired_files_are_reported_at_once(tmp_path):
    _pair(tmp_path, "good", _grey8(), _binary())
    _write(tmp_path / "images" / "lonely.png", _grey8())
    _write(tmp_path / "images" / "alone.tif", _grey8())
    _write(tmp_path / "masks" / "orphan.png", _binary())
    message = _error(tmp_path)
    assert "3 unpaired" in message
    assert "lonely.png: no mask" in message and "alone.tif: no mask" in message and "orphan.png: no image" in message


def test_links_to_nothing_and_folders_named_as_images_are_named_not_dropped(tmp_path):
    # They were skipped without a word: summary.json showed fewer images, or "no mask" for masks/0.png.
    _pair(tmp_path, "a", _grey8(), _binary())
    _pair(tmp_path, "b", _grey8(), _binary())
    (tmp_path / "images" / "b.png").rename(tmp_path / "b.png")
    (tmp_path / "images" / "b.png").symlink_to(tmp_path / "b.png")
    assert len(load_folder(tmp_path, in_channels=1, num_classes=2).images) == 2  # a link to a file is a file
    (tmp_path / "b.png").unlink()
    assert "images: ['b.png'] link to nothing (a missing file, or a loop of links). Fix: " in _error(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "b.png").symlink_to(tmp_path / "images" / "c.png")
    (tmp_path / "images" / "c.png").symlink_to(tmp_path / "images" / "b.png")  # a loop
    assert "['b.png', 'c.png'] link to nothing" in _error(tmp_path)
    for name in ("b.png", "c.png"):
        (tmp_path / "images" / name).unlink()
    (tmp_path / "masks" / "b.png").unlink()
    (tmp_path / "masks" / "b.png").mkdir()
    assert "masks: ['b.png'] are folders, not image files" in _error(tmp_path)


def test_size_mismatch_names_both_files(tmp_path):
    _pair(tmp_path, "a", _grey8(6, 8), _binary(6, 9))
    message = _error(tmp_path)
    assert "a.png is 6x8" in message and "masks/a.png is 6x9" in message


def test_three_valued_8bit_mask_for_two_classes_is_an_error_not_an_instance_mask(tmp_path):
    _pair(tmp_path, "a", _grey8(), np.array([[0, 1, 2, 1]] * 6, np.uint8)[:, [0, 1, 2, 3, 0, 1, 2, 3]])
    message = _error(tmp_path)
    assert "masks/a.png" in message and "num_classes=3" in message and "16-bit" in message
    assert load_folder(tmp_path, in_channels=1, num_classes=3).masks[0].max() == 2


def test_wide_mask_over_num_classes_is_an_error_for_more_than_two_classes(tmp_path):
    _pair(tmp_path, "a", _grey8(), np.arange(48, dtype=np.uint16).reshape(6, 8), mask_name="a.tif")
    assert "masks/a.tif" in _error(tmp_path, num_classes=3)


def test_missing_subfolder_empty_folder_and_missing_path(tmp_path):
    _write(tmp_path / "images" / "a.png", _grey8())
    assert "masks: missing" in _error(tmp_path)
    (tmp_path / "masks").mkdir()
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert "no PNG or TIFF images" in _error(tmp_path / "empty")
    assert "no such folder" in _error(tmp_path / "nowhere")
    assert "images: missing" in _error(tmp_path / "empty" / "masks")


def test_isbi_volume_without_labels(tmp_path):
    tifffile.imwrite(tmp_path / "train-volume.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    assert "train-labels.tif: missing" in _error(tmp_path / "train-volume.tif")


def test_isbi_labels_saved_as_the_samples_of_one_page_are_described_so(tmp_path):
    # They were described as "(1, 64, 64)" only: one page, its 4 samples per pixel read as colours.
    tifffile.imwrite(tmp_path / "train-volume.tif", np.zeros((4, 64, 64), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", np.zeros((64, 64, 4), np.uint8), photometric="rgb", extrasamples=[0])
    message = _error(tmp_path)
    assert "train-labels.tif holds (1, 64, 64), with 4 samples per pixel in each page (read as colour channels, " in message
    tifffile.imwrite(tmp_path / "train-labels.tif", np.zeros((3, 64, 64), np.uint8), photometric="minisblack")
    assert "train-labels.tif holds (3, 64, 64). Fix: use matching stacks" in _error(tmp_path)  # no note where it does not apply


def test_truncated_png_names_the_file(tmp_path):
    _pair(tmp_path, "a", np.random.default_rng(4).integers(0, 256, (64, 64)).astype(np.uint8), np.zeros((64, 64), np.uint8))
    path = tmp_path / "images" / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(tmp_path)
    assert "images/a.png: cannot be read" in message


def test_channel_count_mismatch(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    _pair(tmp_path, "a", rgb, _binary())
    message = _error(tmp_path, in_channels=1)
    assert "images/a.png: has 3 channel(s)" in message and "in_channels=3" in message
    _pair(tmp_path / "g", "a", _grey8(), _binary())
    assert "has 1 channel(s)" in _error(tmp_path / "g", in_channels=3)


def test_unsupported_files_are_named(tmp_path):
    _pair(tmp_path, "a", _grey8(), _binary())
    (tmp_path / "images" / "notes.txt").write_text("hi")
    assert "notes.txt" in _error(tmp_path)


# ------------------------------------------------------------------ normalisation and split
def test_normalization_pools_all_pixels_per_channel_and_round_trips_json():
    rng = np.random.default_rng(6)
    images = [rng.random((5, 7, 3), dtype=np.float32), rng.random((9, 4, 3), dtype=np.float32) * 3]
    norm = Normalization.from_images(images)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64)
    np.testing.assert_allclose(norm.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(norm.std, pixels.std(axis=0), rtol=1e-6)
    out = np.concatenate([norm.apply(im).reshape(-1, 3) for im in images])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-5)
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    assert Normalization.from_images([np.ones((2, 2, 1), np.float32)]).std == (1.0,)  # constant: no scaling
    with pytest.raises(ValueError):
        norm.apply(np.zeros((2, 2, 1), np.float32))


def test_split_validation_is_deterministic_disjoint_and_complete():
    samples = make_cells(10, size=16, seed=0)
    train, val = split_validation(samples, 0.3, seed=1)
    again_train, _ = split_validation(samples, 0.3, seed=1)
    assert (len(train), len(val)) == (7, 3) and train.names == again_train.names
    assert set(train.names).isdisjoint(val.names) and set(train.names) | set(val.names) == set(samples.names)
    index = samples.names.index(val.names[0])
    np.testing.assert_array_equal(val.images[0], samples.images[index])
    assert isinstance(train.images, np.ndarray) and train.images.shape == (7, 16, 16, 1)
    assert len({split_validation(samples, 0.3, seed=s)[1].names for s in range(5)}) > 1  # the seed matters
    assert len(split_validation(samples, 0.0)[1]) == 0
    with pytest.raises(ValueError):
        split_validation(samples.take([0]), 0.5)


def test_a_multi_page_tiff_among_the_images_gets_the_right_advice(tmp_path):
    # It used to read as "64 channel(s) ... set in_channels=64".
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((64, 16, 16), np.uint8))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks" / "a.png")
    message = _error(tmp_path)
    assert "images/a.tif: a stack of 64 images" in message and "-volume.tif" in message and "channel" not in message


def test_planar_rgb_is_one_image_not_a_stack(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 8, 9), np.uint8), photometric="rgb", planarconfig="separate")
    assert image_pages(tmp_path / "rgb.tif") == 1 and read_image(tmp_path / "rgb.tif", 3).shape == (8, 9, 3)
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 8, 9, 3), np.uint8), photometric="rgb")
    assert image_pages(tmp_path / "pages.tif") == 5


def test_a_tiff_declaring_more_pixels_than_pil_takes_is_refused_before_decoding(tmp_path, monkeypatch):
    # A 1.6 MB zlib TIFF of 40960x40960 was decoded whole (8.4 GB) where PIL refuses such a PNG.
    # Here the cap is lowered to PIL's for a 100x100 image instead of writing gigabytes.
    image = _write(tmp_path / "big.tif", np.zeros((100, 100), np.uint8))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 100, 100), np.uint8), photometric="minisblack")
    assert read_image(image, 1).shape == (100, 100, 1)  # under PIL's cap, as usual
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 2 - 1)

    def decoded(*_, **__):
        raise AssertionError("decoded")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", decoded)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", decoded)
    with pytest.raises(DataError, match=r"big.tif: page 0 declares 100x100 = 10000 pixels, more than the 9998 that PIL "):
        read_image(image, 1)
    with pytest.raises(DataError, match="Fix: cut it into smaller images"):
        read_image_pages(stack, 1)
    with pytest.raises(Image.DecompressionBombError):  # PIL's own rule for a PNG of that size
        Image.open(_write(tmp_path / "big.png", np.zeros((100, 100), np.uint8)))

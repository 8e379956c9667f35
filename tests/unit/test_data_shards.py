"""Each process reads its own share: rows draw from their shard, a share reads only its files, the
statistics add up over the shares, and a process's batch rows equal the whole batch's."""

import types

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_jax.config import ConfigError, TrainConfig, UNetConfig
from unet_jax.data import DataError, Normalization, decoding, sample_tiles
from unet_jax.data.cells import cells_source, make_cells
from unet_jax.data.pairing import index_folder, load_folder
from unet_jax.data.samples import NotRead, PixelMoments
from unet_jax.data.tiles import TileRequest, rows_shards, shard_images
from unet_jax.training.sampling import combine, load_data, read_share, settle_shards, sources_of

N_IMAGES, BATCH, INPUT, OUTPUT = 7, 8, 60, 20


def _numbered_images(n=N_IMAGES, size=40):
    """Image i holds the value i everywhere, so every tile says which image it was cut from."""
    images = [np.full((size + i, size, 1), i, np.float32) for i in range(n)]  # sizes differ: draws depend on them
    return images, [np.zeros(image.shape[:2], np.int32) for image in images]


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_each_row_draws_only_from_its_blocks_shard(shards):
    images, masks = _numbered_images()
    drawn = {b: set() for b in range(BATCH)}
    for step in range(40):
        x, _ = sample_tiles(images, masks, np.random.default_rng([0, step]), TileRequest(BATCH, INPUT, OUTPUT, shards=shards))
        for b in range(BATCH):
            drawn[b].add(int(x[b, 0, 0, 0]))
    for b, seen in drawn.items():
        shard = b * shards // BATCH
        assert seen <= set(range(shard, N_IMAGES, shards)), (b, seen)
    assert set().union(*drawn.values()) == set(range(N_IMAGES))  # and every image is drawn by some row


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_a_process_with_only_its_share_cuts_the_whole_batchs_rows(shards):
    images, masks = _numbered_images()
    whole = sample_tiles(images, masks, np.random.default_rng(3), TileRequest(BATCH, INPUT, OUTPUT, shards=shards))
    for rows in (range(0, 4), range(4, 8), range(2, 4)):
        mine = set(shard_images(rows_shards(rows, BATCH, shards), N_IMAGES, shards))
        share_images = [image if i in mine else NotRead(image.shape) for i, image in enumerate(images)]
        share_masks = [mask if i in mine else NotRead(mask.shape) for i, mask in enumerate(masks)]
        request = TileRequest(BATCH, INPUT, OUTPUT, rows=rows, shards=shards)
        part = sample_tiles(share_images, share_masks, np.random.default_rng(3), request)
        for got, want in zip(part, whole):
            np.testing.assert_array_equal(got, want[rows.start : rows.stop])


def test_cutting_a_tile_from_an_image_not_read_is_an_error_not_zeros():
    images, masks = _numbered_images()
    images[0], masks[0] = NotRead(images[0].shape), NotRead(masks[0].shape)
    with pytest.raises(ValueError, match="was not read here"):
        for seed in range(20):  # some batch draws image 0
            sample_tiles(images, masks, np.random.default_rng(seed), TileRequest(BATCH, INPUT, OUTPUT))


@pytest.mark.parametrize("shards", [0, 8])
def test_a_shard_count_without_an_image_or_a_row_for_each_shard_is_refused(shards):
    images, masks = _numbered_images()
    with pytest.raises(ValueError, match="shards"):
        sample_tiles(images, masks, np.random.default_rng(0), TileRequest(BATCH, INPUT, OUTPUT, shards=shards))


def test_statistics_added_over_shards_equal_those_of_all_images():
    images = list(make_cells(6, 32, seed=4).images)
    shards = [PixelMoments.of(images[s::3]) for s in range(3)]
    together, apart = Normalization.from_images(images), Normalization.from_moments(shards)
    np.testing.assert_allclose(apart.mean, together.mean, rtol=1e-12)
    np.testing.assert_allclose(apart.std, together.std, rtol=1e-12)
    assert PixelMoments.from_dict(shards[1].to_dict()) == shards[1]


# ------------------------------------------------------------------ sources: sizes first, pixels on demand
def _folder(root, n=5):
    for i in range(n):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10 + i, 12), 10 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((10 + i, 12), np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def _recording_reads(monkeypatch):
    opened = []
    read = decoding.read

    def recorded(path, palette_to_rgb):
        opened.append(path.name)
        return read(path, palette_to_rgb)

    monkeypatch.setattr(decoding, "read", recorded)
    return opened


def test_a_folder_is_sized_from_headers_and_a_share_reads_only_its_files(tmp_path, monkeypatch):
    data = _folder(tmp_path)
    opened = _recording_reads(monkeypatch)
    source = index_folder(data, 1, 2)
    assert opened == [] and source.sizes == tuple((10 + i, 12) for i in range(5))
    share = source.read([1, 3])
    assert sorted(opened) == ["1.png", "1.png", "3.png", "3.png"]  # image and mask of each, nothing else
    assert share.held == [1, 3] and isinstance(share.images[0], NotRead) and share.images[0].shape == (10, 12, 1)
    np.testing.assert_array_equal(share.images[3], load_folder(data, 1, 2).images[3])


def test_an_isbi_stack_reads_only_the_pages_of_its_share(tmp_path, monkeypatch):
    volume = np.stack([np.full((9, 11), 20 * k, np.uint8) for k in range(4)])
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", (volume > 30).astype(np.uint8) * 255, photometric="minisblack")
    source = index_folder(tmp_path, 1, 2)
    assert source.sizes == ((9, 11),) * 4
    whole_stacks = _recording_reads(monkeypatch)
    share = source.read([2])
    assert share.held == [2] and whole_stacks == []  # page 2 of each file, not the stacks
    whole = load_folder(tmp_path, 1, 2)
    np.testing.assert_array_equal(share.images[2], whole.images[2])
    np.testing.assert_array_equal(share.masks[2], whole.masks[2])
    np.testing.assert_array_equal(whole.images[3][..., 0], volume[3] / np.float32(255))


def test_cells_made_for_a_share_equal_those_made_for_all():
    share, whole = cells_source(4, 32, seed=2).read([1, 2]), make_cells(4, 32, seed=2)
    assert share.held == [1, 2]
    for i in (1, 2):
        np.testing.assert_array_equal(share.images[i], whole.images[i])
        np.testing.assert_array_equal(share.instances[i], whole.instances[i])


# ------------------------------------------------------------------ a run's share
def _process(rows):
    """A stand-in for the devices of one process of a multi-process run: these rows of the batch."""
    return types.SimpleNamespace(rows=lambda batch_size: rows)


def _cfg(data, **overrides):
    model = UNetConfig(features=4, depth=2)
    return TrainConfig(model=model, tile_size=60, batch_size=4, data=str(data), val_fraction=0.2, **overrides)


def test_each_process_of_a_two_shard_run_reads_only_its_shards_files(tmp_path, monkeypatch):
    data = _folder(tmp_path, n=10)
    opened = _recording_reads(monkeypatch)
    cfg = _cfg(data, data_shards=2)
    sources = sources_of(cfg)
    train, val, second = read_share(cfg, _process(range(2, 4)), sources)  # rows 2-3: shard 1
    assert len(train) == 8 and train.held == [1, 3, 5, 7]
    names = {train.names[i].split("/")[-1] for i in train.held}
    assert set(opened) == names | {name.split("/")[-1] for name in val.names}  # its share, and the validation images
    first = read_share(cfg, _process(range(0, 2)), sources)[2]
    together = combine(train, val, [first, second], shards=2)
    assert together.read_per_process == (4, 4)
    everything = load_data(cfg, _process(range(4)), sources)  # one process: both shards
    assert everything.train.held == list(range(8)) and everything.moments == together.moments
    fitted, direct = Normalization.from_moments(together.moments), Normalization.from_images(everything.train.images)
    np.testing.assert_allclose(fitted.mean + fitted.std, direct.mean + direct.std, rtol=1e-12)


def test_a_bad_file_in_one_process_share_stops_every_process_naming_it(tmp_path):
    data = _folder(tmp_path, n=10)
    (data / "images" / "3.png").write_bytes((data / "images" / "3.png").read_bytes()[:-30])  # the header survives
    cfg = _cfg(data, data_shards=2)
    first, second = (read_share(cfg, _process(rows), sources_of(cfg)) for rows in (range(0, 2), range(2, 4)))
    assert "error" not in first[2] and "3.png" in second[2]["error"]
    with pytest.raises(DataError, match=r"process 1 of 2: .*3\.png: cannot be read"):
        combine(first[0], first[1], [first[2], second[2]], shards=2)


def test_zero_shards_means_one_per_process_and_too_many_shards_are_refused(tmp_path):
    data = _folder(tmp_path, n=5)
    sources = sources_of(_cfg(data))
    assert settle_shards(_cfg(data), len(sources[0])) == 1  # one process
    loaded = load_data(_cfg(data, data_shards=1), _process(range(4)), sources)
    assert loaded.train.held == [0, 1, 2, 3] and len(loaded.moments) == 1
    with pytest.raises(ConfigError, match="--data-shards 5: .* Fix: --data-shards between 1 and 4"):
        settle_shards(_cfg(data, data_shards=5), len(sources[0]))


def test_configs_saved_before_shards_existed_resume_drawing_from_all_images():
    stored = TrainConfig().to_dict()
    del stored["data_shards"]
    assert TrainConfig.from_dict(stored).data_shards == 1

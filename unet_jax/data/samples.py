"""The container every data source returns, and the host-side steps applied to it.

One `Samples` type serves the synthetic cells (stacked arrays, all one size) and a user's
folder (lists, sizes may differ), so tiling, splitting and normalisation are written once.
In a run of several processes each reads only its own share of the training images; the
others stand in its `Samples` as `NotRead`, which knows the sample's size and nothing more.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class NotRead:
    """A sample another process reads: only its shape is known here (tile positions are drawn from it).

    It is not an array, so code that would cut a tile from it fails at once instead of reading zeros.
    """

    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Samples:
    """Images with their masks. Index i of every field describes the same sample.

    `images` and `masks` are either stacked arrays (`[N, H, W, C]`, `[N, H, W]`) or lists
    of per-sample arrays (`[H, W, C]`, `[H, W]`); code that consumes them only indexes.
    """

    images: Sequence[np.ndarray]  # float32 [H, W, C] each
    masks: Sequence[np.ndarray]  # int32 [H, W] each, class indices 0 .. num_classes-1
    # int32 [H, W] each, 0 background and 1..K per object; an entry is None where the
    # mask file held class indices, so no object identities are known.
    instances: Sequence[Optional[np.ndarray]]
    names: tuple[str, ...]  # where each sample came from, for error messages
    # Any entry of images, masks and instances may be a `NotRead` (the same index in all three).

    def __post_init__(self):
        counts = {len(self.images), len(self.masks), len(self.instances), len(self.names)}
        if len(counts) != 1:
            raise ValueError(
                f"Samples fields disagree in length: images {len(self.images)}, masks {len(self.masks)}, "
                f"instances {len(self.instances)}, names {len(self.names)}"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def channels(self) -> int:
        """Channels C of the images (all samples share it); ValueError when empty."""
        if len(self) == 0:
            raise ValueError("no samples, so no channel count")
        return int(self.images[0].shape[-1])

    @property
    def held(self) -> list[int]:
        """The indices of the samples this process holds (all of them, unless it holds a share)."""
        return [i for i, image in enumerate(self.images) if not isinstance(image, NotRead)]

    def take(self, indices: Sequence[int]) -> "Samples":
        """The samples at `indices`, in that order (stacked arrays stay stacked)."""
        indices = [int(i) for i in indices]
        return Samples(
            images=_take(self.images, indices),
            masks=_take(self.masks, indices),
            instances=_take(self.instances, indices),
            names=tuple(self.names[i] for i in indices),
        )

    def map_images(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Samples":
        """The same samples with `fn` applied to each image read (e.g. `Normalization.apply`)."""
        if isinstance(self.images, np.ndarray):
            images = fn(self.images)  # fn works on [..., C], so the whole stack at once
        else:
            images = [image if isinstance(image, NotRead) else fn(image) for image in self.images]
        return dataclasses.replace(self, images=images)


def _take(values, indices: list[int]):
    if isinstance(values, np.ndarray):
        return values[np.asarray(indices, dtype=np.int64)]
    return [values[i] for i in indices]


def split_validation(samples, fraction: float, seed: int = 0):
    """Split `samples` (a `Samples`, or a `Source` not yet read) into (train, val) of the same type,
    with a seeded shuffle, so a resumed run sees the same split.

    `round(fraction * N)` samples go to validation, at least one when `fraction > 0`, and at
    least one stays for training. Each part keeps the original order of its samples.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n = len(samples)
    n_val = 0 if fraction == 0 else max(1, round(fraction * n))
    if n_val >= n:
        raise ValueError(
            f"cannot hold out {n_val} of {n} samples for validation and still train: "
            "add images, or give the validation images separately (unet-jax train --val-data DIR)"
        )
    order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return samples.take(train), samples.take(val)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel standardisation, `(x - mean) / std`, fitted once on the training images.

    The rule: images are first scaled to [0, 1] by their dtype's maximum (255 for 8-bit,
    65535 for 16-bit; float files as stored). Then one mean and std per channel are taken
    over every pixel of every training image (pooled, so large images weigh more), and the
    same numbers are applied to validation and to prediction. Statistics over the whole
    training set, not per image, keep real brightness differences between images and make a
    prediction independent of what else is in the image; saving them with the run (JSON via
    `to_dict`) means prediction normalises exactly as training did.
    """

    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]  # one per channel, > 0

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"Normalization needs one mean and one std per channel, got {self.mean}, {self.std}")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"Normalization std must be finite and positive, got {self.std}")

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray]) -> "Normalization":
        """Fit on images `[H, W, C]` (a list, or a stack `[N, H, W, C]`)."""
        return cls.from_moments([PixelMoments.of(images)])

    @classmethod
    def from_moments(cls, parts: Sequence["PixelMoments"]) -> "Normalization":
        """Fit on the pooled pixels of several parts (each process's share of the images), added in order."""
        total, total_sq, count = 0.0, 0.0, 0
        for part in parts:
            total, total_sq, count = total + np.asarray(part.total), total_sq + np.asarray(part.total_sq), count + part.count
        if count == 0:
            raise ValueError("cannot fit a Normalization on no images")
        mean = total / count
        var = np.maximum(total_sq / count - np.square(mean), 0.0)
        std = np.sqrt(var)
        std = np.where(std > 1e-6, std, 1.0)  # a constant channel carries no scale: leave it as is
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardise `x` `[..., C]`; returns float32 of the same shape."""
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"image has {x.shape[-1]} channels, the normalisation was fitted on {len(self.mean)}")
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        try:
            return cls(tuple(float(m) for m in d["mean"]), tuple(float(s) for s in d["std"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"a Normalization dict needs lists 'mean' and 'std', got {d!r}") from error


@dataclasses.dataclass(frozen=True)
class PixelMoments:
    """Per-channel sums of pixel values and of their squares, and the pixel count, in float64:
    what `Normalization` is fitted from, added up over shares of the images."""

    total: tuple[float, ...]
    total_sq: tuple[float, ...]
    count: int

    @classmethod
    def of(cls, images: Sequence[np.ndarray]) -> "PixelMoments":
        """The moments of images `[H, W, C]` (a list, or a stack `[N, H, W, C]`), pooled."""
        total = total_sq = 0.0
        count = 0
        for image in images:
            pixels = np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1])  # [H*W, C]
            total = total + pixels.sum(axis=0)
            total_sq = total_sq + np.square(pixels).sum(axis=0)
            count += pixels.shape[0]
        return cls(tuple(np.atleast_1d(total).tolist()), tuple(np.atleast_1d(total_sq).tolist()), count)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # floats survive JSON exactly (repr round-trips)

    @classmethod
    def from_dict(cls, d: dict) -> "PixelMoments":
        return cls(tuple(d["total"]), tuple(d["total_sq"]), int(d["count"]))

"""A data set before its pixels are read: every sample's name and size, and its pixels on demand.

Listing a folder (file names, pairing, image headers) is cheap and every process of a run
does it; reading the pixels is what each process does only for its own share.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from unet_jax.data.samples import NotRead, Samples

# Reads the samples at these indices: (image [H, W, C], mask [H, W], instance ids [H, W] or None) each.
Loader = Callable[[Sequence[int]], list[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]]
# Whether the masks at these indices hold instance labels, from the masks alone (no image read).
InstanceProbe = Callable[[Sequence[int]], list[bool]]


@dataclasses.dataclass(frozen=True)
class Source:
    """A data set whose samples are listed and sized; `read` reads the pixels of the ones asked for."""

    names: tuple[str, ...]  # where each sample comes from, for error messages
    sizes: tuple[tuple[int, int], ...]  # (H, W) of each sample, known before its pixels are read
    channels: int  # C of every image
    load: Loader = dataclasses.field(repr=False)
    probe_instances: Optional[InstanceProbe] = dataclasses.field(default=None, repr=False)  # None: read the samples

    def __len__(self) -> int:
        return len(self.names)

    def take(self, indices: Sequence[int]) -> "Source":
        """The samples at `indices`, in that order (e.g. the training part of a split)."""
        indices = [int(i) for i in indices]
        probe = self.probe_instances
        return Source(tuple(self.names[i] for i in indices), tuple(self.sizes[i] for i in indices), self.channels,
                      lambda wanted: self.load([indices[i] for i in wanted]),
                      None if probe is None else (lambda wanted: probe([indices[i] for i in wanted])))

    def all_instance_masks(self) -> bool:
        """Whether every mask holds instance labels (and there is at least one): the masks are read
        for it, the images too where the source has no mask-only probe."""
        if len(self) == 0:
            return False
        if self.probe_instances is not None:
            return all(self.probe_instances(list(range(len(self)))))
        return all(ids is not None for ids in self.read().instances)

    def read(self, indices: Optional[Sequence[int]] = None) -> Samples:
        """The samples with the pixels of those at `indices` (default: all) read, the rest `NotRead`."""
        indices = range(len(self)) if indices is None else sorted(set(int(i) for i in indices))
        loaded = dict(zip(indices, self.load(list(indices))))
        for i, (image, _, _) in loaded.items():
            if image.shape[:2] != tuple(self.sizes[i]):  # tile positions are drawn from the listed sizes
                raise ValueError(f"{self.names[i]}: listed as {self.sizes[i]} but read as {image.shape[:2]}")
        images, masks, instances = [], [], []
        for i, (h, w) in enumerate(self.sizes):
            image, mask, ids = loaded.get(i, (NotRead((h, w, self.channels)), NotRead((h, w)), NotRead((h, w))))
            images.append(image)
            masks.append(mask)
            instances.append(ids)
        return Samples(images=images, masks=masks, instances=instances, names=self.names)

"""A synthetic fluorescence-microscopy data set made in code, so tests and demos need no download.

It imitates what makes the paper's cell-segmentation task hard and what a U-Net must learn:
irregular blobs of varied size and brightness, many of them touching, seen through a blurred
optical system with uneven illumination and shot noise. Foreground and background stay clearly
separable, so a small U-Net reaches a foreground Dice above 0.9 in minutes on a CPU.

Each image is drawn from its own child of `np.random.SeedSequence(seed)`, so image i depends only
on (seed, i, size, layout): `make_cells(8)` starts with the 4 images of `make_cells(4)`.

Two layouts: "mixed" (about two thirds of the cells are placed against another, the rest
anywhere) and "touching" (nearly every cell is placed against another and more of the image is
covered), where the only thing between two cells is the faint seam where both dim towards their
edge: plain cross-entropy on the class mask merges them, which is what the paper's weight map is for.
"""

from __future__ import annotations

import numpy as np

from unet_jax.data.samples import Samples
from unet_jax.data.source import Source

RADIUS_RANGE = (6.0, 15.0)  # mean cell radius in pixels (fixed: the "microscope" does not zoom)
# Per layout: the chance that a new cell is placed against an existing one, the share of the
# image the cells aim to cover, and how much a cell dims from its centre to its edge (which
# draws the seam between touching cells; a real membrane stain shows one much like it).
LAYOUTS = {"mixed": (0.65, (0.3, 0.45), 0.35), "touching": (0.97, (0.45, 0.6), 0.6)}
HARMONICS = np.arange(2, 6)  # low-frequency radial perturbations cos(h * theta), h = 2..5


def make_cells(num_images: int, size: int = 256, seed: int = 0, layout: str = "mixed") -> Samples:
    """`num_images` square images of side `size` with their class masks and instance labels.

    images float32 [N, size, size, 1] in [0, 1]; masks int32 [N, size, size] (0 background,
    1 cell); instances int32 [N, size, size] (0 background, 1..K per cell, K varies by image).
    """
    samples = cells_source(num_images, size, seed, layout).read()
    instances = np.stack(samples.instances) if num_images else np.zeros((0, size, size), np.int32)  # [N, H, W]
    return Samples(
        images=np.stack(samples.images) if num_images else np.zeros((0, size, size, 1), np.float32),  # [N, H, W, 1]
        masks=(instances > 0).astype(np.int32),
        instances=instances,
        names=samples.names,
    )


def cells_source(num_images: int, size: int = 256, seed: int = 0, layout: str = "mixed") -> Source:
    """The cells of `make_cells` as a `Source`: image i is made only when it is read."""
    if num_images < 0 or size < 8:
        raise ValueError(f"need num_images >= 0 and size >= 8, got {num_images}, {size}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    children = np.random.SeedSequence(seed).spawn(num_images)

    def load(indices):
        made = []
        for i in indices:
            rng = np.random.default_rng(children[i])
            labels, distance, brightness = _draw_cells(rng, size, layout)
            image = _photograph(rng, labels, distance, brightness, edge_dimming=LAYOUTS[layout][2])
            made.append((image[:, :, None].astype(np.float32), (labels > 0).astype(np.int32), labels.astype(np.int32)))
        return made

    names = tuple(f"cells(seed={seed}{'' if layout == 'mixed' else f', {layout}'})[{i}]" for i in range(num_images))
    return Source(names, ((size, size),) * num_images, 1, load)


def _place_centres(rng: np.random.Generator, size: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres [K, 2] and mean radii [K].

    Most cells are put next to an existing one, closer than the sum of their radii, so they
    overlap; `_draw_cells` then splits the overlap, which makes touching cells with a shared
    border. Centres closer than 0.6x the radius sum are rejected so no cell swallows another.
    """
    attach, coverage, _ = LAYOUTS[layout]
    target_area = rng.uniform(*coverage) * size * size  # about this much foreground
    centres, radii, area = [], [], 0.0
    for _ in range(40 * size * size // 1000 + 50):  # bounded attempts; most succeed
        if area >= target_area:
            break
        radius = rng.uniform(*RADIUS_RANGE)
        if centres and rng.random() < attach:
            j = rng.integers(len(centres))
            angle = rng.uniform(0, 2 * np.pi)
            reach = (radius + radii[j]) * rng.uniform(0.7, 0.95)
            centre = centres[j] + reach * np.array([np.sin(angle), np.cos(angle)])
        else:
            centre = rng.uniform(0, size, 2)
        if not (0 <= centre[0] < size and 0 <= centre[1] < size):
            continue
        if centres:
            gaps = np.hypot(*(np.asarray(centres) - centre).T)  # [K]
            if np.any(gaps < 0.6 * (radius + np.asarray(radii))):
                continue
        centres.append(centre)
        radii.append(radius)
        area += 0.85 * np.pi * radius**2  # overlaps are shared, so count a little less
    return np.asarray(centres).reshape(-1, 2), np.asarray(radii)


def _draw_cells(rng: np.random.Generator, size: int, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance labels int32 [H, W], normalised distance to the own cell centre [H, W], brightness [K].

    Each cell is an ellipse whose radius is perturbed by a few low-frequency harmonics of the
    polar angle. A pixel belongs to the cell for which its distance, divided by that cell's
    radius in its direction, is smallest and below 1; overlapping cells thus split along a
    smooth border instead of stacking.
    """
    centres, radii = _place_centres(rng, size, layout)
    k = len(radii)
    aspect = rng.uniform(1.0, 1.6, k)
    semi_a, semi_b = radii * np.sqrt(aspect), radii / np.sqrt(aspect)  # same area as the mean circle
    tilt = rng.uniform(0, np.pi, k)
    amplitudes = rng.uniform(0, 1, (k, len(HARMONICS))) * 0.18 / HARMONICS  # [K, 4]
    phases = rng.uniform(0, 2 * np.pi, (k, len(HARMONICS)))  # [K, 4]
    waves = amplitudes * np.exp(1j * phases)  # [K, 4], harmonic h as a complex amplitude
    brightness = rng.uniform(0.2, 0.9, k)

    labels = np.zeros((size, size), np.int32)
    distance = np.full((size, size), np.inf, np.float32)
    reach = np.ceil(semi_a * 1.3).astype(int) + 1  # the perturbed outline stays inside 1.3x
    for c in range(k):
        y0, x0 = (max(0, int(v) - reach[c]) for v in centres[c])
        y1, x1 = (min(size, int(v) + reach[c] + 1) for v in centres[c])
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(centres[c, 0])  # [h, 1]
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(centres[c, 1])  # [1, w]
        radius = np.maximum(np.sqrt(dy**2 + dx**2), np.float32(1e-6))  # [h, w]
        direction = (dx + 1j * dy) / radius  # e^{i theta}, complex64 [h, w]; no trig per pixel
        along = direction * np.complex64(np.exp(-1j * tilt[c]))  # e^{i (theta - tilt)}
        ellipse = semi_a[c] * semi_b[c] / np.abs(semi_b[c] * along.real + 1j * semi_a[c] * along.imag)
        wobble, power = np.ones_like(radius), direction
        for h in range(2, HARMONICS[-1] + 1):
            power = power * direction  # e^{i h theta}
            wobble += (power * np.complex64(waves[c, h - 2])).real  # amplitude * cos(h theta + phase)
        d = (radius / (ellipse * wobble)).astype(np.float32)  # < 1 inside
        box = distance[y0:y1, x0:x1]
        closer = d < box
        box[closer] = d[closer]
        labels[y0:y1, x0:x1][closer] = c + 1

    inside = distance < 1
    labels = np.where(inside, labels, 0)
    # Cells hidden entirely by their neighbours leave gaps in the ids: renumber to 1..K'.
    kept = np.unique(labels[inside]) - 1  # 0-based indices of the visible cells
    lookup = np.zeros(k + 1, np.int32)
    lookup[kept + 1] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return lookup[labels], np.where(inside, distance, np.float32(1)), brightness[kept]


def _photograph(
    rng: np.random.Generator, labels: np.ndarray, distance: np.ndarray, brightness: np.ndarray, edge_dimming: float
) -> np.ndarray:
    """The image [H, W] a fluorescence microscope would record of the labelled cells.

    Cells are brightest at the centre and dimmer towards the edge (so touching cells show a
    faint seam), on a background with out-of-focus haze, under uneven illumination (a smooth
    gain field in [0.4, 1.5]), blurred by the optics, with shot noise (variance proportional to
    the signal) and read noise. Dim cells under weak light are about as bright as haze under
    strong light, so the best global threshold reaches a Dice of only about 0.93,
    while a small U-Net trained for two minutes on a CPU reaches about 0.98.
    """
    size = labels.shape[0]
    cell = np.concatenate([[0.0], brightness]).astype(np.float32)[labels]  # [H, W]; 0 outside
    haze = np.float32(rng.uniform(0.05, 0.13)) * (1 + _waves(rng, size, 2, 3.0, (0.15, 0.35)))  # > 0
    signal = cell * (1 - np.float32(edge_dimming) * distance**2) + haze
    signal = signal * np.clip(1 + _waves(rng, size, 3, 1.5, (0.1, 0.25)), 0.4, 1.5)
    signal = _blur(signal.astype(np.float32), sigma=rng.uniform(0.8, 1.6))
    photons = rng.uniform(80, 300)  # photons at intensity 1: fewer means noisier
    noise_std = np.sqrt(signal / photons + 0.015**2)
    image = signal + noise_std * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _waves(rng: np.random.Generator, size: int, count: int, max_periods: float, strength: tuple) -> np.ndarray:
    """A smooth random field [H, W]: `count` plane waves of at most `max_periods` across the image."""
    coords = np.arange(size, dtype=np.float32) / size
    field = np.zeros((size, size), np.float32)
    for _ in range(count):
        fy, fx = rng.uniform(-max_periods, max_periods, 2) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = np.float32(rng.uniform(*strength))
        # cos(a + b) = cos a cos b - sin a sin b: two outer products instead of H*W cosines.
        rows, cols = fy * coords + phase, fx * coords  # [H], [W]
        field += amplitude * (np.outer(np.cos(rows), np.cos(cols)) - np.outer(np.sin(rows), np.sin(cols))).astype(np.float32)
    return field


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of [H, W] as two 1-D passes over a reflect-padded copy (scipy-free)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)  # [2r+1]
    h, w = image.shape
    padded = np.pad(image, radius, mode="reflect")  # [H+2r, W+2r]
    rows = sum(t * padded[j : j + h, :] for j, t in enumerate(taps))  # [H, W+2r]
    return sum(t * rows[:, j : j + w] for j, t in enumerate(taps))  # [H, W]

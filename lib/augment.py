"""On-the-fly augmentation in numpy, applied identically to each image and its label.

Labels are resampled with nearest-neighbour interpolation, so no transform ever creates a label
value that was not there (binary or multi-class alike).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.ndimage import map_coordinates, zoom


def flip_rotate(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Random left-right mirroring, and with `rotate` 90-degree rotation, per sample of square (N, h, w, C) batches.

    The eight results are the dihedral group of the square, so labels keep exactly their values.
    """
    images = images.copy()
    labels = labels.copy()
    flips = rng.random(len(images)) < 0.5
    images[flips] = images[flips, :, ::-1]
    labels[flips] = labels[flips, :, ::-1]
    if not rotate:
        return images, labels
    turns = rng.integers(0, 4, size=len(images))
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            images[chosen] = np.rot90(images[chosen], k, axes=(1, 2))
            labels[chosen] = np.rot90(labels[chosen], k, axes=(1, 2))
    return images, labels


def _upsampling_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix M with M @ coarse = cubic-spline zoom of a length-grid signal."""
    return np.stack([zoom(np.eye(grid)[j], size / grid, order=3, mode="nearest")[:size] for j in range(grid)], axis=1)


def sampling_grids(n: int, size: int, rng: np.random.Generator, degrees: float, scale: float,
                   elastic_alpha: float, elastic_grid: int = 3) -> np.ndarray:
    """Source coordinates (2, n, size, size) for n random rotations, scalings and elastic warps.

    Elastic deformation as in the U-Net paper: random displacements on a coarse grid, smoothly
    (cubic) interpolated to every pixel; alpha is the displacement's standard deviation in pixels.
    """
    centre = (size - 1) / 2.0
    axis = np.arange(size, dtype=np.float32) - centre
    ys, xs = axis[None, :, None], axis[None, None, :]
    angle = np.deg2rad(rng.uniform(-degrees, degrees, n)) if degrees else np.zeros(n)
    factor = np.exp(rng.uniform(-np.log1p(scale), np.log1p(scale), n)) if scale else np.ones(n)
    cos = (np.cos(angle) / factor).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / factor).astype(np.float32)[:, None, None]
    src = np.stack([cos * ys - sin * xs + centre, sin * ys + cos * xs + centre])
    if elastic_alpha:
        matrix = _upsampling_matrix(size, elastic_grid).astype(np.float32)
        coarse = rng.normal(0.0, elastic_alpha, size=(2, n, elastic_grid, elastic_grid)).astype(np.float32)
        src = src + np.einsum("ij,knjl,ml->knim", matrix, coarse, matrix)
    return src


def warp_batch(batch: np.ndarray, grids: np.ndarray, order: int) -> np.ndarray:
    """Resample (n, h, w, C) at grids (2, n, h, w): order 1 for images, 0 (nearest) for labels."""
    n, h, w, _ = batch.shape
    index = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, h, w))
    coords = np.stack([index, grids[0], grids[1]])
    out = np.empty_like(batch)
    for channel in range(batch.shape[-1]):
        out[..., channel] = map_coordinates(batch[..., channel], coords, order=order, mode="reflect")
    return out


def jitter_intensity(images: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and gamma per sample of [0, 1] images; strength 0.1 = about ±10%."""
    shape = (len(images),) + (1,) * (images.ndim - 1)
    contrast = 1.0 + rng.uniform(-strength, strength, shape)
    brightness = rng.uniform(-strength, strength, shape) / 2
    gamma = np.exp(rng.uniform(-strength, strength, shape))
    mean = images.mean(axis=tuple(range(1, images.ndim)), keepdims=True)
    out = (images - mean) * contrast + mean + brightness
    return np.power(np.clip(out, 0.0, 1.0), gamma).astype(images.dtype)


def augment_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  settings: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Apply the configured [augmentation] to a batch of square patches and their labels."""
    if settings["flips"] != "none":
        images, labels = flip_rotate(images, labels, rng, rotate=settings["flips"] == "all")
    if settings["rotation_degrees"] or settings["scale"] or settings["elastic_alpha"]:
        grids = sampling_grids(len(images), images.shape[1], rng, settings["rotation_degrees"],
                               settings["scale"], settings["elastic_alpha"])
        images = warp_batch(images, grids, order=1)
        labels = warp_batch(labels, grids, order=0)
    if settings["intensity"]:
        images = jitter_intensity(images, rng, settings["intensity"])
    return images, labels

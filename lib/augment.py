"""On-the-fly augmentation in numpy, applied identically to each image and its label.

Rotations, zooms and elastic warps resample images with a cubic spline. Binary labels can be resampled
linearly into fractions (soft_labels, as train.py does), so a warped edge keeps its sub-pixel place;
otherwise labels are resampled to the nearest pixel, so no transform ever creates a label value that was
not there (class indices).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.ndimage import map_coordinates, zoom

IMAGE_ORDER = 3  # cubic spline: sharp as the unwarped test images are


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
    """Resample each sample of (n, h, w, C) at its grid of grids (2, n, h, w) with a spline of this order."""
    out = np.empty_like(batch)
    # One patch at a time: a spline over the whole batch would also prefilter along the sample axis.
    for sample in range(batch.shape[0]):
        for channel in range(batch.shape[-1]):
            out[sample, ..., channel] = map_coordinates(batch[sample, ..., channel], grids[:, sample],
                                                        order=order, mode="reflect")
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
                  settings: Mapping[str, Any], soft_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Apply the configured [augmentation] to a batch of square patches and their labels; soft_labels: 0/1
    labels are warped linearly into fractions instead of to the nearest pixel (binary tasks)."""
    if settings["flips"] != "none":
        images, labels = flip_rotate(images, labels, rng, rotate=settings["flips"] == "all")
    if settings["rotation_degrees"] or settings["scale"] or settings["elastic_alpha"]:
        grids = sampling_grids(len(images), images.shape[1], rng, settings["rotation_degrees"],
                               settings["scale"], settings["elastic_alpha"])
        # Nearest-neighbour labels move each edge by up to half a pixel at random, and a linear image is
        # blurred where the test images are not: both cost more than the warp gains at thin structures.
        images = warp_batch(images, grids, order=IMAGE_ORDER)
        labels = warp_batch(labels, grids, order=1 if soft_labels else 0)
    if settings["intensity"]:
        images = jitter_intensity(images, rng, settings["intensity"])
    return images, labels

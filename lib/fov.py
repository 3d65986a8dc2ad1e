"""Field-of-view masks for fundus releases that ship without them (STARE, CHASE_DB1).

The FOV is the bright disc of the photograph inside the dark surround. derive_fov thresholds the
red channel (the brightest and least vessel-dependent one), keeps the largest connected region,
fills its holes (dark vessels, the fovea) and erodes it by a few pixels so that the dim,
blurred rim of the disc stays outside.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

THRESHOLD_FRACTION = 0.15   # threshold: this far from the surround's level to the FOV's typical level
ERODE_FRACTION = 0.003      # erosion radius as a fraction of the shorter image side (at least 1 px)


def fov_threshold(red: np.ndarray) -> float:
    """Red level separating the dark surround (1st percentile) from the FOV (90th percentile)."""
    low, high = np.percentile(red, [1.0, 90.0])
    return float(low + THRESHOLD_FRACTION * (high - low))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.ogrid[-radius: radius + 1, -radius: radius + 1]
    return xx * xx + yy * yy <= radius * radius


def derive_fov(image: np.ndarray) -> np.ndarray:
    """Return the bool H x W field of view of a fundus photograph (uint8 H x W x 3, or gray H x W)."""
    red = (image[..., 0] if image.ndim == 3 else image).astype(np.float32)
    bright = red > fov_threshold(red)
    labels, count = ndimage.label(bright)
    if count == 0:
        return np.ones(red.shape, dtype=bool)   # a uniform image: no surround to remove
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    fov = ndimage.binary_fill_holes(labels == sizes.argmax())
    radius = max(1, round(ERODE_FRACTION * min(red.shape)))
    # border_value=1: where the disc is cut off by the image edge, that edge is not a rim.
    return ndimage.binary_erosion(fov, structure=_disk(radius), border_value=1)

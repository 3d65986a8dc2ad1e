"""On-the-fly augmentation in numpy, applied identically to each image and its label."""
from __future__ import annotations

import numpy as np


def flip_rotate(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip and 90-degree rotation per sample of square (N, h, w, C) batches.

    The eight results are the dihedral group of the square, so labels keep exactly their values.
    """
    images = images.copy()
    labels = labels.copy()
    flips = rng.random(len(images)) < 0.5
    images[flips] = images[flips, :, ::-1]
    labels[flips] = labels[flips, :, ::-1]
    turns = rng.integers(0, 4, size=len(images))
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            images[chosen] = np.rot90(images[chosen], k, axes=(1, 2))
            labels[chosen] = np.rot90(labels[chosen], k, axes=(1, 2))
    return images, labels

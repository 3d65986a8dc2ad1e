"""Cells of a membrane probability map (ISBI 2012): a seeded watershed, so a gap in a membrane merges no cells."""
from __future__ import annotations

import numpy as np
from skimage.measure import label
from skimage.segmentation import find_boundaries, relabel_sequential, watershed

# Specks of low membrane probability inside a thick membrane are not cells.
MIN_SEED_PIXELS = 20


def watershed_cells(membrane_prob: np.ndarray, seed_threshold: float,
                    min_seed: int = MIN_SEED_PIXELS) -> np.ndarray:
    """Cell label map (1..N; 0 only where no seed exists) grown over the membrane probabilities from the
    connected regions below seed_threshold that have at least min_seed pixels."""
    prob = np.asarray(membrane_prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"membrane probabilities must be one H x W map, got shape {prob.shape}")
    if not 0.0 < seed_threshold < 1.0:
        raise ValueError(f"seed_threshold must lie between 0 and 1, got {seed_threshold}")
    markers = label(prob < seed_threshold, connectivity=1)
    sizes = np.bincount(markers.ravel())
    small = sizes < min_seed
    small[0] = False
    markers[small[markers]] = 0
    markers = relabel_sequential(markers)[0]
    if not markers.any():
        return markers
    # Seeds are confident interiors; flooding up the probability ridges puts each cell border on its
    # membrane even where the thresholded membrane has a gap.
    return watershed(prob, markers)


def cell_borders(cells: np.ndarray) -> np.ndarray:
    """Bool map of lines one pixel wide between the cells of a label map: each pixel whose right or lower
    neighbour lies in another cell. Every 4-connected path between two cells crosses one."""
    cells = np.asarray(cells)
    borders = np.zeros(cells.shape, bool)
    borders[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    borders[:-1, :] |= cells[:-1, :] != cells[1:, :]
    return borders


def closed_membranes(prob: np.ndarray, cells: np.ndarray, membrane_positive: bool) -> np.ndarray:
    """The probability map with the borders of the watershed cells drawn in as certain membrane, so that its
    thresholded membranes have no gaps and its interiors fall apart into the watershed's cells."""
    return np.where(cell_borders(cells), 1.0 if membrane_positive else 0.0, prob).astype(prob.dtype)


def cell_colours(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 RGB image of a label map: each cell a random bright colour, its border and label 0 black."""
    cells = np.asarray(cells)
    palette = np.random.default_rng(seed).integers(64, 256, size=(int(cells.max(initial=0)) + 1, 3), dtype=np.uint8)
    palette[0] = 0
    rgb = palette[cells]
    rgb[find_boundaries(cells, mode="inner")] = 0
    return rgb

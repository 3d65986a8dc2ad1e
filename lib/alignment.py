"""Sub-pixel offset between a binary model's probability maps and its labels.

Some annotations sit a fraction of a pixel off the image they were drawn on (ISBI 2012's membranes about
0.6 px above the image's, DRIVE's vessels 0 to 0.375 px off, mostly up, varying from image to image). A model
trained with flips cannot learn such an offset, since a flip reverses it, so its maps are centred on the image's
structures and miss the labels' edges by that much. The offset is found after training by moving the maps, and
applied before thresholding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import shift, spline_filter

from lib.metrics import confusion_counts, scores_from_counts

SEARCH = 1.0  # pixels either way: a larger offset is a registration error, not an annotation habit
COARSE, FINE = 0.5, 0.125
MIN_GAIN = 0.001  # F1 gain below which no offset is applied: noise, not a habit
_PAD = 12  # rows and columns of edge beyond which a cubic spline's prefilter has no effect worth a float32


def _moved(coefficients: np.ndarray, offset: Sequence[float]) -> np.ndarray:
    """The map whose padded cubic spline coefficients these are (_coefficients), moved by offset (dy, dx)."""
    moved = tuple(float(v) for v in offset) + (0.0,) * (coefficients.ndim - 2)
    out = shift(coefficients, moved, order=3, mode="nearest", prefilter=False, output=np.float32)
    inside = (slice(_PAD, -_PAD),) * 2
    return np.clip(out[inside], 0.0, 1.0)


def _coefficients(prob: np.ndarray) -> np.ndarray:
    """Cubic spline coefficients of the map with its edge rows and columns repeated _PAD times, so that moved-in
    rows continue the edge (scipy's shift pads so itself when it prefilters)."""
    pad = ((_PAD, _PAD), (_PAD, _PAD)) + ((0, 0),) * (prob.ndim - 2)
    padded = np.pad(np.asarray(prob, dtype=np.float32), pad, mode="edge")
    return spline_filter(padded, order=3, mode="nearest", output=np.float32)


def offset_text(offset: Sequence[float]) -> str:
    """'-0.625, -0.25' for the offset (dy, dx) = (-0.625, -0.25), as label_offset is written."""
    return ", ".join(f"{float(v):g}" for v in offset)


def shift_map(prob: np.ndarray, offset: Sequence[float]) -> np.ndarray:
    """The H x W (x K) probability map moved by offset = (dy, dx) pixels, out[y, x] = prob[y - dy, x - dx]
    (cubic spline, clipped to [0, 1]; the rows or columns moved in from outside continue the edge)."""
    if not any(offset):
        return prob
    # Cubic: a linear interpolation blurs the map at half-pixel moves, which changes the score by as much as
    # the move does, so the search would favour whole pixels.
    return _moved(_coefficients(prob), offset)


def f1_moved(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], fovs: Sequence[np.ndarray],
             offset: Sequence[float] = (0.0, 0.0), threshold: float = 0.5) -> float:
    """Pooled F1 inside the FOVs of the H x W maps moved by offset, at the threshold (0 without positives)."""
    return _f1([_coefficients(p) for p in probs], labels, fovs, offset, threshold)


def _f1(coefficients: Sequence[np.ndarray], labels: Sequence[np.ndarray], fovs: Sequence[np.ndarray],
        offset: Sequence[float], threshold: float) -> float:
    """Pooled F1 of the maps of these coefficients moved by offset (f1_moved)."""
    total = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for c, label, fov in zip(coefficients, labels, fovs):
        fov = np.asarray(fov, dtype=bool)
        counts = confusion_counts(np.asarray(label, dtype=bool)[fov], _moved(c, offset)[fov] >= threshold)
        total = {key: total[key] + counts[key] for key in total}
    return scores_from_counts(total)["f1"] or 0.0


def best_offset(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], fovs: Sequence[np.ndarray],
                threshold: float = 0.5) -> tuple[tuple[float, float], float, float]:
    """The offset (dy, dx) within SEARCH pixels, in steps of FINE, that maximizes the pooled F1 of the moved
    maps at the threshold; (0, 0) unless it gains MIN_GAIN. Returns it, the F1 at (0, 0) and there."""
    coefficients = [_coefficients(p) for p in probs]  # once: the costly part of a cubic move
    cache: dict[tuple[float, float], float] = {}

    def score(offset: tuple[float, float]) -> float:
        if offset not in cache:
            cache[offset] = _f1(coefficients, labels, fovs, offset, threshold)
        return cache[offset]

    # Coarse to fine, halving the step: the score has one peak, and a full fine grid takes 289 moves, this 41.
    steps = np.arange(-SEARCH, SEARCH + COARSE / 2, COARSE)
    best = max(((float(dy), float(dx)) for dy in steps for dx in steps), key=score)
    step = COARSE / 2
    while step >= FINE:
        near = [(best[0] + i * step, best[1] + j * step) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        best = max((o for o in near if max(abs(o[0]), abs(o[1])) <= SEARCH), key=score)
        step /= 2
    at_zero = score((0.0, 0.0))
    if score(best) < at_zero + MIN_GAIN:
        return (0.0, 0.0), at_zero, at_zero
    return best, at_zero, score(best)

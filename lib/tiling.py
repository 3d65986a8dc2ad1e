"""Sliding-window inference: one pure function from a full image to a full-size prediction."""
from __future__ import annotations

from typing import Callable

import numpy as np
from skimage.transform import resize

Predictor = Callable[[np.ndarray], np.ndarray]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with the last window flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def gaussian_weights(height: int, width: int | None = None, sigma_scale: float = 0.125) -> np.ndarray:
    """Centre-weighted height x width (square by default) window importance (as nnU-Net), at least 1e-3 everywhere."""
    def profile(length: int) -> np.ndarray:
        coords = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
        g = np.exp(-0.5 * (coords / (sigma_scale * length)) ** 2)
        return g / g.max()

    weights = np.outer(profile(height), profile(height if width is None else width))
    # Strictly positive, so every pixel of the image counts, even one only a window's corner covers.
    return np.maximum(weights, 1e-3).astype(np.float32)


def window_step(stride: int, multiple: int = 1) -> int:
    """The step between windows: stride rounded down to a multiple of `multiple`, and at least one."""
    return max(multiple, stride // multiple * multiple)


def window_grid(height: int, width: int, window: int, stride: int,
                multiple: int = 1) -> tuple[int, int, list[tuple[int, int]]]:
    """(window height, window width, top-left corners) that sliding_window uses on a height x width image.

    The window shrinks to the image, rounded up to `multiple` (less wasted compute); a smaller image is
    zero-padded to it. Every corner is a multiple of `multiple`, the image zero-padded past its end where the
    last window needs it: a U-Net with pooling to 1/multiple gives a pixel the same output in every window
    only at such offsets, so overlapping windows agree instead of leaving seams.
    """
    win_h = min(window, -(-height // multiple) * multiple)
    win_w = min(window, -(-width // multiple) * multiple)
    step = window_step(stride, multiple)

    def starts(length: int, win: int) -> list[int]:
        last = -(-max(length - win, 0) // multiple) * multiple
        return window_starts(last + win, win, step)

    corners = [(y, x) for y in starts(height, win_h) for x in starts(width, win_w)]
    return win_h, win_w, corners


def sliding_window(image: np.ndarray, predict: Predictor, window: int, stride: int,
                   batch_size: int = 8, blend: str = "constant", multiple: int = 1) -> np.ndarray:
    """Predict an H x W x C image window by window and blend overlaps into an H x W x K map.

    `predict` maps a batch (N, window, window, C) to (N, window, window, K). Images smaller than
    the window are zero-padded; `multiple` rounds the window up so a U-Net can take it, and aligns the
    windows (see window_grid).
    """
    height, width = image.shape[:2]
    win_h, win_w, corners = window_grid(height, width, window, stride, multiple)
    pad_h = max(y for y, _ in corners) + win_h - height
    pad_w = max(x for _, x in corners) + win_w - width
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else image
    full_h, full_w = padded.shape[:2]
    weights = gaussian_weights(win_h, win_w) if blend == "gaussian" else np.ones((win_h, win_w), np.float32)
    total = None
    norm = np.zeros((full_h, full_w, 1), np.float32)
    for start in range(0, len(corners), batch_size):
        batch_corners = corners[start: start + batch_size]
        batch = np.stack([padded[y: y + win_h, x: x + win_w] for y, x in batch_corners])
        out = np.asarray(predict(batch), dtype=np.float32)
        if total is None:
            total = np.zeros((full_h, full_w, out.shape[-1]), np.float32)
        for (y, x), tile in zip(batch_corners, out):
            total[y: y + win_h, x: x + win_w] += tile * weights[..., None]
            norm[y: y + win_h, x: x + win_w] += weights[..., None]
    return (total / norm)[:height, :width]


def resize_map(array: np.ndarray, shape: tuple[int, ...], anti_aliasing: bool = False) -> np.ndarray:
    """An H x W x C map resized (bilinear; smoothed first with anti_aliasing) to shape's height and width, in its
    own dtype (rounded for integers); unchanged when it has that size. Maps inferred at another scale go back to
    their image's size this way, and images go to that scale (anti-aliased when shrunk)."""
    if array.shape[:2] == tuple(shape[:2]):
        return array
    out = resize(array, (*shape[:2], array.shape[2]), order=1, preserve_range=True, anti_aliasing=anti_aliasing)
    return (np.rint(out) if np.issubdtype(array.dtype, np.integer) else out).astype(array.dtype)

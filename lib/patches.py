"""Random training patches: centre sampling (anywhere, inside the FOV, or on labelled classes) and vectorized extraction."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lib.errors import UserError


def validation_split(n_patches: int, fraction: float) -> tuple[int, int]:
    """(training, validation) patch counts: the last round(n_patches * fraction) patches validate."""
    n_val = int(round(n_patches * fraction))
    return n_patches - n_val, n_val


def batches_per_pass(n_patches: int, batch_size: int) -> int:
    """Whole batches in one pass over n_patches (at least one)."""
    return max(n_patches // batch_size, 1)


def check_fits(height: int, width: int, size: int, image: str) -> None:
    """Refuse an image smaller than the patch, naming it and the settings that fix it."""
    if height < size or width < size:
        raise UserError(f"{image} is {width}x{height} pixels, smaller than the {size}x{size} patch. Lower "
                        "[data attributes] patch_size, or shrink the images less ([data paths] resize).")


def sample_centres(fovs: Sequence[np.ndarray], n: int, size: int, inside_fov: bool,
                   rng: np.random.Generator, names: Sequence[str] | None = None,
                   labels: Sequence[np.ndarray] | None = None, foreground_fraction: float = 0.0,
                   classes: Sequence[int] = (1,)) -> np.ndarray:
    """Draw n patch positions as rows (image index, top, left), in random order.

    Images get equal shares (as in the classic method). Every patch lies fully inside its image;
    with inside_fov its centre pixel also lies inside the FOV mask. A foreground_fraction of each
    image's share is centred on a pixel of one of `classes` (label values), the class drawn uniformly
    among those present in the image, so rare classes are seen as often as common ones (nnU-Net's
    oversampling); an image with none of them gets uniform centres. names (one per image) go into errors.
    """
    shares = np.full(len(fovs), n // len(fovs))
    shares[: n % len(fovs)] += 1
    rows = []
    half = size // 2
    for index, (fov, count) in enumerate(zip(fovs, shares)):
        height, width = fov.shape
        image = f"training image {names[index]}" if names is not None else f"image {index}"
        check_fits(height, width, size, image)
        valid = np.zeros_like(fov, dtype=bool)
        valid[half: height - size + half + 1, half: width - size + half + 1] = True
        if inside_fov:
            valid &= fov
        candidates = np.flatnonzero(valid)
        if len(candidates) == 0:
            raise UserError(f"{image} has no FOV pixel at least {half} pixels from its border; "
                            "set inside_FOV = false or lower patch_size.")
        focused = int(round(count * foreground_fraction)) if labels is not None else 0
        picks = candidates[rng.integers(0, len(candidates), size=count - focused)]
        if focused:
            picks = np.concatenate([picks, _class_centres(labels[index], valid, candidates, classes, focused, rng)])
        ys, xs = np.divmod(picks, width)
        rows.append(np.stack([np.full(count, index), ys - half, xs - half], axis=1))
    positions = np.concatenate(rows)
    return positions[rng.permutation(len(positions))]


def _class_centres(label: np.ndarray, valid: np.ndarray, candidates: np.ndarray, classes: Sequence[int],
                   count: int, rng: np.random.Generator) -> np.ndarray:
    """count flat positions on valid pixels of a class drawn uniformly among the present classes.

    candidates: the flat indices of valid, the uniform fallback when no class is present.
    """
    label = np.asarray(label).reshape(valid.shape)
    present = [pixels for pixels in (np.flatnonzero(valid & (label == c)) for c in classes) if len(pixels)]
    if not present:  # nothing to focus on in this image: uniform centres instead
        return candidates[rng.integers(0, len(candidates), size=count)]
    chosen = rng.integers(0, len(present), size=count)
    picks = np.empty(count, dtype=np.int64)
    for which, pixels in enumerate(present):
        here = np.flatnonzero(chosen == which)
        picks[here] = pixels[rng.integers(0, len(pixels), size=len(here))]
    return picks


def extract_patches(images: Sequence[np.ndarray], positions: np.ndarray, size: int) -> np.ndarray:
    """Cut size x size patches at rows (image index, top, left) from H x W (x C) images, in order."""
    sample = images[int(positions[0, 0])] if len(positions) else images[0]
    out = np.empty((len(positions), size, size) + sample.shape[2:], dtype=sample.dtype)
    for index in np.unique(positions[:, 0]):
        chosen = np.flatnonzero(positions[:, 0] == index)
        windows = sliding_window_view(images[index], (size, size), axis=(0, 1))
        cut = windows[positions[chosen, 1], positions[chosen, 2]]
        # sliding_window_view puts the window axes last: (n, C, h, w) -> (n, h, w, C)
        out[chosen] = np.moveaxis(cut, 1, -1) if cut.ndim == 4 else cut
    return out


def iter_chunks(positions: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, rows) blocks of at most chunk positions, so callers never hold all patches."""
    for start in range(0, len(positions), chunk):
        yield start, positions[start: start + chunk]

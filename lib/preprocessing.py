"""Image preprocessing: gray conversion, training-split standardization, rescale, CLAHE, gamma."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from skimage.exposure import equalize_adapthist

from lib.errors import UserError

LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def select_channels(image: np.ndarray, channels: int, gray_mode: str) -> np.ndarray:
    """Return float32 H x W x channels: gray (luminance or green) or RGB, from a uint8 image."""
    image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if channels == 3:
        if image.shape[-1] == 1:
            return np.repeat(image, 3, axis=-1)
        return image[..., :3]
    if image.shape[-1] == 1:
        return image
    if gray_mode == "green":
        return image[..., 1:2]
    return (image[..., :3] @ LUMINANCE)[..., None]


def fit_statistics(images: Sequence[np.ndarray], fovs: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Per-channel mean and std over the FOV pixels of (channel-selected) training images."""
    total = None
    total_sq = None
    count = 0
    for image, fov in zip(images, fovs):
        pixels = image[fov].astype(np.float64)
        total = pixels.sum(0) if total is None else total + pixels.sum(0)
        total_sq = (pixels ** 2).sum(0) if total_sq is None else total_sq + (pixels ** 2).sum(0)
        count += len(pixels)
    if not count:
        raise UserError("the training images have no pixels inside their field-of-view masks; "
                        "check the mask files.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()}


def preprocess(image: np.ndarray, fov: np.ndarray, settings: Mapping[str, Any],
               stats: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """Apply the configured steps to one uint8 image; return float32 H x W x C, zero outside the FOV."""
    x = select_channels(image, settings["channels"], settings["gray_mode"])
    if settings["standardize"]:
        if stats is None:
            raise ValueError("standardize needs statistics from fit_statistics")
        x = (x - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"], np.float32)
    if settings["rescale"]:
        inside = x[fov] if fov.any() else x.reshape(-1, x.shape[-1])
        low, high = inside.min(0), inside.max(0)
        x = np.clip((x - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)
    if settings["clahe"]:
        if not settings["rescale"]:
            raise UserError("[preprocessing] clahe = true needs rescale = true (CLAHE works on [0, 1] images).")
        # Tiles of the training images' size in pixels (clahe_tile), whatever this image's size; data prepared
        # before the setting existed used 1/8 of each image, skimage's default (None).
        tile = settings.get("clahe_tile")
        # A constant channel (a blank slice or tile) stays as it is: CLAHE would turn it into 0/1 speckle.
        x = np.stack([equalize_adapthist(x[..., c].astype(np.float64), kernel_size=tile,
                                         clip_limit=settings["clahe_clip"])
                      if np.ptp(x[..., c]) > 0 else x[..., c] for c in range(x.shape[-1])], axis=-1).astype(np.float32)
    if settings["gamma"] != 1.0:
        # As in the classic retina-unet: x ** (1 / gamma), so gamma > 1 brightens dark vessels' surround.
        x = np.power(np.clip(x, 0.0, None), 1.0 / settings["gamma"])
    x = np.where(fov[..., None], x, 0.0).astype(np.float32)
    return x


def preprocessing_settings(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Collect the keys preprocessing depends on, as saved beside the data and the model."""
    settings = dict(config["preprocessing"])
    settings["channels"] = config["data attributes"]["channels"]
    return settings


def clahe_tile(shapes: Sequence[Sequence[int]]) -> list[int]:
    """The CLAHE tile (height, width in pixels) for images of these shapes: 1/8 of the median height and width.

    skimage's default is 1/8 of each image, so an image twice the size was equalized over tiles twice as large
    and a small one over tiny tiles: the model saw other contrast than in training. One tile fixed by the
    training images keeps every image, at any size, equalized as they were (the same as skimage's default when
    all training images have one size).
    """
    heights, widths = zip(*((shape[0], shape[1]) for shape in shapes))
    return [max(int(np.median(heights)) // 8, 1), max(int(np.median(widths)) // 8, 1)]

"""Full-image prediction with a trained model: sliding windows, optional flip and scale TTA."""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from skimage.transform import resize

from lib.tiling import sliding_window


# Flip axes of a (N, H, W, C) batch averaged by test-time augmentation.
TTA_FLIPS = {"all": ((), (1,), (2,), (1, 2)), "horizontal": ((), (2,))}


def tta_flips(testing: Mapping[str, Any], trained_flips: str) -> str | None:
    """Which flips TTA averages: none when off; left-right mirroring when asked for, or for a model trained
    with [augmentation] flips = horizontal (road scenes have an up); else all four."""
    setting = testing["tta_flips"]
    if not setting:
        return None
    return "horizontal" if setting == "horizontal" or trained_flips == "horizontal" else "all"


def model_predictor(model: keras.Model, flips: str | None = None):
    """A batch -> probabilities function; with flips ('all' or 'horizontal'), the average over those flips."""
    # predict_on_batch runs a compiled graph (tf.function, jax.jit): faster than eager op-by-op calls.
    def predict(batch: np.ndarray) -> np.ndarray:
        if flips is None:
            return np.asarray(model.predict_on_batch(batch))
        total = 0.0
        for axes in TTA_FLIPS[flips]:
            flipped = np.ascontiguousarray(np.flip(batch, axis=axes)) if axes else batch
            out = np.asarray(model.predict_on_batch(flipped))
            total = total + (np.flip(out, axis=axes) if axes else out)
        return total / len(TTA_FLIPS[flips])
    return predict


def predict_image(model: keras.Model, image: np.ndarray, testing: Mapping[str, Any], depth: int,
                  trained_flips: str = "all") -> np.ndarray:
    """Probability map (H x W x K) of one preprocessed H x W x C image: the mean over [testing settings]
    tta_scales of the image inferred at scale x zoom times its size, with the TTA flips that fit a model
    trained with [augmentation] flips = trained_flips."""
    predictor = model_predictor(model, tta_flips(testing, trained_flips))
    scales = testing["tta_scales"]
    total = 0.0
    for scale in scales:
        total = total + _predict_at(predictor, image, testing, depth, testing["zoom"] * scale)
    return total / len(scales)


def _predict_at(predictor, image: np.ndarray, testing: Mapping[str, Any], depth: int, zoom: float) -> np.ndarray:
    """Probabilities of the image resized by zoom, resized back to its own size."""
    height, width = image.shape[:2]
    if zoom != 1.0:
        size = (max(1, round(height * zoom)), max(1, round(width * zoom)))
        image = resize(image, (*size, image.shape[2]), order=1, anti_aliasing=zoom < 1.0,
                       preserve_range=True).astype(np.float32)
    probs = sliding_window(image, predictor, window=testing["window"], stride=testing["stride"],
                           batch_size=testing["batch_size"], blend=testing["blend"], multiple=2 ** depth)
    if zoom != 1.0:
        probs = resize(probs, (height, width, probs.shape[2]), order=1, anti_aliasing=False,
                       preserve_range=True).astype(np.float32)
    return probs

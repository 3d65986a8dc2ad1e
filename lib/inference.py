"""Full-image prediction with a trained model: sliding windows, optional flip TTA."""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from skimage.transform import resize

from lib.tiling import sliding_window


def model_predictor(model: keras.Model, tta_flips: bool = False):
    """A batch -> probabilities function; with TTA, averages the four flips of each window."""
    def predict(batch: np.ndarray) -> np.ndarray:
        if not tta_flips:
            return keras.ops.convert_to_numpy(model(batch, training=False))
        total = 0.0
        for axes in ((), (1,), (2,), (1, 2)):
            flipped = np.flip(batch, axis=axes) if axes else batch
            out = keras.ops.convert_to_numpy(model(flipped, training=False))
            total = total + (np.flip(out, axis=axes) if axes else out)
        return total / 4.0
    return predict


def predict_image(model: keras.Model, image: np.ndarray, testing: Mapping[str, Any], depth: int) -> np.ndarray:
    """Probability map (H x W x K) of one preprocessed H x W x C image; inferred at `zoom` times its size."""
    zoom = testing["zoom"]
    height, width = image.shape[:2]
    if zoom != 1.0:
        size = (max(1, round(height * zoom)), max(1, round(width * zoom)))
        image = resize(image, (*size, image.shape[2]), order=1, anti_aliasing=zoom < 1.0,
                       preserve_range=True).astype(np.float32)
    probs = sliding_window(image, model_predictor(model, testing["tta_flips"]),
                           window=testing["window"], stride=testing["stride"],
                           batch_size=testing["batch_size"], blend=testing["blend"], multiple=2 ** depth)
    if zoom != 1.0:
        probs = resize(probs, (height, width, probs.shape[2]), order=1, anti_aliasing=False,
                       preserve_range=True).astype(np.float32)
    return probs

"""Full-image prediction with a trained model: sliding windows, optional flip and scale TTA."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import numpy as np

from lib.backend import has_gpu
from lib.folding import compute_dtype
from lib.tiling import resize_map, sliding_window


# Views of a (N, H, W, C) batch averaged by test-time augmentation: (flip axes, transpose H and W).
# "rotations" adds the transposed flips, which make up the 90-degree rotations: all eight symmetries
# of a square, the ones a model trained with flips = all has seen.
_FLIP_AXES = ((), (1,), (2,), (1, 2))
TTA_VIEWS = {"rotations": tuple((axes, t) for t in (False, True) for axes in _FLIP_AXES),
             "all": tuple((axes, False) for axes in _FLIP_AXES),
             "horizontal": (((), False), ((2,), False))}


def runs_fast(model: keras.Model) -> bool:
    """Whether the model predicts fast here: on a GPU, or in bfloat16 on a CPU with AMX (float16 only runs on a GPU)."""
    return compute_dtype(model) != "float32" or has_gpu()


def resolve_tta(testing: Mapping[str, Any], model: keras.Model, trained_flips: str) -> dict[str, Any]:
    """testing with tta_flips = auto replaced by what it means for model on this machine: all four flips where
    the model runs fast, none elsewhere, and none for a model trained without flips ([augmentation] flips = none:
    its images have an up and a left, which flipped views would lose).

    Four flips add about 0.002 F1 on DRIVE at four times the model's time: on a CPU with AMX the default's
    20 images then take 14 s, inside the 20-s target, and about 40 s in float32 without AMX (README.md,
    Performance).
    """
    if testing["tta_flips"] != "auto":
        return dict(testing)
    return {**testing, "tta_flips": trained_flips != "none" and runs_fast(model)}


def tta_flips(testing: Mapping[str, Any], trained_flips: str) -> str | None:
    """Which views TTA averages: none when off; left-right mirroring when asked for, or for a model trained
    with [augmentation] flips = horizontal (road scenes have an up); else all four flips, or all eight
    flips and rotations when asked for."""
    setting = testing["tta_flips"]
    if setting == "auto":
        raise ValueError("tta_flips = auto must be resolved for the model first (lib.inference.resolve_tta)")
    if not setting:
        return None
    if setting == "horizontal" or trained_flips == "horizontal":
        return "horizontal"
    return "rotations" if setting == "rotations" else "all"


def _view(batch: np.ndarray, axes: tuple[int, ...], transpose: bool) -> np.ndarray:
    """The batch flipped along axes, then with height and width swapped (an involution for each view)."""
    out = np.flip(batch, axis=axes) if axes else batch
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3)) if transpose else np.ascontiguousarray(out)


def _unview(batch: np.ndarray, axes: tuple[int, ...], transpose: bool) -> np.ndarray:
    """Undo _view: swap height and width back, then flip."""
    out = batch.transpose(0, 2, 1, 3) if transpose else batch
    return np.flip(out, axis=axes) if axes else out


def model_predictor(model: keras.Model, flips: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A batch -> probabilities function; with flips (a TTA_VIEWS key), the average over those views."""
    # predict_on_batch runs a compiled graph (tf.function, jax.jit): faster than eager op-by-op calls.
    def predict(batch: np.ndarray) -> np.ndarray:
        if flips is None:
            return np.asarray(model.predict_on_batch(batch))
        total = 0.0
        for axes, transpose in TTA_VIEWS[flips]:
            out = np.asarray(model.predict_on_batch(_view(batch, axes, transpose)))
            total = total + _unview(out, axes, transpose)
        return total / len(TTA_VIEWS[flips])
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
        image = resize_map(image.astype(np.float32), size, anti_aliasing=zoom < 1.0)
    # The U-Net paper's overlap-tile strategy: where the image ends, the model sees mirrored tissue
    # instead of the zeros of its own padding, as it does everywhere inside the image.
    margin_h, margin_w = (min(testing["mirror_margin"], side - 1) for side in image.shape[:2])
    if margin_h or margin_w:
        image = np.pad(image, ((margin_h, margin_h), (margin_w, margin_w), (0, 0)), mode="reflect")
    probs = sliding_window(image, predictor, window=testing["window"], stride=testing["stride"],
                           batch_size=testing["batch_size"], blend=testing["blend"], multiple=2 ** depth)
    probs = probs[margin_h: probs.shape[0] - margin_h, margin_w: probs.shape[1] - margin_w]
    return resize_map(probs.astype(np.float32), (height, width))

"""Losses and training metrics sharing one overlap core, so training and reporting cannot drift."""
from __future__ import annotations

import keras
from keras import ops

SMOOTH = 1.0


def overlap_terms(y_true, y_pred):
    """Per-batch sums (intersection, |true|, |pred|) over all pixels and classes."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    return intersection, ops.sum(y_true), ops.sum(y_pred)


def dice_from_terms(intersection, total_true, total_pred, smooth: float = SMOOTH):
    """Soft Dice from overlap terms."""
    return (2.0 * intersection + smooth) / (total_true + total_pred + smooth)


def jaccard_from_terms(intersection, total_true, total_pred, smooth: float = SMOOTH):
    """Soft Jaccard (IoU) from overlap terms."""
    return (intersection + smooth) / (total_true + total_pred - intersection + smooth)


def dice_loss(y_true, y_pred):
    """1 - soft Dice over the batch."""
    return 1.0 - dice_from_terms(*overlap_terms(y_true, y_pred))


def bce_loss(y_true, y_pred):
    """Mean binary cross-entropy."""
    return ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred))


def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice loss."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def cce_loss(y_true, y_pred):
    """Sparse categorical cross-entropy; labels are class indices with a trailing axis of 1."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))


def dice_coefficient(y_true, y_pred):
    """Dice of the thresholded (0.5) prediction: the score predict.py reports, per batch."""
    return dice_from_terms(*overlap_terms(y_true, ops.cast(y_pred > 0.5, y_pred.dtype)), smooth=1e-7)


def iou_coefficient(y_true, y_pred):
    """Jaccard of the thresholded (0.5) prediction, per batch."""
    return jaccard_from_terms(*overlap_terms(y_true, ops.cast(y_pred > 0.5, y_pred.dtype)), smooth=1e-7)


LOSSES = {"bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss, "cce": cce_loss}
CUSTOM_OBJECTS = {f.__name__: f for f in (*LOSSES.values(), dice_coefficient, iou_coefficient)}


def loss_and_metrics(loss: str, n_classes: int) -> tuple:
    """The configured loss function and the training metrics that go with it."""
    if n_classes > 1:
        return LOSSES[loss], ["accuracy"]
    return LOSSES[loss], [dice_coefficient, iou_coefficient]

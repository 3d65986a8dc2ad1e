"""Losses and training metrics sharing one overlap core, so training and reporting cannot drift."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
from keras import ops

Tensor = Any  # a tensor of whichever backend Keras runs on
LossFn = Callable[[Tensor, Tensor], Tensor]

SMOOTH = 1.0
# Erosions that thin the widest DRIVE vessels (about 10 px) down to their centre line.
SKELETON_ITERATIONS = 6
CLDICE_WEIGHT = 0.5


def overlap_terms(y_true: Tensor, y_pred: Tensor, axis: int | tuple[int, ...] | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Sums (intersection, |true|, |pred|) over `axis` (default: all pixels and classes)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred, axis=axis)
    return intersection, ops.sum(y_true, axis=axis), ops.sum(y_pred, axis=axis)


def dice_from_terms(intersection: Tensor, total_true: Tensor, total_pred: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Dice from overlap terms."""
    return (2.0 * intersection + smooth) / (total_true + total_pred + smooth)


def jaccard_from_terms(intersection: Tensor, total_true: Tensor, total_pred: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Jaccard (IoU) from overlap terms."""
    return (intersection + smooth) / (total_true + total_pred - intersection + smooth)


def dice_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """1 - soft Dice over the batch."""
    return 1.0 - dice_from_terms(*overlap_terms(y_true, y_pred))


def bce_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Mean binary cross-entropy."""
    return ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred))


def bce_dice_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Binary cross-entropy plus soft Dice loss."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


def _soft_erode(x: Tensor) -> Tensor:
    # Min over a plus-shaped neighbourhood: thin lines shrink from their sides, as in binary erosion.
    across = ops.max_pool(-x, (3, 1), strides=1, padding="same")
    along = ops.max_pool(-x, (1, 3), strides=1, padding="same")
    return -ops.maximum(across, along)


def _soft_dilate(x: Tensor) -> Tensor:
    return ops.max_pool(x, (3, 3), strides=1, padding="same")


def soft_skeleton(x: Tensor, iterations: int = SKELETON_ITERATIONS) -> Tensor:
    """Differentiable skeleton of a probability map (Shit et al., clDice, CVPR 2021): what openings remove."""
    x = ops.convert_to_tensor(x)
    # Each erosion serves twice, inside this level's opening and as the next level: computed once.
    eroded = _soft_erode(x)
    skeleton = ops.relu(x - _soft_dilate(eroded))
    for _ in range(iterations):
        x, eroded = eroded, _soft_erode(eroded)
        delta = ops.relu(x - _soft_dilate(eroded))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    return skeleton


def cldice_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """1 - soft clDice: the harmonic mean of the predicted skeleton inside the label and the label's skeleton
    inside the prediction."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    skeleton_pred, skeleton_true = soft_skeleton(y_pred), soft_skeleton(y_true)
    precision = (ops.sum(skeleton_pred * y_true) + SMOOTH) / (ops.sum(skeleton_pred) + SMOOTH)
    sensitivity = (ops.sum(skeleton_true * y_pred) + SMOOTH) / (ops.sum(skeleton_true) + SMOOTH)
    return 1.0 - 2.0 * precision * sensitivity / (precision + sensitivity)


def bce_cldice_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Binary cross-entropy plus CLDICE_WEIGHT times the soft clDice loss."""
    return bce_loss(y_true, y_pred) + CLDICE_WEIGHT * cldice_loss(y_true, y_pred)


def cce_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Sparse categorical cross-entropy; labels are class indices with a trailing axis of 1."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))


def labelled(labels: Tensor, n_classes: int, ignore_index: int | None) -> Tensor:
    """Pixels the multi-class loss and metrics count: a class index, not void (ignore_index)."""
    valid = ops.less(labels, n_classes)
    return valid if ignore_index is None else ops.logical_and(valid, ops.not_equal(labels, ignore_index))


def multiclass_loss(n_classes: int, ignore_index: int | None = None, class_weights: Sequence[float] | None = None,
                    dice: bool = False) -> LossFn:
    """Sparse categorical cross-entropy (+ mean soft Dice over classes) that skips ignore_index pixels.

    class_weights (one per class) weight the cross-entropy, e.g. median-frequency balancing.
    """
    weights = None if class_weights is None else ops.convert_to_tensor(list(class_weights), "float32")

    def multiclass_cce(y_true: Tensor, y_pred: Tensor) -> Tensor:
        labels = ops.cast(y_true[..., 0], "int32")
        valid = labelled(labels, n_classes, ignore_index)
        safe = ops.where(valid, labels, ops.zeros_like(labels))
        mask = ops.cast(valid, y_pred.dtype)
        ce = keras.losses.sparse_categorical_crossentropy(safe, y_pred)
        pixel_weights = mask if weights is None else mask * ops.cast(ops.take(weights, safe), y_pred.dtype)
        loss = ops.sum(ce * pixel_weights) / ops.maximum(ops.sum(pixel_weights), 1.0)
        if dice:
            one_hot = ops.one_hot(safe, n_classes, dtype=y_pred.dtype) * mask[..., None]
            terms = overlap_terms(one_hot, y_pred * mask[..., None], axis=(0, 1, 2))
            loss = loss + 1.0 - ops.mean(dice_from_terms(*terms))
        return loss

    return multiclass_cce


def masked_pixel_accuracy(n_classes: int, ignore_index: int | None = None) -> LossFn:
    """Training metric: fraction of labelled pixels whose argmax class is right (void pixels left out)."""
    def pixel_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
        labels = ops.cast(y_true[..., 0], "int32")
        valid = labelled(labels, n_classes, ignore_index)
        correct = ops.logical_and(valid, ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels))
        return ops.sum(ops.cast(correct, "float32")) / ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)

    return pixel_accuracy


def dice_coefficient(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Training metric: Dice at threshold 0.5 over a batch of patches (predict.py pools whole images instead)."""
    return dice_from_terms(*overlap_terms(y_true, ops.cast(y_pred >= 0.5, y_pred.dtype)), smooth=1e-7)


def iou_coefficient(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Training metric: Jaccard of the prediction at threshold 0.5 over a batch of patches."""
    return jaccard_from_terms(*overlap_terms(y_true, ops.cast(y_pred >= 0.5, y_pred.dtype)), smooth=1e-7)


def over_stages(loss: LossFn, n_classes: int) -> LossFn:
    """The loss averaged over the stages of a refined U-Net, whose training output stacks each stage's
    n_classes channels (lib.unet.StageOutputs); at inference, one stage: the loss itself."""
    def staged(y_true: Tensor, y_pred: Tensor) -> Tensor:
        count = y_pred.shape[-1] // n_classes
        stages = [loss(y_true, y_pred[..., index * n_classes:(index + 1) * n_classes]) for index in range(count)]
        return sum(stages[1:], stages[0]) / count

    staged.__name__ = loss.__name__  # the name Keras logs the metric under stays the same
    return staged


def last_stage(metric: LossFn, n_classes: int) -> LossFn:
    """The metric of the last stage, the one that predicts (see over_stages)."""
    def final(y_true: Tensor, y_pred: Tensor) -> Tensor:
        return metric(y_true, y_pred[..., y_pred.shape[-1] - n_classes:])

    final.__name__ = metric.__name__
    return final


LOSSES = {"bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss, "bce_cldice": bce_cldice_loss,
          "cce": cce_loss}
CUSTOM_OBJECTS = {f.__name__: f for f in (*LOSSES.values(), dice_coefficient, iou_coefficient)}


def loss_and_metrics(loss: str, n_classes: int, ignore_index: int | None = None,
                     class_weights: Sequence[float] | None = None, refined: bool = False
                     ) -> tuple[LossFn, list[LossFn]]:
    """The configured loss function and the training metrics that go with it.

    Several classes: cross-entropy (+ Dice for cce_dice) weighted by class_weights, and pixel accuracy,
    both leaving out ignore_index pixels. refined: a U-Net with refinement stages, the loss averaged over
    them and the metrics of the last.
    """
    if n_classes > 1:
        fn, metrics = (multiclass_loss(n_classes, ignore_index, class_weights, dice=loss == "cce_dice"),
                       [masked_pixel_accuracy(n_classes, ignore_index)])
    else:
        fn, metrics = LOSSES[loss], [dice_coefficient, iou_coefficient]
    if not refined:
        return fn, metrics
    return over_stages(fn, n_classes), [last_stage(metric, n_classes) for metric in metrics]

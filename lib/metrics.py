"""Segmentation metrics in numpy: binary vessel scores inside a field of view, curves, clDice, multi-class IoU.

Conventions (shared by every function here):
- Binary labels and masks must be bool or numeric 0/1; anything else (e.g. 0/255 masks) raises ValueError,
  so that a forgotten conversion can never silently score as "all vessel".
- Probabilities must be finite and in [0, 1]. A pixel is predicted positive when ``prob >= threshold``
  (the same rule the curve thresholds use, so a threshold read off a curve reproduces that point).
- Only pixels inside the field-of-view mask count; pooled scores are computed over all FOV pixels of all
  images together (the standard retinal-vessel protocol), not averaged per image.
- A ratio whose denominator is zero is undefined and reported as None (JSON null), not 0.0: an image with no
  foreground labelled or predicted has no F1, rather than an F1 of 0 that would pull a per-image mean down
  (MONAI and nnU-Net leave such images out of their means too). Threshold-free scores that are undefined
  because only one class is present (AUC-ROC, AUC-PR) are NaN from ``auc_roc`` / ``average_precision`` and
  None in the result dictionaries of ``binary_scores`` / ``evaluate_images`` (``json.dumps(...,
  allow_nan=False)`` works). Per-image means leave undefined scores out.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

# Keys of binary_scores that are rates/scores (averaged per image); the rest are counts or settings.
SCORE_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "jaccard", "auc_roc", "auc_pr")


# ----------------------------------------------------------------------------- input checks

def _as_bool(array: Any, what: str) -> np.ndarray:
    """Return `array` as bool, accepting only bool or numeric 0/1 input."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a bool or 0/1 array, got dtype {a.dtype}")
    ok = (a == 0) | (a == 1)
    if not ok.all():
        bad = a[~ok].flat[0]
        raise ValueError(f"{what} must contain only 0/1 (or bool); found value {bad!r}. "
                         f"Convert masks first, e.g. `mask > 0` for 0/255 images.")
    return a != 0


def _as_scores(array: Any, what: str, unit_interval: bool) -> np.ndarray:
    """Return `array` as a float array, checking it is finite (and within [0, 1] if asked)."""
    a = np.asarray(array)
    if a.dtype.kind not in "iufb":
        raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{what} contains NaN or infinite values")
        if unit_interval and (lo < 0.0 or hi > 1.0):
            raise ValueError(f"{what} must lie in [0, 1]; found range [{lo:g}, {hi:g}]")
    return a


def _check_same_shape(a: np.ndarray, b: np.ndarray, what_a: str, what_b: str) -> None:
    """Raise ValueError unless the two arrays have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{what_a} has shape {a.shape} but {what_b} has shape {b.shape}")


def _ratio(num: float, den: float) -> float | None:
    """num / den as a python float, None when den is 0 (see module docstring)."""
    return float(num) / float(den) if den else None


def _json_float(x: float) -> float | None:
    """Python float, or None for NaN so results stay strict JSON."""
    x = float(x)
    return None if math.isnan(x) else x


# ----------------------------------------------------------------------------- confusion-based scores

def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Count true/false positives/negatives of bool (or 0/1) arrays: {'tp', 'fp', 'tn', 'fn'} as ints."""
    y = _as_bool(labels, "labels")
    p = _as_bool(predicted, "predicted")
    _check_same_shape(y, p, "labels", "predicted")
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(y)) - tp
    tn = int(y.size) - tp - fp - fn
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def scores_from_counts(counts: dict[str, int]) -> dict[str, float | None]:
    """Accuracy, sensitivity, specificity, precision, F1 (= Dice) and Jaccard from counts; x/0 -> None."""
    tp, fp, tn, fn = (int(counts[k]) for k in ("tp", "fp", "tn", "fn"))
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": _ratio(tp, tp + fp + fn),
    }


# ----------------------------------------------------------------------------- threshold-free curves

class _Curve(NamedTuple):
    """Counts at each distinct score t, thresholds increasing, plus a final sentinel for t = +inf.

    For k < m (m = number of distinct scores): thr[k] is the k-th smallest distinct score and tps/fps/cnt[k]
    count positives/negatives/all pixels with score >= thr[k]. Index m is the empty point (0, 0, 0).
    """

    fps: np.ndarray  # length m + 1
    tps: np.ndarray  # length m + 1
    cnt: np.ndarray  # length m + 1
    thr: np.ndarray  # length m


def _curve_counts(y: np.ndarray, s: np.ndarray) -> _Curve:
    """Cumulative counts per distinct score of flat, already validated bool labels `y` and finite scores `s`."""
    n = y.size
    key = s.astype(np.float64)  # always a fresh copy we may modify in place
    key += 0.0  # turns -0.0 into +0.0, so the bit trick below stays monotone
    if n and key.min() >= 0.0:
        # Non-negative float64 bit patterns sort like the floats and have the top bit clear, so the label
        # fits in a spare low bit: one in-place np.sort of uint64, ~10x faster than argsort on millions.
        key = key.view(np.uint64)
        key <<= np.uint64(1)
        key |= y
        key.sort()
        sorted_labels = np.empty(n, dtype=bool)
        np.bitwise_and(key, np.uint64(1), out=sorted_labels, casting="unsafe")
        key >>= np.uint64(1)
        sorted_scores = key.view(np.float64)
    else:
        order = np.argsort(key)
        sorted_scores = key[order]
        sorted_labels = y[order]
    # Last index of every run of equal scores but the final one: ties collapse into one point, as in sklearn.
    lasts = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    m = lasts.size + 1
    csum = np.cumsum(sorted_labels, dtype=np.float64)  # positives with index <= i
    n_pos = csum[-1]
    tps = np.empty(m + 1)
    tps[0], tps[m] = n_pos, 0.0
    np.subtract(n_pos, csum[lasts], out=tps[1:m])
    cnt = np.empty(m + 1)
    cnt[0], cnt[m] = n, 0.0
    np.subtract(n - 1, lasts, out=cnt[1:m], casting="unsafe")
    thr = np.empty(m)
    thr[0] = sorted_scores[0]
    thr[1:] = sorted_scores[lasts + 1]
    return _Curve(cnt - tps, tps, cnt, thr)


def _prepare_curve_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten labels/scores for the curve functions."""
    y = _as_bool(labels, "labels")
    s = _as_scores(scores, "scores", unit_interval=False)
    _check_same_shape(y, s, "labels", "scores")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    return y.ravel(), s.ravel()


def _auc_from_curve(c: _Curve) -> float:
    """Area under the ROC polyline; NaN if one class is absent."""
    n_pos, n_neg = c.tps[0], c.fps[0]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Trapezoids over tie-collapsed points = Mann-Whitney U with ties counting 1/2; sum in counts, divide once.
    area2 = np.dot(c.fps[:-1] - c.fps[1:], c.tps[:-1] + c.tps[1:])
    return float(area2 / (2.0 * n_pos * n_neg))


def _ap_from_curve(c: _Curve) -> float:
    """Step-wise average precision sum (R_n - R_{n-1}) P_n; NaN if there are no positives."""
    n_pos = c.tps[0]
    if n_pos == 0:
        return float("nan")
    precision = c.tps[:-1] / c.cnt[:-1]  # cnt >= 1 before the sentinel
    return float(np.dot(c.tps[:-1] - c.tps[1:], precision) / n_pos)


def auc_roc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact area under the ROC curve (ties count 1/2); NaN when only one class is present."""
    return _auc_from_curve(_curve_counts(*_prepare_curve_inputs(labels, scores)))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC-PR as sklearn's average_precision_score: sum (R_n - R_{n-1}) P_n; NaN without positives."""
    return _ap_from_curve(_curve_counts(*_prepare_curve_inputs(labels, scores)))


def roc_pr_curves(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """One sort for both curves: fpr, tpr, roc_thresholds, precision, recall, pr_thresholds, auc_roc, auc_pr."""
    c = _curve_counts(*_prepare_curve_inputs(labels, scores))
    n_pos, n_neg = c.tps[0], c.fps[0]
    fps, tps = c.fps[::-1], c.tps[::-1]
    precision = c.tps[:-1] / c.cnt[:-1]
    recall = c.tps[:-1] / n_pos if n_pos else np.ones_like(precision)
    return {
        "fpr": fps / n_neg if n_neg else np.full_like(fps, np.nan),
        "tpr": tps / n_pos if n_pos else np.full_like(tps, np.nan),
        "roc_thresholds": np.concatenate(([np.inf], c.thr[::-1])),
        "precision": np.append(precision, 1.0),
        "recall": np.append(recall, 0.0),
        "pr_thresholds": c.thr,
        "auc_roc": _auc_from_curve(c),
        "auc_pr": _ap_from_curve(c),
    }


# ----------------------------------------------------------------------------- binary evaluation

def _fov_pixels(probs: Any, labels: Any, fov: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated flat (probs, labels) restricted to the FOV mask."""
    p = _as_scores(probs, f"{what}probs", unit_interval=True)
    y = _as_bool(labels, f"{what}labels")
    _check_same_shape(p, y, f"{what}probs", f"{what}labels")
    if fov is None:
        return p.ravel(), y.ravel()
    f = _as_bool(fov, f"{what}fov")
    _check_same_shape(f, y, f"{what}fov", f"{what}labels")
    return p[f], y[f]


def _binary_scores_flat(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """binary_scores on already validated flat arrays."""
    if y.size == 0:
        raise ValueError("no pixels to score (is the FOV mask empty?)")
    counts = confusion_counts(y, p >= threshold)
    curve = _curve_counts(y, p)
    result: dict[str, Any] = {"threshold": float(threshold), "n_pixels": int(y.size)}
    result.update(counts)
    result.update(scores_from_counts(counts))
    result["auc_roc"] = _json_float(_auc_from_curve(curve))
    result["auc_pr"] = _json_float(_ap_from_curve(curve))
    return result


def binary_scores(probs: np.ndarray, labels: np.ndarray, fov: np.ndarray | None = None,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Counts, threshold scores (prob >= threshold) and AUC-ROC / AUC-PR over the pixels inside `fov`."""
    p, y = _fov_pixels(probs, labels, fov, "")
    return _binary_scores_flat(p, y, threshold)


def evaluate_images(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    fovs: Sequence[np.ndarray | None] | None, threshold: float = 0.5,
                    names: Sequence[str] | None = None) -> dict[str, Any]:
    """Pooled (all FOV pixels of all images) and per-image binary scores, with per-image mean and SD.

    Returns {"pooled", "per_image": [{"name", ...}], "per_image_mean", "per_image_sd"}; mean/SD cover
    SCORE_KEYS, skip images where a score is undefined (None), and use the sample SD (ddof=1; 0.0 for one image).
    """
    n = len(probs)
    if n == 0:
        raise ValueError("no images to evaluate")
    if len(labels) != n:
        raise ValueError(f"{n} probability maps but {len(labels)} label maps")
    fov_list = [None] * n if fovs is None else list(fovs)
    if len(fov_list) != n:
        raise ValueError(f"{n} probability maps but {len(fov_list)} FOV masks")
    name_list = [f"image_{i}" for i in range(n)] if names is None else [str(x) for x in names]
    if len(name_list) != n:
        raise ValueError(f"{n} probability maps but {len(name_list)} names")

    flat_p, flat_y, per_image = [], [], []
    for i in range(n):
        p, y = _fov_pixels(probs[i], labels[i], fov_list[i], f"image {name_list[i]!r}: ")
        flat_p.append(p)
        flat_y.append(y)
        per_image.append({"name": name_list[i], **_binary_scores_flat(p, y, threshold)})
    pooled = _binary_scores_flat(np.concatenate(flat_p), np.concatenate(flat_y), threshold)

    mean, sd = per_image_means(per_image, SCORE_KEYS)
    return {"pooled": pooled, "per_image": per_image, "per_image_mean": mean, "per_image_sd": sd}


def per_image_means(rows: Sequence[dict[str, Any]], keys: Sequence[str]
                    ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Mean and sample SD (ddof=1; 0.0 for one image) of each key over the rows where it is defined (not None);
    None for a key defined in no row."""
    mean: dict[str, float | None] = {}
    sd: dict[str, float | None] = {}
    for key in keys:
        values = np.array([r[key] for r in rows if r[key] is not None], dtype=np.float64)
        mean[key] = float(values.mean()) if values.size else None
        sd[key] = (float(values.std(ddof=1)) if values.size > 1 else 0.0) if values.size else None
    return mean, sd


def best_f1_threshold(probs: np.ndarray, labels: np.ndarray,
                      fov: np.ndarray | None = None) -> tuple[float, float]:
    """Threshold t maximising F1 of (prob >= t) inside `fov` (lowest such t on ties), and that F1."""
    p, y = _fov_pixels(probs, labels, fov, "")
    if y.size == 0:
        raise ValueError("no pixels to score (is the FOV mask empty?)")
    if not y.any():
        raise ValueError("no positive pixels: every threshold gives F1 = 0, so none is best")
    c = _curve_counts(y, p)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted positives + P); the denominator is >= P > 0.
    f1 = 2.0 * c.tps[:-1] / (c.cnt[:-1] + c.tps[0])
    best = int(np.argmax(f1))  # thresholds increase, so the first maximum is the lowest such t
    return float(c.thr[best]), float(f1[best])


def cldice(predicted: np.ndarray, labels: np.ndarray, fov: np.ndarray | None = None) -> float | None:
    """Centerline Dice (Shit et al. 2021) of bool masks, skeletons by skimage; None when neither has a skeleton."""
    from skimage.morphology import skeletonize  # imported here: only clDice needs scikit-image

    p = _as_bool(predicted, "predicted")
    y = _as_bool(labels, "labels")
    _check_same_shape(p, y, "predicted", "labels")
    if fov is not None:
        f = _as_bool(fov, "fov")
        _check_same_shape(f, y, "fov", "labels")
        # Vessels outside the FOV do not exist for evaluation, so remove them before skeletonizing.
        p, y = p & f, y & f
    skel_p = skeletonize(p)
    skel_y = skeletonize(y)
    if not skel_p.any() and not skel_y.any():
        return None
    # With one skeleton empty the other's share is 0, and so is clDice, as F1 is 0 when only one side has pixels.
    t_prec = _ratio(np.count_nonzero(skel_p & y), np.count_nonzero(skel_p)) or 0.0
    t_sens = _ratio(np.count_nonzero(skel_y & p), np.count_nonzero(skel_y)) or 0.0
    return _ratio(2.0 * t_prec * t_sens, t_prec + t_sens) or 0.0


# ----------------------------------------------------------------------------- multi-class

def adapted_rand(interior_predicted: np.ndarray, interior_labels: np.ndarray, fill: bool = False) -> float:
    """ISBI 2012 adapted Rand error of the connected components of predicted vs true cell interiors."""
    from skimage.measure import label
    from skimage.segmentation import expand_labels
    predicted = label(_as_bool(interior_predicted, "predicted"), connectivity=1)
    if fill:
        # True membrane pixels are ignored, but predicted ones form one segment (label 0) that spans
        # every cell; giving each to its nearest cell scores the partition into cells alone.
        predicted = expand_labels(predicted, distance=sum(predicted.shape))
    return cells_rand_error(predicted, interior_labels)


def cells_rand_error(cells: np.ndarray, interior_labels: np.ndarray) -> float:
    """ISBI 2012 adapted Rand error of a predicted cell label map against the true cell interiors."""
    from skimage.measure import label
    from skimage.metrics import adapted_rand_error
    cells = np.asarray(cells)
    truth = label(_as_bool(interior_labels, "labels"), connectivity=1)
    _check_same_shape(cells, truth, "cells", "labels")
    error, _, _ = adapted_rand_error(truth, cells)
    return float(error)


def isbi_scores(predicted: np.ndarray, labels: np.ndarray, fov: np.ndarray, membrane_positive: bool,
                cells: np.ndarray | None = None) -> dict[str, float]:
    """ISBI 2012 pixel error and adapted Rand errors (literal, filled, and of the watershed cells when
    given) of one thresholded slice."""
    predicted = _as_bool(predicted, "predicted")
    labels = _as_bool(labels, "labels")
    fov = _as_bool(fov, "fov")  # a 0/1 integer mask would index rows, not select pixels
    _check_same_shape(predicted, labels, "predicted", "labels")
    _check_same_shape(fov, labels, "fov", "labels")
    interior_pred = ~predicted if membrane_positive else predicted
    interior_true = ~labels if membrane_positive else labels
    scores = {"pixel_error": float(np.mean(predicted[fov] != labels[fov])),
              "adapted_rand_error": adapted_rand(interior_pred, interior_true),
              "adapted_rand_error_filled": adapted_rand(interior_pred, interior_true, fill=True)}
    if cells is not None:
        scores["adapted_rand_error_watershed"] = cells_rand_error(cells, interior_true)
    return scores


def _as_class_map(array: Any, what: str) -> np.ndarray:
    """Return an integer class map, rejecting non-integer dtypes."""
    a = np.asarray(array)
    if a.dtype.kind not in "iub":
        raise ValueError(f"{what} must be an integer class map, got dtype {a.dtype}")
    return a.astype(np.int64)


def multiclass_scores(predicted: np.ndarray, labels: np.ndarray, n_classes: int,
                      ignore_index: int | None = None,
                      class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Confusion matrix (rows = true), per-class IoU/Dice/precision/accuracy, means and pixel accuracy.

    Pixels whose label equals `ignore_index` are excluded. A per-class score whose denominator is zero is
    None (class absent), and the means skip such classes: mean IoU / mean Dice average over classes present
    in the labels or the predictions, mean accuracy over classes present in the labels.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    names = [f"class_{c}" for c in range(n_classes)] if class_names is None else [str(x) for x in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    if len(set(names)) != n_classes:
        raise ValueError(f"class names must be unique: {names}")
    p = _as_class_map(predicted, "predicted")
    y = _as_class_map(labels, "labels")
    _check_same_shape(p, y, "predicted", "labels")
    if ignore_index is not None:
        keep = y != ignore_index
        p, y = p[keep], y[keep]
    else:
        p, y = p.ravel(), y.ravel()
    if y.size == 0:
        raise ValueError("no pixels to score (every label is the ignore index?)")
    for arr, what in ((y, "labels"), (p, "predicted")):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{what} contain class {lo if lo < 0 else hi}, outside 0..{n_classes - 1}"
                             + ("" if what == "predicted" or ignore_index is None
                                else f" (ignore index is {ignore_index})"))

    matrix = np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    n_predicted = matrix.sum(axis=0)
    per_class: dict[str, dict[str, Any]] = {}
    ious, dices, accs = [], [], []
    for c, name in enumerate(names):
        union = int(support[c] + n_predicted[c] - tp[c])
        iou = float(tp[c]) / union if union else None
        dice = 2.0 * float(tp[c]) / float(support[c] + n_predicted[c]) if union else None
        acc = float(tp[c]) / float(support[c]) if support[c] else None
        prec = float(tp[c]) / float(n_predicted[c]) if n_predicted[c] else None
        per_class[name] = {"index": c, "iou": iou, "dice": dice, "accuracy": acc, "precision": prec,
                           "support": int(support[c]), "predicted": int(n_predicted[c])}
        if iou is not None:
            ious.append(iou)
            dices.append(dice)
        if acc is not None:
            accs.append(acc)
    return {
        "n_classes": int(n_classes),
        "class_names": names,
        "ignore_index": ignore_index,
        "n_pixels": int(y.size),
        "confusion_matrix": matrix.astype(np.int64).tolist(),
        "pixel_accuracy": float(tp.sum()) / float(y.size),
        "mean_iou": float(np.mean(ious)),  # at least one class is present because y is non-empty
        "mean_dice": float(np.mean(dices)),
        "mean_accuracy": float(np.mean(accs)),
        "per_class": per_class,
    }

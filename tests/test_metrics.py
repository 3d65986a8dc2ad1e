"""Tests of lib.metrics against hand-computed numbers and brute-force reference implementations."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from lib import metrics

# 2x4 example used by several tests; threshold 0.5 predicts (prob >= 0.5):
#   labels     probs               predicted   outcome
#   1 1 0 0    0.9 0.4 0.6 0.1     1 0 1 0     TP FN FP TN
#   1 0 0 0    0.7 0.2 0.5 0.0     1 0 1 0     TP TN FP TN
LABELS = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.uint8)
PROBS = np.array([[0.9, 0.4, 0.6, 0.1], [0.7, 0.2, 0.5, 0.0]])


# ----------------------------------------------------------------------------- brute-force references

def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney by comparing every positive with every negative (ties 1/2)."""
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def brute_roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC by thresholding at every distinct score, highest first, after a (0, 0) start."""
    thresholds = np.unique(s)[::-1]
    fpr = [0.0] + [float(np.sum((s >= t) & ~y) / np.sum(~y)) for t in thresholds]
    tpr = [0.0] + [float(np.sum((s >= t) & y) / np.sum(y)) for t in thresholds]
    return np.array(fpr), np.array(tpr), np.concatenate(([np.inf], thresholds))


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds (highest first) of (R_n - R_{n-1}) * P_n."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        pred = s >= t
        recall = np.sum(pred & y) / np.sum(y)
        precision = np.sum(pred & y) / np.sum(pred)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


# ----------------------------------------------------------------------------- confusion counts and scores

def test_confusion_counts_by_hand():
    counts = metrics.confusion_counts(LABELS, PROBS >= 0.5)
    assert counts == {"tp": 2, "fp": 2, "tn": 3, "fn": 1}
    assert all(type(v) is int for v in counts.values())


def test_scores_from_counts_by_hand():
    s = metrics.scores_from_counts({"tp": 2, "fp": 2, "tn": 3, "fn": 1})
    assert s["accuracy"] == pytest.approx(5 / 8)
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(3 / 5)
    assert s["precision"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(4 / 7)  # 2TP / (2TP + FP + FN)
    assert s["jaccard"] == pytest.approx(2 / 5)  # TP / (TP + FP + FN)


def test_scores_zero_denominators_are_undefined_not_zero():
    s = metrics.scores_from_counts({"tp": 0, "fp": 0, "tn": 5, "fn": 0})
    assert s == {"accuracy": 1.0, "sensitivity": None, "specificity": 1.0, "precision": None,
                 "f1": None, "jaccard": None}
    # Foreground predicted where none is labelled: F1 is defined, and 0.
    s = metrics.scores_from_counts({"tp": 0, "fp": 2, "tn": 3, "fn": 0})
    assert (s["f1"], s["precision"], s["sensitivity"]) == (0.0, 0.0, None)


def test_binary_scores_counts_and_threshold():
    r = metrics.binary_scores(PROBS, LABELS)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 2, 3, 1)
    assert r["threshold"] == 0.5 and r["n_pixels"] == 8
    # A higher threshold drops the 0.5 and 0.6 false positives: prob >= 0.65.
    r = metrics.binary_scores(PROBS, LABELS, threshold=0.65)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 0, 5, 1)


def test_fov_really_excludes_pixels():
    fov = np.array([[1, 1, 0, 1], [1, 1, 0, 0]], dtype=bool)
    # Outside the FOV, make every pixel a confident false positive: none of them may count.
    labels = LABELS.copy()
    probs = PROBS.copy()
    labels[~fov] = 0
    probs[~fov] = 1.0
    r = metrics.binary_scores(probs, labels, fov)
    # Inside: (0,0) TP, (0,1) FN, (0,3) TN, (1,0) TP, (1,1) TN.
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 0, 2, 1)
    assert r["n_pixels"] == 5
    assert r["specificity"] == 1.0
    # Positive scores inside: 0.9, 0.4, 0.7; negatives 0.1, 0.2 -> perfectly separated.
    assert r["auc_roc"] == 1.0


def test_fov_empty_raises():
    with pytest.raises(ValueError, match="FOV"):
        metrics.binary_scores(PROBS, LABELS, np.zeros_like(LABELS, dtype=bool))


def test_rejects_0_255_labels_and_out_of_range_probs():
    with pytest.raises(ValueError, match="0/1"):
        metrics.binary_scores(PROBS, LABELS * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.binary_scores(PROBS * 2, LABELS)
    with pytest.raises(ValueError, match="NaN"):
        metrics.binary_scores(np.full(PROBS.shape, np.nan), LABELS)
    with pytest.raises(ValueError, match="shape"):
        metrics.binary_scores(PROBS[:, :3], LABELS)
    # bool, int 0/1 and float 0/1 labels are all accepted and equivalent.
    ref = metrics.binary_scores(PROBS, LABELS.astype(bool))
    assert metrics.binary_scores(PROBS, LABELS.astype(np.float32)) == ref
    assert metrics.binary_scores(PROBS, LABELS.astype(np.int64)) == ref


# ----------------------------------------------------------------------------- curves and areas

# Hand example with ties: positives 0.8, 0.5, 0.3; negatives 0.5, 0.2, 0.3.
TIE_Y = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
TIE_S = np.array([0.8, 0.5, 0.5, 0.2, 0.3, 0.3])


def test_auc_by_hand_with_ties():
    # Pairs won: 0.8 beats all 3 (3); 0.5 beats 0.2 and 0.3, ties 0.5 (2.5); 0.3 beats 0.2, ties 0.3 (1.5).
    assert metrics.auc_roc(TIE_Y, TIE_S) == pytest.approx(7 / 9, abs=1e-15)


def test_roc_curve_by_hand_with_ties():
    curves = metrics.roc_pr_curves(TIE_Y, TIE_S)
    fpr, tpr, thr = curves["fpr"], curves["tpr"], curves["roc_thresholds"]
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.5, 0.3, 0.2])


def test_average_precision_and_pr_curve_by_hand():
    # Thresholds 0.8: P 1, R 1/3; 0.5: P 2/3, R 2/3; 0.3: P 3/5, R 1; 0.2: R stays 1.
    assert metrics.average_precision(TIE_Y, TIE_S) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    curves = metrics.roc_pr_curves(TIE_Y, TIE_S)
    precision, recall, thr = curves["precision"], curves["recall"], curves["pr_thresholds"]
    np.testing.assert_allclose(precision, [1 / 2, 3 / 5, 2 / 3, 1, 1])
    np.testing.assert_allclose(recall, [1, 1, 2 / 3, 1 / 3, 0])
    np.testing.assert_array_equal(thr, [0.2, 0.3, 0.5, 0.8])


def test_auc_perfect_inverted_and_random():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert metrics.auc_roc(y, s) == 1.0
    assert metrics.average_precision(y, s) == 1.0
    assert metrics.auc_roc(y, 1 - s) == 0.0
    rng = np.random.default_rng(1)
    y = rng.random(20000) < 0.3
    assert abs(metrics.auc_roc(y, rng.random(20000)) - 0.5) < 0.02


def test_auc_single_class_is_nan():
    assert math.isnan(metrics.auc_roc(np.zeros(4), np.linspace(0, 1, 4)))
    assert math.isnan(metrics.auc_roc(np.ones(4), np.linspace(0, 1, 4)))
    assert math.isnan(metrics.average_precision(np.zeros(4), np.linspace(0, 1, 4)))


@pytest.mark.parametrize("decimals", [1, 2, None])  # heavy ties, some ties, (almost surely) none
def test_curves_match_brute_force(decimals):
    rng = np.random.default_rng(decimals or 0)
    y = rng.random(300) < 0.35
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1)
    if decimals is not None:
        s = np.round(s, decimals)
    assert metrics.auc_roc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
    both = metrics.roc_pr_curves(y, s)
    bfpr, btpr, bthr = brute_roc(y, s)
    np.testing.assert_allclose(both["fpr"], bfpr, atol=1e-12)
    np.testing.assert_allclose(both["tpr"], btpr, atol=1e-12)
    np.testing.assert_array_equal(both["roc_thresholds"], bthr)
    assert both["auc_roc"] == metrics.auc_roc(y, s)
    assert both["auc_pr"] == metrics.average_precision(y, s)


def test_curves_accept_negative_scores_like_logits():
    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.5
    logits = np.round(rng.normal(y * 1.0, 1.0), 1)
    assert metrics.auc_roc(y, logits) == pytest.approx(brute_auc(y, logits), abs=1e-12)
    # The monotone sigmoid does not change the ranking, so neither AUC nor AP change.
    probs = 1 / (1 + np.exp(-logits))
    assert metrics.auc_roc(y, probs) == pytest.approx(metrics.auc_roc(y, logits), abs=1e-12)
    assert metrics.average_precision(y, probs) == pytest.approx(brute_ap(y, logits), abs=1e-12)


def test_float32_scores_give_exact_thresholds():
    rng = np.random.default_rng(2)
    y = rng.random(500) < 0.4
    s = rng.random(500).astype(np.float32)
    thr = metrics.roc_pr_curves(y, s)["roc_thresholds"]
    # Every threshold is one of the scores, so thresholding reproduces the curve points exactly.
    assert set(thr[1:].tolist()) == set(s.astype(np.float64).tolist())
    assert metrics.auc_roc(y, s) == pytest.approx(brute_auc(y, s.astype(np.float64)), abs=1e-12)


# ----------------------------------------------------------------------------- best threshold

def test_best_f1_threshold_beats_default_threshold():
    # Well separated but all below 0.5: at 0.5 nothing is predicted (F1 0); the best threshold is 0.3.
    labels = np.array([0, 0, 0, 0, 1, 1, 1], dtype=bool)
    probs = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.35, 0.45])
    t, f1 = metrics.best_f1_threshold(probs, labels)
    assert (t, f1) == (0.3, 1.0)
    assert metrics.binary_scores(probs, labels)["f1"] == 0.0
    assert metrics.binary_scores(probs, labels, threshold=t)["f1"] == f1


def test_best_f1_threshold_equals_default_when_default_is_optimal():
    labels = np.array([0, 0, 1, 1, 0, 1], dtype=bool)
    probs = np.array([0.1, 0.2, 0.5, 0.9, 0.4, 0.8])
    t, f1 = metrics.best_f1_threshold(probs, labels)
    assert t == 0.5 and f1 == metrics.binary_scores(probs, labels)["f1"] == 1.0


def test_best_f1_threshold_matches_exhaustive_search():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    p = np.round(np.clip(rng.normal(0.35 + 0.25 * y, 0.2), 0, 1), 2)
    fov = rng.random(400) < 0.8
    t, f1 = metrics.best_f1_threshold(p, y, fov)
    exhaustive = {c: metrics.binary_scores(p, y, fov, threshold=c)["f1"] for c in np.unique(p[fov])}
    assert f1 == pytest.approx(max(exhaustive.values()), abs=1e-12)
    assert exhaustive[t] == pytest.approx(f1, abs=1e-12)
    assert f1 >= metrics.binary_scores(p, y, fov)["f1"]


def test_best_f1_threshold_needs_positives():
    with pytest.raises(ValueError, match="positive"):
        metrics.best_f1_threshold(np.array([0.2, 0.7]), np.array([0, 0]))


# ----------------------------------------------------------------------------- clDice

def _vessel_image() -> np.ndarray:
    """A 3-pixel-thick horizontal vessel plus a vertical branch on a 32x32 grid."""
    img = np.zeros((32, 32), dtype=bool)
    img[15:18, 3:29] = True
    img[3:16, 20:23] = True
    return img


def test_cldice_identical_is_one():
    v = _vessel_image()
    assert metrics.cldice(v, v) == 1.0
    assert metrics.cldice(v.astype(np.uint8), v.astype(np.float32)) == 1.0


def test_cldice_broken_vessel_is_below_one():
    v = _vessel_image()
    broken = v.copy()
    broken[:, 8:14] = False  # a gap in the horizontal vessel
    score = metrics.cldice(broken, v)
    assert 0.0 < score < 1.0
    # Breaking is a topology error; so is a missing branch: both lower clDice, neither gives 0.
    no_branch = v.copy()
    no_branch[3:15, 20:23] = False
    assert 0.0 < metrics.cldice(no_branch, v) < 1.0


def test_cldice_fov_and_empty():
    v = _vessel_image()
    other = v.copy()
    other[0:2, :] = True  # spurious vessel along the top edge
    fov = np.ones_like(v)
    fov[0:2, :] = False
    assert metrics.cldice(other, v) < 1.0
    assert metrics.cldice(other, v, fov) == 1.0  # outside the FOV it does not exist
    assert metrics.cldice(np.zeros_like(v), v) == 0.0
    assert metrics.cldice(v, np.zeros_like(v)) == 0.0
    assert metrics.cldice(np.zeros_like(v), np.zeros_like(v)) is None  # nothing to find, nothing found


def test_an_image_without_foreground_is_left_out_of_the_per_image_f1_not_scored_zero():
    y1 = np.array([[1, 0], [0, 1]])
    p1 = np.array([[0.9, 0.2], [0.4, 0.3]])  # F1 2/3
    empty = np.zeros((2, 2))
    r = metrics.evaluate_images([p1, empty, empty + 0.6], [y1, empty, empty], None)
    assert [row["f1"] for row in r["per_image"]] == [pytest.approx(2 / 3), None, 0.0]
    assert r["per_image_mean"]["f1"] == pytest.approx(1 / 3)  # the empty, correctly empty image is not a 0
    assert r["per_image_sd"]["f1"] == pytest.approx(np.std([2 / 3, 0.0], ddof=1))
    assert r["per_image"][1]["accuracy"] == 1.0 and r["per_image"][1]["specificity"] == 1.0
    json.dumps(r, allow_nan=False)


# ----------------------------------------------------------------------------- multi-class

def test_multiclass_by_hand_with_ignore_index():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    r = metrics.multiclass_scores(predicted, labels, n_classes=4, ignore_index=255,
                                  class_names=["bg", "artery", "vein", "disc"])
    # Pixels (true, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0); the 255 pixel is ignored.
    assert r["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert r["n_pixels"] == 7
    assert r["pixel_accuracy"] == pytest.approx(5 / 7)
    pc = r["per_class"]
    assert pc["bg"]["iou"] == pytest.approx(2 / 4)  # TP 2, row 3, column 3
    assert pc["artery"]["iou"] == pytest.approx(2 / 3)  # TP 2, row 2, column 3
    assert pc["vein"]["iou"] == pytest.approx(1 / 2)  # TP 1, row 2, column 1
    assert pc["disc"]["iou"] is None and pc["disc"]["accuracy"] is None  # absent class: undefined
    assert pc["bg"]["accuracy"] == pytest.approx(2 / 3)
    assert pc["artery"]["accuracy"] == 1.0
    assert pc["vein"]["accuracy"] == pytest.approx(1 / 2)
    assert pc["vein"]["dice"] == pytest.approx(2 / 3)  # 2TP / (row + column)
    assert pc["bg"]["support"] == 3 and pc["artery"]["predicted"] == 3
    # Means skip the absent class.
    assert r["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    json.dumps(r, allow_nan=False)


def test_multiclass_validates_classes():
    with pytest.raises(ValueError, match="outside"):
        metrics.multiclass_scores(np.array([0, 1]), np.array([0, 3]), n_classes=3)
    with pytest.raises(ValueError, match="outside"):
        metrics.multiclass_scores(np.array([0, 5]), np.array([0, 1]), n_classes=3)
    with pytest.raises(ValueError, match="integer"):
        metrics.multiclass_scores(np.array([0.0, 1.0]), np.array([0, 1]), n_classes=2)
    # An ignored pixel may hold any prediction.
    r = metrics.multiclass_scores(np.array([0, 7]), np.array([0, 255]), n_classes=2, ignore_index=255)
    assert r["n_pixels"] == 1 and r["pixel_accuracy"] == 1.0


# ----------------------------------------------------------------------------- evaluate_images

def test_evaluate_images_pooled_per_image_mean_sd_and_json():
    rng = np.random.default_rng(4)
    probs, labels, fovs = [], [], []
    for i in range(3):
        y = rng.random((20, 24)) < 0.2 + 0.1 * i
        probs.append(np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1).astype(np.float32))
        labels.append(y)
        fovs.append(rng.random((20, 24)) < 0.9)
    fovs[1] = None  # whole image counts
    r = metrics.evaluate_images(probs, labels, fovs, names=["a", "b", "c"])
    assert [p["name"] for p in r["per_image"]] == ["a", "b", "c"]
    for i, p in enumerate(r["per_image"]):
        assert {k: v for k, v in p.items() if k != "name"} == metrics.binary_scores(probs[i], labels[i], fovs[i])
    for key in metrics.SCORE_KEYS:
        values = [p[key] for p in r["per_image"]]
        assert r["per_image_mean"][key] == pytest.approx(np.mean(values))
        assert r["per_image_sd"][key] == pytest.approx(np.std(values, ddof=1))
    # Pooled = one binary_scores over all FOV pixels together.
    pooled_p = np.concatenate([p[f] if f is not None else p.ravel() for p, f in zip(probs, fovs)])
    pooled_y = np.concatenate([y[f] if f is not None else y.ravel() for y, f in zip(labels, fovs)])
    assert r["pooled"] == metrics.binary_scores(pooled_p, pooled_y)
    assert r["pooled"]["n_pixels"] == sum(p["n_pixels"] for p in r["per_image"])
    assert r["pooled"]["tp"] == sum(p["tp"] for p in r["per_image"])
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r


def test_evaluate_images_undefined_auc_is_none_and_skipped():
    y1 = np.array([[1, 0], [0, 1]])
    y2 = np.zeros((2, 2))  # no vessel: AUC undefined
    p = np.array([[0.9, 0.2], [0.4, 0.6]])
    r = metrics.evaluate_images([p, p], [y1, y2], [None, None])
    assert r["per_image"][1]["auc_roc"] is None and r["per_image"][1]["auc_pr"] is None
    assert r["per_image_mean"]["auc_roc"] == 1.0  # only the defined value
    assert r["per_image_sd"]["auc_roc"] == 0.0
    json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="label maps"):
        metrics.evaluate_images([p, p], [y1], [None, None])


def test_evaluate_images_speed_on_drive_sized_data():
    rng = np.random.default_rng(0)
    h, w = 584, 565
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.48 * min(h, w)) ** 2
    probs = [rng.random((h, w), dtype=np.float32) for _ in range(20)]
    labels = [rng.random((h, w)) < 0.12 for _ in range(20)]
    start = time.perf_counter()
    r = metrics.evaluate_images(probs, labels, [fov] * 20)
    elapsed = time.perf_counter() - start
    assert r["pooled"]["n_pixels"] == 20 * int(fov.sum())
    assert abs(r["pooled"]["auc_roc"] - 0.5) < 0.01
    # ~0.5 s on an idle 2-core machine, a few seconds under load; the bound only catches gross regressions
    # (a per-pixel Python loop or an O(n log n) sort per threshold would take far longer).
    assert elapsed < 10.0


def test_adapted_rand_error_is_zero_for_identical_cells_and_grows_when_cells_merge():
    from lib.metrics import adapted_rand
    interior = np.ones((40, 40), bool)
    interior[:, 19:21] = False  # a membrane splits two cells
    interior[19:21, :] = False  # four cells
    assert adapted_rand(interior, interior) == pytest.approx(0.0, abs=1e-12)
    merged = interior.copy()
    merged[:, 19:21] = True  # membrane missed: left and right cells merge
    merged[19:21, :] = False
    assert adapted_rand(merged, interior) > 0.2


def test_filled_adapted_rand_ignores_thick_predicted_membranes_but_not_merges():
    from lib.metrics import adapted_rand
    interior = np.ones((40, 40), bool)
    interior[:, 19:21] = False
    interior[19:21, :] = False
    thick = interior.copy()
    thick[:, 15:25] = False  # the same four cells, with a membrane five times as wide
    thick[15:25, :] = False
    assert adapted_rand(thick, interior) > 0.2  # predicted membrane pixels form one segment across cells
    assert adapted_rand(thick, interior, fill=True) == pytest.approx(0.0, abs=1e-12)
    merged = interior.copy()
    merged[:, 19:21] = True
    merged[19:21, :] = False
    assert adapted_rand(merged, interior, fill=True) > 0.2  # a gap in a membrane still merges two cells


def test_isbi_scores_agree_whichever_class_is_the_foreground():
    from lib.metrics import isbi_scores
    interior = np.ones((40, 40), bool)
    interior[:, 19:21] = False
    interior[19:21, :] = False
    predicted_interior = interior.copy()
    predicted_interior[:, 17:23] = False  # thicker membrane: 4 more columns, less the 8 pixels already off
    fov = np.ones_like(interior)
    as_membrane = isbi_scores(~predicted_interior, ~interior, fov, membrane_positive=True)
    as_interior = isbi_scores(predicted_interior, interior, fov, membrane_positive=False)
    assert as_membrane == as_interior
    assert as_membrane["pixel_error"] == pytest.approx((4 * 40 - 8) / 1600)
    assert as_membrane["adapted_rand_error_filled"] == pytest.approx(0.0, abs=1e-12)
    assert as_membrane["adapted_rand_error"] > 0.0
    # A 0/1 integer FOV mask selects the same pixels as a bool one (it would otherwise index rows 0 and 1).
    assert isbi_scores(~predicted_interior, ~interior, fov.astype(np.uint8), membrane_positive=True) == as_membrane

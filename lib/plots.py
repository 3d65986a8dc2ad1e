"""Figures (learning curves, ROC/PR, confusion matrix, legends) and uint8 image composites, written atomically."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never windows (also works on machines without a display)

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from lib import metrics  # noqa: E402
from lib.atomic import atomic_path  # noqa: E402

GAP = 4  # width in pixels of the white separator between side-by-side panels
ALPHA = 0.5  # opacity of the overlay colours
TP_COLOR = (0, 255, 0)  # green: vessel found
FP_COLOR = (255, 0, 0)  # red: predicted vessel that is not one
FN_COLOR = (0, 0, 255)  # blue: vessel missed
MAX_CURVE_POINTS = 2000  # enough for a smooth line; millions of points make slow, huge vector paths
DPI = 120


# ----------------------------------------------------------------------------- helpers

def _save_figure(fig: Figure, path: str | os.PathLike, tight: bool = False) -> None:
    """Write a figure atomically, format from the final file's extension (PNG if none)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight" if tight else None)


def _to_float_series(values: Sequence[Any]) -> np.ndarray:
    """Floats from a log column; blanks and unparsable entries (e.g. from a CSV) become NaN."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def _subsample_curve(x: np.ndarray, y: np.ndarray,
                     max_points: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points, evenly spaced along the curve's length, keeping both ends."""
    if x.size <= max_points:
        return x, y
    # Spacing by arc length (not by index) keeps detail where the curve turns, whatever the score histogram.
    arc = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    idx = np.searchsorted(arc, np.linspace(0.0, arc[-1], max_points - 1))
    idx = np.unique(np.concatenate((idx.clip(0, x.size - 1), [0, x.size - 1])))
    return x[idx], y[idx]


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    """An HxW or HxWx1 array as HxW; anything else is a ValueError naming `what`."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"{what} must be HxW, got shape {a.shape}")
    return a


def _gray_u8(array: np.ndarray, what: str) -> np.ndarray:
    """HxW bool / 0-1 / probability float / uint8 map -> HxW uint8 gray (1 or 1.0 -> 255)."""
    a = _as_2d(array, what)
    if a.dtype == np.bool_:
        return np.where(a, 255, 0).astype(np.uint8)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
        if lo < 0 or hi > 255:
            raise ValueError(f"{what} integer values must lie in 0..255, found {lo}..{hi}")
        # A 0/1 integer mask means background/foreground; larger integers are already gray levels.
        return (a * 255).astype(np.uint8) if hi <= 1 else a.astype(np.uint8)
    if a.dtype.kind == "f":
        return _unit_float_to_u8(a, what)
    raise ValueError(f"{what} has unsupported dtype {a.dtype}")


def _unit_float_to_u8(a: np.ndarray, what: str) -> np.ndarray:
    """Float array in [0, 1] -> uint8 by rounding x * 255."""
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{what} float values must lie in [0, 1], found {a.min():g}..{a.max():g}")
    return np.rint(a * 255.0).astype(np.uint8)


def _rgb_u8(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1 or HxWx3 image (uint8, or float in [0, 1]) -> HxWx3 uint8."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {np.asarray(image).shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        return _unit_float_to_u8(a, "image")
    if a.dtype == np.bool_:
        return np.where(a, 255, 0).astype(np.uint8)
    raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {a.dtype}")


def _binary_mask(array: np.ndarray, what: str) -> np.ndarray:
    """HxW bool / 0-1 / probability map -> bool mask (probabilities thresholded at >= 0.5)."""
    a = _as_2d(array, what)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind == "f":
        _unit_float_to_u8(a, what)  # validates: finite and within [0, 1]
        return a >= 0.5
    if a.dtype.kind in "iu":
        if not ((a == 0) | (a == 1)).all():
            raise ValueError(f"{what} integer values must be 0/1 (convert 0/255 masks with `mask > 0`)")
        return a != 0
    raise ValueError(f"{what} has unsupported dtype {a.dtype}")


def _check_hw(a: np.ndarray, shape: tuple[int, int], what: str) -> None:
    """Raise ValueError unless `a` has height and width `shape`."""
    if a.shape[:2] != shape:
        raise ValueError(f"{what} is {a.shape[0]}x{a.shape[1]} but the image is {shape[0]}x{shape[1]}")


def _palette_u8(palette: np.ndarray) -> np.ndarray:
    """(n, 3) palette as uint8; floats all within [0, 1] are scaled by 255, other values must be 0..255."""
    p = np.asarray(palette)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise ValueError(f"palette must have shape (n, 3), got {p.shape}")
    if p.dtype.kind == "f" and p.min() >= 0.0 and p.max() <= 1.0:
        p = np.rint(p * 255.0)
    if p.min() < 0 or p.max() > 255:
        raise ValueError("palette values must lie in 0..255 (or floats in [0, 1])")
    return np.rint(p).astype(np.uint8) if p.dtype.kind == "f" else p.astype(np.uint8)


# ----------------------------------------------------------------------------- figures

def save_learning_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike,
                         best: tuple[str, int] | None = None) -> None:
    """Plot a Keras-style history (losses in one panel, other metrics x / val_x in another) to `path`.

    history["epoch"] counts from 0 as Keras logs it; the plot counts from 1, as train.py reports epochs.
    best = (monitored key, epoch counted from 1) marks the epoch best.keras holds in every panel; without
    it the lowest val_loss is marked.
    """
    columns = {k: _to_float_series(v) for k, v in history.items() if k != "epoch"}
    if not columns:
        raise ValueError("history has no metric columns to plot")
    n = max(len(v) for v in columns.values())
    epochs = (_to_float_series(history["epoch"]) if "epoch" in history else np.arange(n, dtype=float)) + 1
    # Learning rate (from ReduceLROnPlateau / schedules) spans decades: give it its own log-scaled panel.
    lr_keys = [k for k in columns if k in ("lr", "learning_rate")]
    loss_keys = [k for k in columns if k.endswith("loss") and k not in lr_keys]
    other_keys = [k for k in columns if k not in loss_keys and k not in lr_keys]

    def pairs(keys: list[str]) -> list[tuple[str, str | None]]:
        """(train, val) key pairs; a lone val_x keeps its own line."""
        out = [(k, f"val_{k}" if f"val_{k}" in keys else None) for k in keys if not k.startswith("val_")]
        paired = {v for _, v in out if v}
        out += [(k, None) for k in keys if k.startswith("val_") and k not in paired]
        return out

    panels = [(title, keys) for title, keys in (("loss", loss_keys), ("metrics", other_keys),
                                                  ("learning rate", lr_keys)) if keys]
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, (train_key, val_key) in enumerate(pairs(keys)):
            colour = f"C{j % 10}"
            for key, style, label in ((train_key, "-", train_key), (val_key, "--", val_key)):
                if key is None:
                    continue
                y = columns[key]
                x = epochs[: len(y)] if len(epochs) >= len(y) else np.arange(1, len(y) + 1, dtype=float)
                # Markers keep one- or two-epoch runs visible, where a line alone would be invisible.
                ax.plot(x, y, style, color=colour, label=label, marker="o" if len(y) <= 30 else None,
                        markersize=3)
            if best is None and val_key is not None and title == "loss" and np.isfinite(columns[val_key]).any():
                lowest = int(np.nanargmin(columns[val_key]))
                if lowest < len(epochs):
                    ax.axvline(epochs[lowest], color=colour, alpha=0.4, linewidth=1, linestyle=":",
                               label=f"best {val_key} (epoch {epochs[lowest]:g})")
        if best is not None:
            ax.axvline(best[1], color="black", alpha=0.5, linewidth=1, linestyle=":",
                       label=f"best.keras: best {best[0]} (epoch {best[1]})")
        if title == "learning rate":
            ax.set_yscale("log")
        elif title == "loss":
            values = np.concatenate([columns[k] for k in keys])
            values = values[np.isfinite(values)]
            # A loss that falls by orders of magnitude needs a log axis to keep late epochs readable.
            if values.size and values.min() > 0 and values.max() / values.min() > 20:
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    _save_figure(fig, path)


def save_roc_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], roc_path: str | os.PathLike,
                pr_path: str | os.PathLike, threshold: float = 0.5) -> None:
    """ROC and precision-recall plots of name -> (labels, scores) pooled inside the FOV, AUC/AP in the legend,
    a dot at `threshold`."""
    if not curves:
        raise ValueError("no curves to plot")
    roc_fig = Figure(figsize=(5.5, 5.0))
    roc_ax = roc_fig.add_subplot(1, 1, 1)
    pr_fig = Figure(figsize=(5.5, 5.0))
    pr_ax = pr_fig.add_subplot(1, 1, 1)
    roc_ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1, label="chance")
    for i, (name, (labels, scores)) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        # One sort serves both curves and both areas (millions of pooled pixels per model).
        cv = metrics.roc_pr_curves(labels, scores)
        y = np.asarray(labels).ravel() != 0  # already validated as bool/0-1 by roc_pr_curves
        s = np.asarray(scores).ravel()
        fpr, tpr, precision, recall = cv["fpr"], cv["tpr"], cv["precision"], cv["recall"]
        auc, ap = cv["auc_roc"], cv["auc_pr"]
        roc_ax.plot(*_subsample_curve(fpr, tpr), color=colour, label=f"{name} (AUC = {auc:.4f})")
        pr_ax.plot(*_subsample_curve(recall, precision), color=colour, drawstyle="steps-post",
                   label=f"{name} (AP = {ap:.4f})")
        # Mark the operating point of the threshold the reported scores use.
        counts = metrics.confusion_counts(y, s >= threshold)
        rates = metrics.scores_from_counts(counts)
        if rates["specificity"] is not None and rates["sensitivity"] is not None:  # None: one class only
            roc_ax.plot(1.0 - rates["specificity"], rates["sensitivity"], "o", color=colour, markersize=5)
        if counts["tp"] + counts["fp"]:
            pr_ax.plot(rates["sensitivity"], rates["precision"], "o", color=colour, markersize=5)
        if i == 0:
            prevalence = float(np.count_nonzero(y)) / max(y.size, 1)
            pr_ax.axhline(prevalence, linestyle=":", color="gray", linewidth=1,
                          label=f"chance (prevalence {prevalence:.3f})")
    for ax, title, xlabel, ylabel in ((roc_ax, f"ROC (dot: threshold {threshold:.2f})",
                                       "false positive rate (1 - specificity)", "true positive rate (sensitivity)"),
                                      (pr_ax, f"Precision-recall (dot: threshold {threshold:.2f})",
                                       "recall (sensitivity)", "precision")):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    roc_ax.legend(loc="lower right", fontsize="small")
    pr_ax.legend(loc="lower left", fontsize="small")
    roc_fig.tight_layout()
    pr_fig.tight_layout()
    _save_figure(roc_fig, roc_path)
    _save_figure(pr_fig, pr_path)


def _compact_count(n: int) -> str:
    """1234 -> '1234', 123456 -> '123k', 4600000 -> '4.6M': short enough for a heat-map cell."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.3g}M" if n < 1e9 else f"{n / 1e9:.3g}G"


def save_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Heat map of a confusion matrix (rows = true) normalized by row, cells annotated with count and percent."""
    m = np.asarray(matrix)
    n = len(class_names)
    if m.shape != (n, n):
        raise ValueError(f"matrix has shape {m.shape} but there are {n} class names")
    rows = m.sum(axis=1, keepdims=True).astype(np.float64)
    # A class absent from the labels has an all-zero row: show 0% instead of dividing by zero.
    norm = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.9 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalized)")
    fontsize = 9 if n <= 8 else 7 if n <= 15 else 5
    for i in range(n):
        for j in range(n):
            pct = 100 * norm[i, j]
            # "0.0%" for a non-zero count would read as "never"; say how small instead.
            pct_text = "<0.1%" if 0 < pct < 0.05 else f"{pct:.1f}%"
            ax.text(j, i, f"{_compact_count(int(m[i, j]))}\n{pct_text}", ha="center",
                    va="center", fontsize=fontsize, color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    _save_figure(fig, path)


def save_legend(class_names: Sequence[str], palette: np.ndarray, path: str | os.PathLike) -> None:
    """Small PNG legend: one coloured square per class name."""
    colours = _palette_u8(palette)
    if len(class_names) > len(colours):
        raise ValueError(f"{len(class_names)} class names but only {len(colours)} palette colours")
    handles = [Patch(facecolor=colours[i] / 255.0, edgecolor="black", label=str(name))
               for i, name in enumerate(class_names)]
    longest = max((len(str(x)) for x in class_names), default=1)
    fig = Figure(figsize=(0.8 + 0.09 * longest, 0.3 + 0.28 * len(handles)))
    fig.legend(handles=handles, loc="center", frameon=False)
    _save_figure(fig, path, tight=True)  # crop to the legend itself


# ----------------------------------------------------------------------------- image composites

def side_by_side(image: np.ndarray, label: np.ndarray | None, prediction: np.ndarray,
                 gap: int = GAP) -> np.ndarray:
    """uint8 RGB panel image | ground truth | prediction (image | prediction without label), white gaps."""
    rgb = _rgb_u8(image)
    hw = rgb.shape[:2]
    shown = [rgb]
    if label is not None:
        lab = _gray_u8(label, "label")
        _check_hw(lab, hw, "label")
        shown.append(np.repeat(lab[..., None], 3, axis=2))
    pred = _gray_u8(prediction, "prediction")
    _check_hw(pred, hw, "prediction")
    return panels([*shown, np.repeat(pred[..., None], 3, axis=2)], gap)


def panels(images: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """H x W x 3 uint8 images side by side, separated by white gaps."""
    sep = np.full((images[0].shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([part for image in images for part in (sep, image)][1:], axis=1)


def stretched(image: np.ndarray) -> np.ndarray:
    """An H x W x C float image (e.g. preprocessed, not in [0, 1]) stretched to its min..max as uint8 RGB."""
    x = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    low, high = float(x.min()), float(x.max())
    return np.rint(255 * (x - low) / max(high - low, 1e-6)).astype(np.uint8)


def overlay(image: np.ndarray, predicted: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB: gray image blended with TP green, FP red, FN blue (no label: predicted pixels green)."""
    rgb = _rgb_u8(image).astype(np.float64)
    # ITU-R BT.601 luma: a neutral background so that the three error colours stand out.
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    gray = np.rint(gray)
    out = np.repeat(gray[..., None], 3, axis=2)
    pred = _binary_mask(predicted, "predicted")
    _check_hw(pred, gray.shape, "predicted")
    if label is None:
        layers = [(pred, TP_COLOR)]
    else:
        lab = _binary_mask(label, "label")
        _check_hw(lab, gray.shape, "label")
        layers = [(pred & lab, TP_COLOR), (pred & ~lab, FP_COLOR), (~pred & lab, FN_COLOR)]
    for mask, colour in layers:
        out[mask] = (1.0 - ALPHA) * out[mask] + ALPHA * np.asarray(colour, dtype=np.float64)
    return np.rint(out).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write HxW or HxWx3 (or HxWx4) uint8 / bool (0, 255) / float in [0, 1] (x 255) as a PNG, atomically."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"PNG data must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = np.where(a, 255, 0).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = _unit_float_to_u8(a, "image")
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
        if lo < 0 or hi > 255:
            raise ValueError(f"integer PNG data must lie in 0..255, found {lo}..{hi}")
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"unsupported dtype {a.dtype} for a PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")


def colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Integer HxW class map -> uint8 HxWx3 RGB, class c coloured palette[c]."""
    m = np.asarray(class_map)
    if m.dtype.kind not in "iub":
        raise ValueError(f"class map must be integer, got dtype {m.dtype}")
    colours = _palette_u8(palette)
    if m.size:
        lo, hi = int(m.min()), int(m.max())
        if lo < 0 or hi >= len(colours):
            raise ValueError(f"class map holds class {lo if lo < 0 else hi}, "
                             f"but the palette has only {len(colours)} colours")
    return colours[m.astype(np.intp)]


__all__ = ["save_learning_curves", "save_roc_pr", "side_by_side", "overlay", "save_png",
           "save_confusion_matrix", "colorize", "save_legend", "GAP", "ALPHA", "TP_COLOR", "FP_COLOR",
           "FN_COLOR"]

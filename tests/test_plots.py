"""Tests of lib.plots: files written atomically as valid PNGs, composites with exactly the right pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib import plots


def _assert_png(path: Path, min_size: int = 100) -> tuple[int, int]:
    """Check `path` is a readable PNG at least `min_size` pixels wide and high; return (width, height)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.width >= min_size and im.height >= min_size
        return im.size


def _assert_only(folder: Path, names: set[str]) -> None:
    """The folder holds exactly these files: no temporary files were left behind."""
    assert {p.name for p in folder.iterdir()} == names


# ----------------------------------------------------------------------------- figures

def test_save_learning_curves(tmp_path):
    history = {
        "epoch": [0, 1, 2, 3, 4],
        "loss": [0.9, 0.6, 0.45, 0.4, 0.38],
        "val_loss": [0.95, 0.7, 0.5, 0.48, 0.49],
        "dice_coef": [0.2, 0.5, 0.6, 0.65, 0.67],
        "val_dice_coef": [0.15, 0.45, 0.58, 0.6, 0.6],
        "lr": [1e-3, 1e-3, 1e-3, 1e-4, 1e-4],
    }
    plots.save_learning_curves(history, tmp_path / "curves.png")
    width, height = _assert_png(tmp_path / "curves.png")
    assert width > height  # panels side by side
    plots.save_learning_curves(history, tmp_path / "marked.png", best=("val_dice_coef", 4))
    _assert_png(tmp_path / "marked.png")
    _assert_only(tmp_path, {"curves.png", "marked.png"})


def test_save_learning_curves_from_csv_strings_and_single_epoch(tmp_path):
    # CSV logs read with the csv module give strings; a crashed run may leave a blank cell.
    plots.save_learning_curves({"epoch": ["0"], "loss": ["0.5"], "val_loss": [""]}, tmp_path / "a.png")
    _assert_png(tmp_path / "a.png")
    with pytest.raises(ValueError):
        plots.save_learning_curves({"epoch": [0, 1]}, tmp_path / "b.png")
    _assert_only(tmp_path, {"a.png"})


def test_save_roc_pr(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random(50_000) < 0.12
    good = np.clip(rng.normal(0.25 + 0.5 * y, 0.15), 0, 1)
    weak = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    plots.save_roc_pr({"unet": (y, good), "baseline": (y, weak)}, tmp_path / "roc.png", tmp_path / "pr.png")
    _assert_png(tmp_path / "roc.png", 300)
    _assert_png(tmp_path / "pr.png", 300)
    _assert_only(tmp_path, {"roc.png", "pr.png"})


def test_subsample_curve_keeps_ends_and_limit():
    x = np.linspace(0, 1, 100_000) ** 3
    y = np.sqrt(np.linspace(0, 1, 100_000))
    sx, sy = plots._subsample_curve(x, y)
    assert sx.size <= plots.MAX_CURVE_POINTS
    assert (sx[0], sy[0], sx[-1], sy[-1]) == (x[0], y[0], x[-1], y[-1])


def test_save_confusion_matrix_and_legend(tmp_path):
    matrix = np.array([[5_000_000, 1200, 0], [900, 80_000, 2000], [0, 0, 0]])  # last class absent
    plots.save_confusion_matrix(matrix, ["background", "vessel", "disc"], tmp_path / "cm.png")
    _assert_png(tmp_path / "cm.png", 200)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    plots.save_legend(["background", "artery", "vein"], palette, tmp_path / "legend.png")
    _assert_png(tmp_path / "legend.png", 30)
    _assert_only(tmp_path, {"cm.png", "legend.png"})
    with pytest.raises(ValueError):
        plots.save_confusion_matrix(matrix, ["a", "b"], tmp_path / "bad.png")


# ----------------------------------------------------------------------------- composites

def test_side_by_side_layout_and_pixels():
    h, w, gap = 6, 5, plots.GAP
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.random((h, w)) < 0.5
    prediction = rng.integers(0, 256, (h, w)) / 255.0  # probabilities on the 1/255 grid
    panel = plots.side_by_side(image, label, prediction)
    assert panel.shape == (h, 3 * w + 2 * gap, 3) and panel.dtype == np.uint8
    np.testing.assert_array_equal(panel[:, :w], image)
    assert (panel[:, w:w + gap] == 255).all()
    np.testing.assert_array_equal(panel[:, w + gap:2 * w + gap, 0], np.where(label, 255, 0))
    assert (panel[:, 2 * w + gap:2 * w + 2 * gap] == 255).all()
    expected_pred = np.rint(prediction * 255).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(panel[:, 2 * w + 2 * gap:, c], expected_pred)


def test_side_by_side_gray_float_image_without_label():
    h, w, gap = 4, 3, plots.GAP
    image = np.arange(h * w, dtype=np.float64).reshape(h, w, 1) / 255.0
    prediction = np.array([[0, 1, 0]] * h, dtype=np.uint8)  # 0/1 mask
    panel = plots.side_by_side(image, None, prediction)
    assert panel.shape == (h, 2 * w + gap, 3)
    for c in range(3):
        np.testing.assert_array_equal(panel[:, :w, c], np.arange(h * w).reshape(h, w))
        np.testing.assert_array_equal(panel[:, w + gap:, c], prediction * 255)
    with pytest.raises(ValueError):
        plots.side_by_side(image, np.zeros((h + 1, w)), prediction)


def test_overlay_colours_at_tp_fp_fn():
    gray = np.array([[10, 60, 110], [160, 210, 250]], dtype=np.uint8)
    label = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    pred = np.array([[1, 0, 1], [0, 0, 0]], dtype=bool)
    out = plots.overlay(gray, pred, label)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8

    def blend(value: int, colour: tuple[int, int, int]) -> list[int]:
        return [int(np.rint((1 - plots.ALPHA) * value + plots.ALPHA * c)) for c in colour]

    assert out[0, 0].tolist() == blend(10, plots.TP_COLOR)
    assert out[0, 1].tolist() == blend(60, plots.FN_COLOR)
    assert out[0, 2].tolist() == blend(110, plots.FP_COLOR)
    assert out[1, 2].tolist() == blend(250, plots.FN_COLOR)
    # True negatives stay plain gray.
    assert out[1, 0].tolist() == [160] * 3 and out[1, 1].tolist() == [210] * 3
    # Without a label every predicted pixel is green, the rest gray; probabilities threshold at 0.5.
    out = plots.overlay(gray, np.array([[0.9, 0.1, 0.5], [0.49, 0.0, 0.0]]))
    assert out[0, 0].tolist() == blend(10, plots.TP_COLOR)
    assert out[0, 2].tolist() == blend(110, plots.TP_COLOR)
    assert out[0, 1].tolist() == [60] * 3 and out[1, 0].tolist() == [160] * 3


def test_overlay_rgb_image_uses_luma():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, :] = [200, 100, 50]
    out = plots.overlay(image, np.zeros((1, 2), dtype=bool))
    luma = int(np.rint(0.299 * 200 + 0.587 * 100 + 0.114 * 50))
    assert out[0, 0].tolist() == [luma] * 3


def test_save_png_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    mask = rng.random((7, 9)) < 0.5
    unit = rng.integers(0, 256, (7, 9)) / 255.0
    for name, array in (("gray", gray), ("rgb", rgb), ("mask", mask), ("unit", unit)):
        plots.save_png(array, tmp_path / f"{name}.png")
    def read(name: str) -> np.ndarray:
        with Image.open(tmp_path / f"{name}.png") as im:
            return np.asarray(im)
    np.testing.assert_array_equal(read("gray"), gray)
    np.testing.assert_array_equal(read("rgb"), rgb)
    np.testing.assert_array_equal(read("mask"), np.where(mask, 255, 0))
    np.testing.assert_array_equal(read("unit") / 255.0, unit)
    _assert_only(tmp_path, {"gray.png", "rgb.png", "mask.png", "unit.png"})
    with pytest.raises(ValueError):
        plots.save_png(unit * 2, tmp_path / "bad.png")
    _assert_only(tmp_path, {"gray.png", "rgb.png", "mask.png", "unit.png"})


def test_colorize_maps_indices_to_palette():
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], dtype=np.uint8)
    class_map = np.array([[0, 1, 2], [2, 2, 0]])
    out = plots.colorize(class_map, palette)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    for index in np.ndindex(class_map.shape):
        assert out[index].tolist() == palette[class_map[index]].tolist()
    # A float palette in [0, 1] is scaled to 0..255.
    np.testing.assert_array_equal(plots.colorize(class_map, palette / 255.0), out)
    with pytest.raises(ValueError):
        plots.colorize(np.array([[3]]), palette)

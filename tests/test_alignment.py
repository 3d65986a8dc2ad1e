"""The label offset: moving maps by sub-pixel amounts and finding the move that fits the labels."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.alignment import MIN_GAIN, best_offset, f1_moved, shift_map  # noqa: E402


def test_whole_pixel_moves_are_exact_and_half_pixels_average_neighbours() -> None:
    prob = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    down = shift_map(prob, (1, 0))
    assert np.allclose(down[1:], prob[:-1], atol=1e-5) and np.allclose(down[0], prob[0], atol=1e-5)
    assert down.dtype == np.float32
    # Moved-in rows continue the edge, however sharp the map.
    step = np.zeros((8, 8), dtype=np.float32)
    step[3] = 1.0
    assert np.allclose(shift_map(step, (-1, 0))[6:], 0.0, atol=1e-6)
    left = shift_map(prob, (0, -2))
    assert np.allclose(left[:, :-2], prob[:, 2:], atol=1e-5)
    # A half-pixel move of a smooth ramp lands halfway between its neighbours.
    ramp = np.tile(np.linspace(0.1, 0.9, 20, dtype=np.float32), (6, 1))
    half = shift_map(ramp, (0, 0.5))
    assert np.allclose(half[:, 5:-5], (ramp[:, 5:-5] + ramp[:, 4:-6]) / 2, atol=1e-3)
    assert shift_map(prob * 0 + 1, (0.3, 0.3)).max() <= 1.0  # probabilities stay probabilities
    assert shift_map(prob, (0, 0)) is prob
    # A map with a channel axis moves in its rows and columns only.
    assert np.allclose(shift_map(prob[..., None], (1, 0))[..., 0], down)


def vessel_labels(seed: int, shape: tuple[int, int] = (96, 96)) -> np.ndarray:
    """Thin random lines: where a half-pixel move of the maps changes much of the score."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=bool)
    for _ in range(8):
        (y0, x0), (y1, x1) = rng.uniform(0, shape[0] - 1, (2, 2))
        t = np.linspace(0.0, 1.0, 400)
        labels[np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)] = True
    return ndimage.binary_dilation(labels)


def blurred(labels: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
    """A model's kind of map of labels drawn offset from the image: soft, and displaced by offset."""
    soft = ndimage.gaussian_filter(labels.astype(np.float32), 1.0)
    return shift_map(soft / soft.max(), offset)


@pytest.mark.parametrize("drawn", [(0.5, -0.25), (-0.75, 0.0), (0.0, 0.375)])
def test_best_offset_moves_the_maps_back_onto_the_labels(drawn: tuple[float, float]) -> None:
    labels = [vessel_labels(seed) for seed in range(3)]
    fovs = [np.ones(label.shape, dtype=bool) for label in labels]
    maps = [blurred(label, drawn) for label in labels]
    offset, before, after = best_offset(maps, labels, fovs)
    assert offset == pytest.approx((-drawn[0], -drawn[1]), abs=0.126)
    assert after >= before + MIN_GAIN
    assert after == pytest.approx(f1_moved(maps, labels, fovs, offset))


def test_maps_on_their_labels_are_not_moved() -> None:
    labels = [vessel_labels(seed) for seed in range(3)]
    fovs = [np.ones(label.shape, dtype=bool) for label in labels]
    offset, before, after = best_offset([blurred(label, (0.0, 0.0)) for label in labels], labels, fovs)
    assert offset == (0.0, 0.0) and before == after


def test_only_pixels_inside_the_fov_count() -> None:
    labels = vessel_labels(5)
    fov = np.zeros(labels.shape, dtype=bool)
    fov[20:70, 20:70] = True
    prob = blurred(labels, (0.0, 0.0))
    outside = np.where(fov, prob, 1.0 - labels)  # certainly wrong outside the FOV
    assert f1_moved([outside], [labels], [fov]) == pytest.approx(f1_moved([prob], [labels], [fov]))
    assert f1_moved([outside], [labels], [np.ones_like(fov)]) < f1_moved([prob], [labels], [np.ones_like(fov)])

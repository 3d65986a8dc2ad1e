"""Tests for random patch sampling and extraction."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.errors import UserError  # noqa: E402
from lib.patches import extract_patches, iter_chunks, sample_centres  # noqa: E402


def _partial_fovs() -> list[np.ndarray]:
    """Three FOVs of different sizes, each covering only part of its image."""
    a = np.zeros((40, 50), bool)
    a[5:20, 30:48] = True                    # a block in the top right
    yy, xx = np.mgrid[0:33, 0:61]
    b = (yy - 16) ** 2 + (xx - 40) ** 2 <= 10 ** 2   # a disc off centre
    c = np.zeros((36, 36), bool)
    c[:, :3] = True                          # a strip at the border: mostly too close to it
    c[24:, 20:] = True
    return [a, b, c]


@pytest.mark.parametrize("n, n_images", [(100, 3), (7, 3), (2, 3), (0, 2), (1000, 1)])
def test_patch_count_is_exact_and_shared_equally(n: int, n_images: int) -> None:
    fovs = [np.ones((30 + i, 25 + 2 * i), bool) for i in range(n_images)]
    positions = sample_centres(fovs, n, 8, False, np.random.default_rng(0))
    assert positions.shape == (n, 3)
    counts = np.bincount(positions[:, 0], minlength=n_images) if n else np.zeros(n_images, int)
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("size", [8, 9, 16])
def test_every_patch_lies_inside_its_image(size: int) -> None:
    fovs = _partial_fovs()
    positions = sample_centres(fovs, 3000, size, False, np.random.default_rng(1))
    for index, top, left in positions:
        height, width = fovs[index].shape
        assert 0 <= top <= height - size
        assert 0 <= left <= width - size
    # Without inside_FOV the whole valid range is used, borders included.
    tops = positions[positions[:, 0] == 2, 1]
    assert tops.min() == 0 and tops.max() == 36 - size


@pytest.mark.parametrize("size", [8, 9, 16])
def test_inside_fov_puts_every_patch_centre_inside_the_fov(size: int) -> None:
    fovs = _partial_fovs()
    positions = sample_centres(fovs, 3000, size, True, np.random.default_rng(2))
    half = size // 2
    centres_outside = 0
    for index, top, left in positions:
        fov = fovs[index]
        height, width = fov.shape
        assert 0 <= top <= height - size and 0 <= left <= width - size
        centres_outside += not fov[top + half, left + half]
    assert centres_outside == 0
    # The centres do spread over the FOV rather than collapse onto a few pixels.
    first = positions[positions[:, 0] == 0]
    assert len({(t, l) for _, t, l in first}) > 50


def test_without_inside_fov_centres_also_fall_outside_a_partial_fov() -> None:
    fovs = _partial_fovs()
    positions = sample_centres(fovs, 600, 8, False, np.random.default_rng(3))
    outside = sum(not fovs[i][t + 4, l + 4] for i, t, l in positions)
    assert outside > 100


def test_sampling_is_deterministic_per_seed() -> None:
    fovs = _partial_fovs()
    first = sample_centres(fovs, 200, 8, True, np.random.default_rng(42))
    again = sample_centres(fovs, 200, 8, True, np.random.default_rng(42))
    other = sample_centres(fovs, 200, 8, True, np.random.default_rng(43))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_positions_come_in_random_order_not_grouped_by_image() -> None:
    fovs = [np.ones((20, 20), bool)] * 4
    positions = sample_centres(fovs, 400, 8, False, np.random.default_rng(4))
    assert not np.all(np.diff(positions[:, 0]) >= 0)


def test_image_smaller_than_patch_is_a_user_error() -> None:
    fovs = [np.ones((40, 40), bool), np.ones((40, 12), bool)]
    with pytest.raises(UserError) as info:
        sample_centres(fovs, 10, 16, False, np.random.default_rng(0))
    assert "12x40" in str(info.value) and "16x16" in str(info.value)


def test_fov_without_room_for_a_patch_centre_is_a_user_error() -> None:
    fov = np.zeros((30, 30), bool)
    fov[:, :2] = True   # only within 2 pixels of the border
    with pytest.raises(UserError, match="inside_FOV"):
        sample_centres([fov], 5, 8, True, np.random.default_rng(0))


def _centre_values(maps: list[np.ndarray], positions: np.ndarray, size: int) -> np.ndarray:
    half = size // 2
    return np.array([maps[i][t + half, l + half] for i, t, l in positions])


def test_foreground_fraction_centres_that_share_on_foreground_inside_the_fov() -> None:
    rng = np.random.default_rng(7)
    fovs = _partial_fovs()
    labels = [rng.random(f.shape) < 0.1 for f in fovs]
    size = 8
    plain = sample_centres(fovs, 3000, size, True, np.random.default_rng(8), labels=labels)
    focused = sample_centres(fovs, 3000, size, True, np.random.default_rng(8), labels=labels,
                             foreground_fraction=0.5)
    assert focused.shape == (3000, 3)
    np.testing.assert_array_equal(np.bincount(focused[:, 0]), np.bincount(plain[:, 0]))
    assert _centre_values(fovs, focused, size).all()  # still inside the FOV and the image
    on_plain = _centre_values(labels, plain, size).mean()
    on_focused = _centre_values(labels, focused, size).mean()
    # Half the centres are on foreground, the other half hit it as often as uniform ones do.
    assert on_plain < 0.2
    assert abs(on_focused - (0.5 + 0.5 * on_plain)) < 0.05, (on_plain, on_focused)


def test_zero_foreground_fraction_draws_exactly_the_plain_positions() -> None:
    fovs = _partial_fovs()
    labels = [np.ones(f.shape, bool) for f in fovs]
    plain = sample_centres(fovs, 500, 8, True, np.random.default_rng(9))
    again = sample_centres(fovs, 500, 8, True, np.random.default_rng(9), labels=labels, foreground_fraction=0.0)
    np.testing.assert_array_equal(plain, again)


def test_rare_classes_get_as_many_centres_as_common_ones() -> None:
    label = np.zeros((60, 60), np.uint8)
    label[:, 30:] = 1                       # half the image
    label[40:43, 10:13] = 2                 # nine pixels
    label[5, 5] = 255                       # void: never a target
    fovs = [np.ones(label.shape, bool)]
    positions = sample_centres(fovs, 3000, 8, True, np.random.default_rng(10), labels=[label],
                               foreground_fraction=0.9, classes=range(3))
    values = _centre_values([label], positions, 8)
    shares = np.bincount(values[values < 3], minlength=3) / len(values)
    # 0.9 split evenly over three classes, plus the uniform tenth in proportion to the areas.
    assert abs(shares[2] - 0.3) < 0.04, shares
    assert abs(shares[1] - (0.3 + 0.1 * 0.5)) < 0.04, shares
    assert (values == 255).sum() <= 5


def test_an_image_without_foreground_gets_uniform_centres() -> None:
    fovs = [np.ones((30, 30), bool), np.ones((30, 30), bool)]
    labels = [np.zeros((30, 30), bool), np.zeros((30, 30), bool)]
    labels[1][20:25, 20:25] = True
    positions = sample_centres(fovs, 400, 8, True, np.random.default_rng(11), labels=labels,
                               foreground_fraction=0.75)
    assert np.bincount(positions[:, 0]).tolist() == [200, 200]
    first = positions[positions[:, 0] == 0]
    assert len({(t, l) for _, t, l in first}) > 100  # spread out, not stuck on one pixel
    assert _centre_values(labels, positions[positions[:, 0] == 1], 8).mean() >= 0.75


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_extraction_equals_direct_slicing(channels: int | None) -> None:
    rng = np.random.default_rng(5)
    shapes = [(40, 50), (33, 61), (36, 36)]
    images = [rng.random(s if channels is None else s + (channels,)).astype(np.float32) for s in shapes]
    size = 9
    positions = sample_centres([np.ones(s, bool) for s in shapes], 250, size, False, rng)
    patches = extract_patches(images, positions, size)
    expected_shape = (250, size, size) + (() if channels is None else (channels,))
    assert patches.shape == expected_shape and patches.dtype == np.float32
    for patch, (index, top, left) in zip(patches, positions):
        np.testing.assert_array_equal(patch, images[index][top: top + size, left: left + size])


def test_extraction_of_bool_labels_keeps_dtype_and_values() -> None:
    rng = np.random.default_rng(6)
    labels = [rng.random((30, 30)) < 0.3, rng.random((25, 40)) < 0.6]
    positions = np.array([[1, 0, 0], [0, 22, 22], [1, 17, 32], [0, 5, 3]])
    patches = extract_patches(labels, positions, 8)
    assert patches.dtype == bool
    for patch, (index, top, left) in zip(patches, positions):
        np.testing.assert_array_equal(patch, labels[index][top: top + 8, left: left + 8])


def test_iter_chunks_covers_all_positions_in_order() -> None:
    positions = np.arange(23 * 3).reshape(23, 3)
    blocks = list(iter_chunks(positions, 5))
    assert [start for start, _ in blocks] == [0, 5, 10, 15, 20]
    assert [len(rows) for _, rows in blocks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in blocks]), positions)

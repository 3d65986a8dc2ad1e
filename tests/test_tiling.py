"""Tests for sliding-window inference: coverage, exact reconstruction, overlap averaging."""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.tiling import gaussian_weights, sliding_window, window_starts  # noqa: E402


def _identity(batch: np.ndarray) -> np.ndarray:
    return batch


# Image sizes not divisible by the stride or window, smaller than the window, non-square, 1 pixel high.
SIZES = [(50, 70), (17, 23), (32, 32), (100, 37), (1, 90), (61, 9)]
WINDOWS_STRIDES = [(16, 16), (16, 5), (32, 16), (32, 13), (48, 48), (48, 20)]


@pytest.mark.parametrize("window, stride", WINDOWS_STRIDES)
@pytest.mark.parametrize("multiple", [1, 8])
def test_identity_predictor_reproduces_integer_images_exactly_with_constant_blend(
        window: int, stride: int, multiple: int) -> None:
    rng = np.random.default_rng(window * 100 + stride)
    for height, width in SIZES:
        # Integer values: sums of a few copies and their division by the count are exact in float32.
        image = rng.integers(0, 256, (height, width, 2)).astype(np.float32)
        out = sliding_window(image, _identity, window, stride, batch_size=5, blend="constant",
                             multiple=multiple)
        assert out.shape == image.shape, (height, width)
        np.testing.assert_array_equal(out, image, err_msg=f"{height}x{width}")


@pytest.mark.parametrize("window, stride", WINDOWS_STRIDES)
@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_identity_predictor_reproduces_float_images_for_both_blends(window: int, stride: int,
                                                                    blend: str) -> None:
    rng = np.random.default_rng(7)
    for height, width in SIZES:
        image = rng.random((height, width, 1)).astype(np.float32)
        out = sliding_window(image, _identity, window, stride, batch_size=4, blend=blend, multiple=8)
        assert out.shape == image.shape
        np.testing.assert_allclose(out, image, rtol=0, atol=1e-5, err_msg=f"{height}x{width}")


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_predictor_returning_ones_gives_ones_with_its_own_channel_count(blend: str) -> None:
    shapes = []

    def ones(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return np.ones(batch.shape[:3] + (3,), np.float32)

    image = np.random.default_rng(0).random((45, 77, 1)).astype(np.float32)
    out = sliding_window(image, ones, 32, 12, batch_size=4, blend=blend)
    assert out.shape == (45, 77, 3)
    np.testing.assert_allclose(out, 1.0, rtol=0, atol=1e-6)
    # Batches hold at most batch_size windows of the window size.
    assert all(n <= 4 and h == w == 32 and c == 1 for n, h, w, c in shapes)
    starts_y = [0, 12, 13]     # 45 - 32 = 13: flush with the bottom
    starts_x = [0, 12, 24, 36, 45]
    assert sum(n for n, *_ in shapes) == len(starts_y) * len(starts_x)


def test_batch_size_does_not_change_the_result() -> None:
    image = np.random.default_rng(1).random((40, 53, 2)).astype(np.float32)

    def nonlinear(batch: np.ndarray) -> np.ndarray:
        return np.sin(batch * 3.0) + batch[:, ::-1] ** 2

    results = [sliding_window(image, nonlinear, 16, 6, batch_size=b, blend="gaussian") for b in (1, 3, 1000)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6)


@pytest.mark.parametrize("window, stride", [(8, 8), (8, 3), (16, 5), (16, 16), (20, 1), (7, 7)])
def test_window_starts_cover_every_pixel_and_end_flush(window: int, stride: int) -> None:
    for length in range(1, 80):
        starts = window_starts(length, window, stride)
        assert starts[0] == 0
        assert starts == sorted(set(starts)), length
        if length <= window:
            assert starts == [0]
            continue
        assert starts[-1] + window == length, length     # flush with the end, never past it
        assert all(b - a <= stride for a, b in zip(starts, starts[1:])), length
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s: s + window] = True
        assert covered.all(), length
        # No more windows than needed: one per stride step, plus at most one flush window.
        assert len(starts) == math.ceil((length - window) / stride) + 1, length


def test_overlaps_are_averaged_in_a_one_row_case() -> None:
    # One row of 10 pixels, window 4, stride 3: windows start at 0, 3 and 6 (flush).
    # The predictor returns each pixel's column inside its window, so a pixel covered by two
    # windows gets the mean of its two local columns:
    #   col:    0  1  2  3        4  5  6        7  8  9
    #   local:  0  1  2  3|0      1  2  3|0      1  2  3
    expected = np.array([0, 1, 2, 1.5, 1, 2, 1.5, 1, 2, 3], np.float32)

    def local_column(batch: np.ndarray) -> np.ndarray:
        n, h, w, _ = batch.shape
        return np.broadcast_to(np.arange(w, dtype=np.float32)[None, None, :, None], (n, h, w, 1))

    out = sliding_window(np.zeros((1, 10, 1), np.float32), local_column, 4, 3, blend="constant")
    np.testing.assert_allclose(out[0, :, 0], expected)


def test_overlaps_are_averaged_in_two_dimensions() -> None:
    # 6x6 image, window 4, stride 2: windows start at 0 and 2 along both axes. Local row
    # averages per image row: rows 0-1 -> r, rows 2-3 -> mean(r, r-2) = r-1, rows 4-5 -> r-2.
    per_axis = np.array([0, 1, 1, 2, 2, 3], np.float32)
    expected = per_axis[:, None] + 10 * per_axis[None, :]

    def local_coords(batch: np.ndarray) -> np.ndarray:
        n, h, w, _ = batch.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        return np.broadcast_to((yy + 10 * xx)[None, ..., None], (n, h, w, 1))

    out = sliding_window(np.zeros((6, 6, 1), np.float32), local_coords, 4, 2, batch_size=3)
    np.testing.assert_allclose(out[..., 0], expected)


def test_gaussian_blend_weights_overlaps_towards_window_centres() -> None:
    # One row, window 4, stride 2: windows at 0, 2, 4, 6. Column 2 is local 2 of window 0
    # (near its centre) and local 0 of window 2 (its edge); with sigma = window / 8 the
    # weights are exp(-0.5 * ((local - 1.5) / 0.5) ** 2), so the centre one dominates.
    def local_column(batch: np.ndarray) -> np.ndarray:
        n, h, w, _ = batch.shape
        return np.broadcast_to(np.arange(w, dtype=np.float32)[None, None, :, None], (n, h, w, 1))

    def weight(local: int) -> float:
        return math.exp(-0.5 * ((local - 1.5) / 0.5) ** 2)

    out = sliding_window(np.zeros((1, 10, 1), np.float32), local_column, 4, 2, blend="gaussian")[0, :, 0]
    expected = []
    starts = [0, 2, 4, 6]
    for col in range(10):
        pairs = [(col - s, weight(col - s)) for s in starts if s <= col < s + 4]
        expected.append(sum(l * w for l, w in pairs) / sum(w for _, w in pairs))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert out[2] > 1.9 and out[3] < 1.1   # not the plain means 1.0 and 2.0


def test_windows_passed_to_the_predictor_are_the_image_tiles() -> None:
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    seen = []

    def record(batch: np.ndarray) -> np.ndarray:
        seen.extend(batch.copy())
        return batch

    sliding_window(image, record, 16, 8, batch_size=2)
    corners = list(itertools.product([0, 4], [0, 8, 14]))
    assert len(seen) == len(corners)
    for tile, (y, x) in zip(seen, corners):
        np.testing.assert_array_equal(tile, image[y: y + 16, x: x + 16])


def test_images_smaller_than_the_window_are_padded_to_the_multiple() -> None:
    seen = []

    def record(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return batch + 1.0

    image = np.random.default_rng(2).random((13, 29, 1)).astype(np.float32)
    out = sliding_window(image, record, 64, 32, multiple=8)
    assert seen == [(1, 16, 32, 1)]
    np.testing.assert_allclose(out, image + 1.0, atol=1e-6)


def test_gaussian_weights_are_positive_symmetric_and_peak_in_the_centre() -> None:
    for window in (1, 4, 9, 32):
        weights = gaussian_weights(window)
        assert weights.shape == (window, window)
        assert weights.min() > 0 and weights.max() == pytest.approx(1.0)
        np.testing.assert_allclose(weights, weights[::-1, ::-1])
        np.testing.assert_allclose(weights, weights.T)
        centre = (window - 1) // 2
        assert weights[centre, centre] == weights.max()


def test_rectangular_gaussian_weights_are_the_square_profiles_crossed() -> None:
    weights = gaussian_weights(8, 32)
    assert weights.shape == (8, 32)
    # Each side keeps its own profile: the row through the centre is the 32 px square's centre row.
    np.testing.assert_allclose(weights[3], gaussian_weights(32)[15], rtol=1e-6)
    np.testing.assert_allclose(weights[:, 15], gaussian_weights(8)[:, 3], rtol=1e-6)
    np.testing.assert_allclose(weights, weights[::-1, ::-1])
    assert weights.min() >= 1e-3 and weights.max() == pytest.approx(1.0, abs=1e-3)


def test_zoomed_inference_returns_the_original_size_and_sees_a_smaller_image() -> None:
    import keras

    from lib.inference import predict_image

    seen = []

    class Record(keras.layers.Layer):
        def call(self, x):
            seen.append(tuple(x.shape[1:3]))
            return x

    model = keras.Sequential([keras.Input((None, None, 1)), Record()])
    model.run_eagerly = True  # the layer then sees each concrete input shape, not a traced one
    yy, xx = np.mgrid[0:60, 0:80]
    image = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0))[..., None].astype(np.float32)  # smooth
    testing = dict(window=64, stride=48, batch_size=4, blend="gaussian", tta_flips=False, zoom=0.5,
                   tta_scales=[1.0], mirror_margin=0)
    out = predict_image(model, image, testing, depth=2)
    assert out.shape == image.shape
    assert max(max(shape) for shape in seen if None not in shape) <= 40  # the 60x80 image went in at 30x40
    assert np.abs(out - image)[4:-4, 4:-4].max() < 0.05  # down and back up: a smooth image survives
    same = predict_image(model, image, dict(testing, zoom=1.0), depth=2)
    np.testing.assert_allclose(same, image, atol=1e-6)


def test_scale_tta_averages_the_maps_inferred_at_each_scale_times_zoom() -> None:
    import keras

    from lib.inference import predict_image

    seen = []

    class Edges(keras.layers.Layer):
        """Responds to the image's scale: a gradient's size depends on how large the image is drawn."""
        def call(self, x):
            seen.append(tuple(x.shape[1:3]))
            return keras.ops.abs(x - keras.ops.roll(x, 1, axis=2))

    model = keras.Sequential([keras.Input((None, None, 1)), Edges()])
    model.run_eagerly = True  # the layer then sees each concrete input shape, not a traced one
    xx = np.mgrid[0:60, 0:80][1]
    image = (0.5 + 0.4 * np.sin(xx / 5.0))[..., None].astype(np.float32)
    testing = dict(window=96, stride=96, batch_size=1, blend="constant", tta_flips=False, zoom=1.0, mirror_margin=0)
    single = {scale: predict_image(model, image, dict(testing, zoom=scale, tta_scales=[1.0]), depth=2)
              for scale in (0.5, 1.5)}
    assert not np.allclose(single[0.5], single[1.5], atol=1e-3)  # the scales give different maps
    seen.clear()
    both = predict_image(model, image, dict(testing, zoom=0.5, tta_scales=[1.0, 3.0]), depth=2)
    assert both.shape == image.shape
    np.testing.assert_allclose(both, (single[0.5] + single[1.5]) / 2, atol=1e-6)  # scales multiply zoom
    sides = {max(shape) for shape in seen if None not in shape}
    assert min(sides) <= 40 and max(sides) >= 90  # the image went in at 30x40 and at 90x120


def test_tta_averages_only_the_flips_the_model_was_trained_with() -> None:
    import keras

    from lib.inference import model_predictor, tta_flips

    rows = np.arange(16, dtype=np.float32)[None, :, None, None]

    class ByRow(keras.layers.Layer):
        """Depends on the row: mirrored left-right it is the same, upside down not."""
        def call(self, x):
            return x * rows

    model = keras.Sequential([keras.Input((16, 12, 1)), ByRow()])

    batch = np.random.default_rng(0).random((2, 16, 12, 1)).astype(np.float32)
    assert tta_flips({"tta_flips": False}, "all") is None
    assert tta_flips({"tta_flips": True}, "horizontal") == "horizontal"
    assert tta_flips({"tta_flips": True}, "all") == tta_flips({"tta_flips": True}, "none") == "all"
    assert tta_flips({"tta_flips": "horizontal"}, "all") == "horizontal"  # asked for: left-right only
    plain = model_predictor(model)(batch)
    np.testing.assert_allclose(model_predictor(model, "horizontal")(batch), plain, rtol=1e-6)
    np.testing.assert_allclose(model_predictor(model, "all")(batch), batch * (rows + rows[:, ::-1]) / 2, rtol=1e-6)


def test_rotation_tta_averages_the_eight_symmetries_of_the_square() -> None:
    import keras

    from lib.inference import model_predictor, tta_flips

    # Output = input times a fixed map, so each view v gives x * v^-1(map): the average over the
    # eight views is x times the mean of the map's eight rotations and reflections.
    weights = np.random.default_rng(1).random((16, 16)).astype(np.float32)

    class ByPosition(keras.layers.Layer):
        def call(self, x):
            return x * weights[None, :, :, None]

    model = keras.Sequential([keras.Input((16, 16, 1)), ByPosition()])
    batch = np.random.default_rng(2).random((3, 16, 16, 1)).astype(np.float32)
    symmetries = [np.rot90(w, k) for w in (weights, weights[:, ::-1]) for k in range(4)]
    expected = batch * np.mean(symmetries, axis=0)[None, :, :, None]
    np.testing.assert_allclose(model_predictor(model, "rotations")(batch), expected, rtol=1e-5)
    # Four flips alone miss the rotations by 90 degrees: a different average.
    assert not np.allclose(model_predictor(model, "all")(batch), expected, rtol=1e-3)
    assert tta_flips({"tta_flips": "rotations"}, "all") == "rotations"
    assert tta_flips({"tta_flips": "rotations"}, "horizontal") == "horizontal"  # a road model has an up


def test_auto_tta_means_four_flips_where_the_model_runs_fast_and_none_elsewhere() -> None:
    import keras

    from lib.backend import has_gpu
    from lib.inference import resolve_tta, tta_flips

    def model(dtype: str) -> keras.Model:
        return keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(1, 3, padding="same", dtype=dtype)])

    auto = {"tta_flips": "auto", "window": 16}
    # A float32 model is fast only on a GPU; a bfloat16 one (an AMX CPU's inference copy) is fast anywhere.
    assert resolve_tta(auto, model("float32"), "all") == {"tta_flips": has_gpu(), "window": 16}
    assert resolve_tta(auto, model("mixed_bfloat16"), "all")["tta_flips"] is True
    assert tta_flips(resolve_tta(auto, model("mixed_bfloat16"), "all"), "all") == "all"
    assert tta_flips(resolve_tta(auto, model("mixed_bfloat16"), "horizontal"), "horizontal") == "horizontal"
    # Trained without flips, the model has not seen flipped views: auto adds none.
    assert tta_flips(resolve_tta(auto, model("mixed_bfloat16"), "none"), "none") is None
    for chosen in (False, True, "horizontal", "rotations"):  # a value given outright is kept
        assert resolve_tta({"tta_flips": chosen}, model("mixed_bfloat16"), "none")["tta_flips"] == chosen
    with pytest.raises(ValueError, match="resolve_tta"):  # never read as true by accident
        tta_flips(auto, "all")


@pytest.mark.parametrize("window, stride", [(64, 64), (16, 12)])
def test_mirror_margin_gives_the_border_mirrored_context_instead_of_zero_padding(window, stride) -> None:
    import keras

    from lib.inference import predict_image

    # A 3x3 box blur with zero padding: without context it darkens the border of a flat image.
    blur = keras.Sequential([keras.Input((None, None, 1)),
                             keras.layers.Conv2D(1, 3, padding="same", use_bias=False,
                                                 kernel_initializer=keras.initializers.Constant(1 / 9))])
    image = np.full((30, 44, 1), 0.6, np.float32)
    testing = dict(window=window, stride=stride, batch_size=2, blend="constant", tta_flips=False, zoom=1.0,
                   tta_scales=[1.0])
    plain = predict_image(blur, image, dict(testing, mirror_margin=0), depth=2)
    mirrored = predict_image(blur, image, dict(testing, mirror_margin=4), depth=2)
    assert plain.shape == mirrored.shape == image.shape
    assert plain[0, 0, 0] == pytest.approx(0.6 * 4 / 9, abs=1e-5)  # a corner sees 4 of its 9 neighbours
    if window > image.shape[1] + 8:  # one window: no tile edges inside the image either
        np.testing.assert_allclose(mirrored, 0.6, atol=1e-5)  # mirrored context: no border at all
    np.testing.assert_allclose(mirrored[:, 0], mirrored[:, image.shape[1] // 2], atol=1e-5)  # the border is
    np.testing.assert_allclose(mirrored[0], mirrored[image.shape[0] // 2], atol=1e-5)  # like the middle
    # An image that is not flat comes back in place: the margin is cropped from where it was added.
    identity = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Identity()])
    ramp = np.random.default_rng(0).random((30, 44, 1)).astype(np.float32)
    np.testing.assert_allclose(predict_image(identity, ramp, dict(testing, mirror_margin=4), depth=2), ramp,
                               atol=1e-6)
    # A margin wider than the image is cut to what mirroring can give (one less than the side).
    tiny = ramp[:3, :5]
    np.testing.assert_allclose(predict_image(identity, tiny, dict(testing, mirror_margin=32), depth=2), tiny,
                               atol=1e-6)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_windows_start_at_multiples_of_the_unet_stride_so_overlaps_agree(blend: str) -> None:
    # A model whose output depends on a pixel's offset within its window modulo 8, as a U-Net with three
    # poolings does: the map is seamless only if every window starts at a multiple of 8.
    def phase(batch: np.ndarray) -> np.ndarray:
        columns = np.arange(batch.shape[2]) % 8
        return np.broadcast_to(columns[None, None, :, None], batch.shape[:3] + (1,)).astype(np.float32)

    for width, stride in ((565, 192), (300, 100), (1000, 250)):
        out = sliding_window(np.zeros((40, width, 1), np.float32), phase, 256, stride, blend=blend, multiple=8)
        assert out.shape == (40, width, 1)
        np.testing.assert_allclose(out[0, :, 0], np.arange(width) % 8, atol=1e-5, err_msg=f"width {width}")

"""Tests for preprocessing: channel selection, training-split statistics, rescale, CLAHE, gamma."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.errors import UserError  # noqa: E402
from lib.preprocessing import clahe_tile, fit_statistics, preprocess, preprocessing_settings, select_channels  # noqa: E402
from lib.readers import read_split  # noqa: E402
from lib.sample_data import write_drive_sample  # noqa: E402

W, H = 96, 88


def _settings(**changes) -> dict:
    base = {"channels": 1, "gray_mode": "luminance", "standardize": False, "rescale": False,
            "clahe": False, "clahe_clip": 0.01, "gamma": 1.0}
    base.update(changes)
    return base


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def _luminance(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.fixture
def rgb_image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


# --- channel selection ----------------------------------------------------------------------

def test_luminance_gray_uses_the_standard_weights(rgb_image: np.ndarray) -> None:
    gray = select_channels(rgb_image, 1, "luminance")
    assert gray.shape == (H, W, 1) and gray.dtype == np.float32
    np.testing.assert_allclose(gray[..., 0], _luminance(rgb_image), rtol=1e-6, atol=1e-4)
    # A pure colour shows each weight on its own.
    for channel, weight in enumerate((0.299, 0.587, 0.114)):
        pure = np.zeros((2, 2, 3), np.uint8)
        pure[..., channel] = 200
        np.testing.assert_allclose(select_channels(pure, 1, "luminance"), 200 * weight, rtol=1e-6)


def test_green_gray_is_the_green_channel(rgb_image: np.ndarray) -> None:
    gray = select_channels(rgb_image, 1, "green")
    assert gray.shape == (H, W, 1)
    np.testing.assert_array_equal(gray[..., 0], rgb_image[..., 1].astype(np.float32))


def test_three_channels_keep_rgb_and_repeat_gray(rgb_image: np.ndarray) -> None:
    kept = select_channels(rgb_image, 3, "luminance")
    np.testing.assert_array_equal(kept, rgb_image.astype(np.float32))
    gray = rgb_image[..., 0]
    repeated = select_channels(gray, 3, "green")
    assert repeated.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(repeated[..., c], gray)
    # A gray image stays itself whatever the gray mode.
    np.testing.assert_array_equal(select_channels(gray[..., None], 1, "green")[..., 0], gray)


# --- statistics -----------------------------------------------------------------------------

def test_fit_statistics_uses_only_fov_pixels_of_all_images() -> None:
    rng = np.random.default_rng(2)
    images = [rng.normal(50, 10, (30, 40, 3)).astype(np.float32),
              rng.normal(120, 30, (20, 24, 3)).astype(np.float32)]
    fovs = [_disc(30, 40, 15, 20, 12), np.ones((20, 24), bool)]
    fovs[1][:, :5] = False
    # Pixels outside the FOV are extreme: any leak would show in mean and std.
    images[0][~fovs[0]] = 1e4
    images[1][~fovs[1]] = -1e4
    stats = fit_statistics(images, fovs)
    pixels = np.concatenate([img[fov].astype(np.float64) for img, fov in zip(images, fovs)])
    np.testing.assert_allclose(stats["mean"], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(0), rtol=1e-7)
    assert len(stats["mean"]) == len(stats["std"]) == 3


def test_fit_statistics_without_fov_pixels_is_a_user_error() -> None:
    with pytest.raises(UserError, match="field-of-view"):
        fit_statistics([np.ones((4, 4, 1), np.float32)], [np.zeros((4, 4), bool)])


def test_test_image_is_standardized_with_the_training_statistics() -> None:
    rng = np.random.default_rng(3)
    fov = _disc(H, W, H / 2, W / 2, 35)
    train = [rng.integers(60, 140, (H, W, 3), dtype=np.uint8) for _ in range(2)]
    stats = fit_statistics([select_channels(t, 1, "luminance") for t in train], [fov, fov])
    train_pixels = np.concatenate([_luminance(t)[fov] for t in train])
    mean, std = train_pixels.mean(), train_pixels.std()
    np.testing.assert_allclose(stats["mean"], [mean], rtol=1e-6)

    test = rng.integers(150, 256, (H, W, 3), dtype=np.uint8)   # much brighter than training
    out = preprocess(test, fov, _settings(standardize=True), stats)
    expected = np.where(fov, (_luminance(test) - mean) / std, 0.0)
    assert out.shape == (H, W, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5, atol=1e-4)
    # Standardizing with its own statistics would centre it; with the training ones it stays high.
    assert out[fov].mean() > 2.0


def test_standardize_without_statistics_refuses() -> None:
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), _settings(standardize=True), None)


def test_prepare_datasets_fits_statistics_on_training_images_only(tmp_path: Path, monkeypatch, capsys) -> None:
    import prepare_datasets

    root = write_drive_sample(tmp_path / "DRIVE", n_train=3, n_test=1, width=W, height=H, seed=9)
    prepared = tmp_path / "prepared"
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"),
        "--set", "dataset=DRIVE", "--set", f"dataset_dir={root}", "--set", f"prepared_dir={prepared}",
        "--set", "holdout_ids=22", "--set", "N_subimgs=30", "--set", "patch_size=16",
        "--set", "clahe=false", "--set", "gamma=1.0", "--set", "rescale=false",
    ])
    assert prepare_datasets.main() == 0
    capsys.readouterr()

    train = {s.id: s for s in read_split("DRIVE", root, "train")}
    (test,) = read_split("DRIVE", root, "test")
    used = [train[21], train[23]]
    pixels = np.concatenate([_luminance(s.image)[s.fov] for s in used])
    with h5py.File(prepared / "dataset.h5", "r") as h5:
        stats = json.loads(h5.attrs["statistics"])
        stored_test = h5["test/images/00000"][()]
        stored_val_names = list(h5["val/names"].asstr()[()])
        stored_train_ids = h5["train/ids"][()].tolist()
    np.testing.assert_allclose(stats["mean"], [pixels.mean()], rtol=1e-5)
    np.testing.assert_allclose(stats["std"], [pixels.std()], rtol=1e-5)
    assert stored_train_ids == [21, 23]
    assert stored_val_names == ["22_training.tif"]
    # Including the held-out or test image would have given other statistics.
    everything = np.concatenate([pixels, _luminance(train[22].image)[train[22].fov],
                                 _luminance(test.image)[test.fov]])
    assert abs(everything.mean() - pixels.mean()) > 1e-3
    # The test image was standardized with those training statistics.
    expected = np.where(test.fov, (_luminance(test.image) - pixels.mean()) / pixels.std(), 0.0)
    np.testing.assert_allclose(stored_test[..., 0], expected, rtol=1e-4, atol=1e-4)


# --- rescale, CLAHE, gamma ------------------------------------------------------------------

def _rescaled_by_hand(gray: np.ndarray, fov: np.ndarray) -> np.ndarray:
    low, high = gray[fov].min(), gray[fov].max()
    return np.where(fov, np.clip((gray - low) / (high - low), 0.0, 1.0), 0.0)


def test_rescale_maps_fov_pixels_to_unit_range_and_zeroes_the_rest(rgb_image: np.ndarray) -> None:
    fov = _disc(H, W, 40, 50, 30)
    image = rgb_image.copy()
    image[~fov] = 255   # brighter outside than anywhere inside: must not set the range
    out = preprocess(image, fov, _settings(rescale=True), None)[..., 0]
    assert np.all(out[~fov] == 0.0)
    inside = out[fov]
    assert inside.min() == pytest.approx(0.0, abs=1e-6)
    assert inside.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out, _rescaled_by_hand(_luminance(image), fov), atol=1e-5)


def test_standardize_then_rescale_is_still_the_fov_min_max_map(rgb_image: np.ndarray) -> None:
    fov = _disc(H, W, 44, 48, 40)
    stats = {"mean": [100.0], "std": [25.0]}
    out = preprocess(rgb_image, fov, _settings(standardize=True, rescale=True), stats)[..., 0]
    np.testing.assert_allclose(out, _rescaled_by_hand(_luminance(rgb_image), fov), atol=1e-5)


def test_rescale_is_per_channel_with_rgb(rgb_image: np.ndarray) -> None:
    fov = np.ones((H, W), bool)
    image = rgb_image.copy()
    image[..., 0] = np.clip(image[..., 0], 100, 150)   # a narrow red range
    out = preprocess(image, fov, _settings(channels=3, rescale=True), None)
    assert out.shape == (H, W, 3)
    for c in range(3):
        channel = image[..., c].astype(np.float64)
        expected = (channel - channel.min()) / (channel.max() - channel.min())
        np.testing.assert_allclose(out[..., c], expected, atol=1e-5)


def test_gamma_is_applied_as_one_over_gamma_power(rgb_image: np.ndarray) -> None:
    fov = _disc(H, W, 44, 48, 38)
    plain = _rescaled_by_hand(_luminance(rgb_image), fov)
    for gamma in (2.0, 0.5):
        out = preprocess(rgb_image, fov, _settings(rescale=True, gamma=gamma), None)[..., 0]
        np.testing.assert_allclose(out, plain ** (1.0 / gamma), atol=1e-5)
    brighter = preprocess(rgb_image, fov, _settings(rescale=True, gamma=2.0), None)[..., 0]
    middle = fov & (plain > 0.05) & (plain < 0.95)
    assert np.all(brighter[middle] > plain[middle])


def test_clahe_without_rescale_is_a_user_error(rgb_image: np.ndarray) -> None:
    with pytest.raises(UserError, match="rescale"):
        preprocess(rgb_image, np.ones((H, W), bool), _settings(clahe=True), None)


def test_clahe_changes_contrast_within_unit_range() -> None:
    # A low-contrast gradient with a small bright spot: CLAHE spreads the gradient's levels.
    yy, xx = np.mgrid[0:H, 0:W]
    gray = (100 + 20 * xx / W).astype(np.uint8)
    gray[40:44, 40:44] = 250
    image = np.repeat(gray[..., None], 3, axis=-1)
    fov = np.ones((H, W), bool)
    plain = preprocess(image, fov, _settings(rescale=True), None)[..., 0]
    equalized = preprocess(image, fov, _settings(rescale=True, clahe=True, clahe_clip=0.05), None)[..., 0]
    assert equalized.min() >= 0.0 and equalized.max() <= 1.0
    away = np.ones((H, W), bool)
    away[30:54, 30:54] = False
    assert np.ptp(equalized[away]) > 1.3 * np.ptp(plain[away])


def test_a_blank_image_stays_blank_through_clahe() -> None:
    # A blank slice or an empty tile: CLAHE would make 0/1 speckle of it, which a model reads as structure.
    for value in (0, 120):
        image = np.full((H, W, 3), value, np.uint8)
        out = preprocess(image, np.ones((H, W), bool), _settings(rescale=True, clahe=True, clahe_clip=0.01), None)
        assert np.ptp(out) == 0.0


def test_clahe_with_the_training_tile_equalizes_an_image_as_in_training_whatever_its_size() -> None:
    # Training images of 64x64 (tile 8x8); the same tissue seen in an image four times as large (2x2 copies)
    # must be equalized as it was in training. skimage's default tile, 1/8 of each image, would double.
    rng = np.random.default_rng(3)
    small = (rng.random((8, 8)) * 60 + 90).repeat(8, 0).repeat(8, 1).astype(np.uint8)  # 64x64 blocks
    small = np.clip(small.astype(int) + rng.integers(-5, 6, small.shape), 0, 255).astype(np.uint8)
    large = np.tile(small, (2, 2))
    tile = clahe_tile([(64, 64), (60, 70), (64, 64)])
    assert tile == [8, 8]

    def equalized(gray: np.ndarray, **extra) -> np.ndarray:
        image = np.repeat(gray[..., None], 3, axis=-1)
        settings = _settings(rescale=True, clahe=True, clahe_clip=0.02, **extra)
        return preprocess(image, np.ones(gray.shape, bool), settings, None)[..., 0]

    inside = (slice(0, 48), slice(0, 48))  # away from where the small image ends and the copies meet
    same = np.abs(equalized(large, clahe_tile=tile)[inside] - equalized(small, clahe_tile=tile)[inside])
    other = np.abs(equalized(large)[inside] - equalized(small)[inside])
    assert same.max() < 1e-6 and other.mean() > 0.02
    np.testing.assert_array_equal(equalized(small, clahe_tile=tile), equalized(small))  # 1/8 of 64 is 8


def test_preprocessing_settings_collects_channels_and_preprocessing_keys() -> None:
    config = {"preprocessing": {"gray_mode": "green", "gamma": 1.0}, "data attributes": {"channels": 3},
              "model": {"depth": 3}}
    assert preprocessing_settings(config) == {"gray_mode": "green", "gamma": 1.0, "channels": 3}

"""Tests for the synthetic DRIVE-format sample dataset."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib import sample_data  # noqa: E402
from lib.sample_data import make_fundus, write_drive_sample  # noqa: E402

W, H = 128, 120   # small, non-square: catches width/height mix-ups


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.mode == "L"   # like DRIVE's own gifs, not a 2-colour palette image
        return np.asarray(im.convert("L"))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_drive_sample(tmp_path_factory.mktemp("s") / "DRIVE", n_train=3, n_test=2,
                              width=W, height=H, seed=7)


def test_layout_and_names_match_drive(small_sample: Path) -> None:
    files = sorted(p.relative_to(small_sample).as_posix()
                   for p in small_sample.rglob("*") if p.is_file())
    assert files == sorted([
        *(f"training/images/{n}_training.tif" for n in ("21", "22", "23")),
        *(f"training/1st_manual/{n}_manual1.gif" for n in ("21", "22", "23")),
        *(f"training/mask/{n}_training_mask.gif" for n in ("21", "22", "23")),
        *(f"test/images/{n}_test.tif" for n in ("01", "02")),
        *(f"test/1st_manual/{n}_manual1.gif" for n in ("01", "02")),
        *(f"test/mask/{n}_test_mask.gif" for n in ("01", "02")),
    ])
    assert sorted(p.name for p in small_sample.iterdir()) == ["test", "training"]


def test_formats_modes_and_sizes(small_sample: Path) -> None:
    for split, numbers in (("training", (21, 22, 23)), ("test", (1, 2))):
        for n in numbers:
            with Image.open(small_sample / split / "images" / f"{n:02d}_{split}.tif") as im:
                assert (im.format, im.mode, im.size) == ("TIFF", "RGB", (W, H))
                assert im.info.get("compression") == "tiff_lzw"
                image = np.asarray(im)
            label = _read_mask(small_sample / split / "1st_manual" / f"{n:02d}_manual1.gif")
            fov = _read_mask(small_sample / split / "mask" / f"{n:02d}_{split}_mask.gif")
            assert image.shape == (H, W, 3) and image.dtype == np.uint8
            assert label.shape == fov.shape == (H, W)
            assert set(np.unique(label)) == {0, 255}
            assert set(np.unique(fov)) == {0, 255}
            assert not np.any((label == 255) & (fov == 0)), "vessel label outside the FOV"


def test_files_hold_exactly_what_make_fundus_returns(small_sample: Path) -> None:
    # Each image comes from its own (seed, number) generator, so it can be regenerated.
    image, vessels, fov = make_fundus(np.random.default_rng((7, 22)), W, H)
    assert np.array_equal(np.asarray(Image.open(small_sample / "training/images/22_training.tif")),
                          image)
    assert np.array_equal(_read_mask(small_sample / "training/1st_manual/22_manual1.gif"),
                          vessels.astype(np.uint8) * 255)
    assert np.array_equal(_read_mask(small_sample / "training/mask/22_training_mask.gif"),
                          fov.astype(np.uint8) * 255)


def test_make_fundus_types_and_fov_geometry() -> None:
    image, vessels, fov = make_fundus(np.random.default_rng(0), W, H)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert vessels.shape == fov.shape == (H, W)
    assert vessels.dtype == fov.dtype == bool
    # FOV: centred disc of radius 0.47 * min(W, H).
    expected_area = np.pi * (0.47 * min(W, H)) ** 2
    assert abs(fov.sum() - expected_area) / expected_area < 0.03
    assert fov[H // 2, W // 2] and not fov[0, 0] and not fov[-1, -1]
    assert not np.any(vessels & ~fov)
    # Outside the FOV the picture is dark; inside it is a bright red-orange retina.
    assert image[~fov].mean() < 10
    red, green, blue = (image[..., c][fov & ~vessels].mean() for c in range(3))
    assert red > green > blue and red > 100


def test_full_size_vessel_fraction_contrast_and_speed() -> None:
    import time
    fractions, times = [], []
    for seed in range(3):
        start = time.perf_counter()
        image, vessels, fov = make_fundus(np.random.default_rng(seed))
        times.append(time.perf_counter() - start)
        assert image.shape == (584, 565, 3)
        fractions.append(vessels.sum() / fov.sum())
        green = image[..., 1].astype(float)
        background = fov & ~vessels
        # Vessels are darker, most clearly in green, but not trivially separable.
        assert green[vessels].mean() < 0.93 * green[background].mean()
        red = image[..., 0].astype(float)
        green_drop = 1 - green[vessels].mean() / green[background].mean()
        red_drop = 1 - red[vessels].mean() / red[background].mean()
        assert green_drop > red_drop
    assert all(0.07 <= f <= 0.15 for f in fractions), fractions
    assert min(times) < 1.0, times


def test_vessels_are_connected_trees_of_thick_and_thin_vessels() -> None:
    from scipy import ndimage
    from skimage.morphology import skeletonize
    _, vessels, _ = make_fundus(np.random.default_rng(1))
    # Every branch grows from the optic disc and thin ones are drawn 8-connected, as in
    # DRIVE's manual labels: the label is one network, not scattered dashes.
    labels, count = ndimage.label(vessels, structure=np.ones((3, 3)))
    assert np.bincount(labels.ravel())[1:].max() > 0.97 * vessels.sum()
    # Widths from about 1 px (most of the length) up to about 7 px trunks.
    half_width = ndimage.distance_transform_edt(vessels)[skeletonize(vessels)]
    assert half_width.max() >= 3
    assert np.mean(half_width <= 1.5) > 0.4


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = write_drive_sample(tmp_path / "a", n_train=2, n_test=1, width=64, height=60, seed=3)
    b = write_drive_sample(tmp_path / "b", n_train=2, n_test=1, width=64, height=60, seed=3)
    c = write_drive_sample(tmp_path / "c", n_train=2, n_test=1, width=64, height=60, seed=4)
    assert _tree(a) == _tree(b)
    tree_c = _tree(c)
    assert tree_c.keys() == _tree(a).keys()
    assert tree_c["training/images/21_training.tif"] != _tree(a)["training/images/21_training.tif"]
    # Each image differs from the others in the same dataset.
    img21, img22 = (_tree(a)[f"training/images/{n}_training.tif"] for n in (21, 22))
    assert img21 != img22


def test_make_fundus_same_rng_state_same_output() -> None:
    first = make_fundus(np.random.default_rng(11), 96, 90)
    second = make_fundus(np.random.default_rng(11), 96, 90)
    other = make_fundus(np.random.default_rng(12), 96, 90)
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    assert not np.array_equal(first[1], other[1])


def test_existing_root_is_refused_and_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "DRIVE"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_drive_sample(root, n_train=1, n_test=0, width=32, height=32)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DRIVE"]


def test_no_test_split_and_no_temp_left(tmp_path: Path) -> None:
    root = write_drive_sample(tmp_path / "nested" / "DRIVE", n_train=1, n_test=0,
                              width=40, height=40)
    assert root == tmp_path / "nested" / "DRIVE"
    assert sorted(p.name for p in root.iterdir()) == ["training"]
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["DRIVE"]
    assert (root / "training/images/21_training.tif").is_file()


def test_failure_removes_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_make_fundus(rng: np.random.Generator, width: int, height: int):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return make_fundus(rng, width, height)

    monkeypatch.setattr(sample_data, "make_fundus", failing_make_fundus)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_drive_sample(tmp_path / "DRIVE", n_train=3, n_test=0, width=32, height=32)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_drive_sample(tmp_path / "x", n_train=0)
    with pytest.raises(ValueError):
        write_drive_sample(tmp_path / "y", n_train=1, n_test=-1)
    with pytest.raises(ValueError):
        make_fundus(np.random.default_rng(0), 8, 8)
    assert list(tmp_path.iterdir()) == []

"""Tests for the dataset readers on data written in the real file formats (TIFF, GIF, PNG)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.errors import UserError  # noqa: E402
from lib.readers import read_image, read_split, read_stack  # noqa: E402
from lib.sample_data import write_drive_sample  # noqa: E402
from conftest import write_tiff_stack  # noqa: E402

W, H = 96, 88   # small and non-square


@pytest.fixture(scope="module")
def pristine_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_drive_sample(tmp_path_factory.mktemp("pristine") / "DRIVE", n_train=2, n_test=1,
                              width=W, height=H, seed=5)


@pytest.fixture
def drive_root(pristine_drive: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of a 2-train / 1-test DRIVE-layout dataset (ids 21, 22 and 1)."""
    return Path(shutil.copytree(pristine_drive, tmp_path / "DRIVE"))


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _save_gif(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path, format="GIF", optimize=False)


# --- DRIVE ----------------------------------------------------------------------------------

def test_drive_sample_reads_with_expected_shapes_and_types(drive_root: Path) -> None:
    train = read_split("DRIVE", drive_root, "train")
    test = read_split("DRIVE", drive_root, "test")
    assert [s.id for s in train] == [21, 22]
    assert [s.id for s in test] == [1]
    for sample in train + test:
        assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
        assert sample.label.shape == sample.fov.shape == (H, W)
        assert sample.label.dtype == sample.fov.dtype == bool
    first = train[0]
    folder = drive_root / "training"
    np.testing.assert_array_equal(first.image, _rgb(folder / "images" / "21_training.tif"))
    np.testing.assert_array_equal(first.fov, _gray(folder / "mask" / "21_training_mask.gif") == 255)
    np.testing.assert_array_equal(first.label, _gray(folder / "1st_manual" / "21_manual1.gif") == 255)


def test_drive_pairs_files_by_number_not_by_sort_order(drive_root: Path) -> None:
    folder = drive_root / "training"
    # 21 -> 10 and 22 -> 9, with the label of 9 zero-padded: sorted names put 10 before 9 in images
    # and '09' before '10' in labels, so pairing by position would swap them.
    renames = {21: ("10", "10", "10"), 22: ("9", "09", "9")}
    for old, (img, lab, msk) in renames.items():
        (folder / "images" / f"{old}_training.tif").rename(folder / "images" / f"{img}_training.tif")
        (folder / "1st_manual" / f"{old}_manual1.gif").rename(folder / "1st_manual" / f"{lab}_manual1.gif")
        (folder / "mask" / f"{old}_training_mask.gif").rename(folder / "mask" / f"{msk}_training_mask.gif")
    # Make the label of image 10 unmistakable: a block pattern no vessel map looks like.
    distinct = np.zeros((H, W), np.uint8)
    distinct[::8, :] = 255
    distinct[:, :20] = 255
    _save_gif(distinct, folder / "1st_manual" / "10_manual1.gif")

    samples = read_split("DRIVE", drive_root, "train")
    assert [(s.id, s.name) for s in samples] == [(9, "9_training.tif"), (10, "10_training.tif")]
    by_id = {s.id: s for s in samples}
    np.testing.assert_array_equal(by_id[10].label, distinct == 255)
    np.testing.assert_array_equal(by_id[9].label, _gray(folder / "1st_manual" / "09_manual1.gif") == 255)
    assert not np.array_equal(by_id[9].label, by_id[10].label)
    np.testing.assert_array_equal(by_id[9].image, _rgb(folder / "images" / "9_training.tif"))
    np.testing.assert_array_equal(by_id[10].image, _rgb(folder / "images" / "10_training.tif"))


def test_missing_label_is_a_user_error_naming_the_image(drive_root: Path) -> None:
    (drive_root / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert "22_training.tif" in str(info.value)
    assert "21_training.tif" not in str(info.value)


def test_missing_mask_is_a_user_error_naming_the_image(drive_root: Path) -> None:
    (drive_root / "test" / "mask" / "01_test_mask.gif").unlink()
    with pytest.raises(UserError, match="01_test.tif"):
        read_split("DRIVE", drive_root, "test")


def test_extra_label_file_is_named(drive_root: Path) -> None:
    manual = drive_root / "training" / "1st_manual"
    shutil.copy(manual / "21_manual1.gif", manual / "35_manual1.gif")
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert "35_manual1.gif" in str(info.value)


def test_duplicate_number_is_a_user_error_naming_both_files(drive_root: Path) -> None:
    images = drive_root / "training" / "images"
    shutil.copy(images / "21_training.tif", images / "021_training.tif")
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert "021_training.tif" in str(info.value) and "21_training.tif" in str(info.value)


def test_unexpected_stray_file_is_named(drive_root: Path) -> None:
    (drive_root / "training" / "images" / "notes.txt").write_text("hello")
    (drive_root / "training" / "images" / ".DS_Store").write_text("hidden files are ignored")
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert "notes.txt" in str(info.value)
    assert ".DS_Store" not in str(info.value)


def test_size_mismatch_between_image_and_label_names_both_files(drive_root: Path) -> None:
    label = drive_root / "training" / "1st_manual" / "22_manual1.gif"
    _save_gif(np.zeros((H, W + 4), np.uint8), label)
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    message = str(info.value)
    assert "22_training.tif" in message and "22_manual1.gif" in message
    assert f"{W}x{H}" in message and f"{W + 4}x{H}" in message


def test_corrupt_image_is_a_user_error_naming_the_file(drive_root: Path) -> None:
    image = drive_root / "training" / "images" / "22_training.tif"
    image.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert str(image) in str(info.value)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_truncated_image_is_a_user_error_naming_the_file(drive_root: Path) -> None:
    image = drive_root / "training" / "images" / "21_training.tif"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert str(image) in str(info.value)


def test_zero_byte_file_is_a_user_error_naming_the_file(drive_root: Path) -> None:
    mask = drive_root / "training" / "mask" / "21_training_mask.gif"
    mask.write_bytes(b"")
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    assert str(mask) in str(info.value)
    assert "empty" in str(info.value)


def test_label_with_three_levels_lists_its_values(drive_root: Path) -> None:
    label = drive_root / "training" / "1st_manual" / "21_manual1.gif"
    three = np.zeros((H, W), np.uint8)
    three[:, 30:60] = 128
    three[:, 60:] = 255
    _save_gif(three, label)
    with pytest.raises(UserError) as info:
        read_split("DRIVE", drive_root, "train")
    message = str(info.value)
    assert "21_manual1.gif" in message
    assert "0, 128, 255" in message


def test_label_with_zero_one_values_is_accepted(drive_root: Path) -> None:
    label = drive_root / "training" / "1st_manual" / "21_manual1.gif"
    values = (np.arange(H * W).reshape(H, W) % 3 == 0).astype(np.uint8)
    _save_gif(values, label)
    sample = read_split("DRIVE", drive_root, "train")[0]
    np.testing.assert_array_equal(sample.label, values == 1)


def test_test_split_without_manual_labels_has_no_labels(drive_root: Path) -> None:
    shutil.rmtree(drive_root / "test" / "1st_manual")
    (test,) = read_split("DRIVE", drive_root, "test")
    assert test.label is None
    assert test.fov.any()


def test_training_split_without_manual_folder_is_a_user_error(drive_root: Path) -> None:
    shutil.rmtree(drive_root / "training" / "1st_manual")
    with pytest.raises(UserError, match="1st_manual"):
        read_split("DRIVE", drive_root, "train")


def test_missing_dataset_folder_is_a_user_error(tmp_path: Path) -> None:
    for dataset in ("DRIVE", "ISBI2012", "sample"):
        with pytest.raises(UserError) as info:
            read_split(dataset, tmp_path / "absent", "train")
        assert str(tmp_path / "absent") in str(info.value)


def test_read_image_of_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "x.png")


# --- ISBI 2012 ------------------------------------------------------------------------------

ISBI_SLICES, ISBI_H, ISBI_W = 12, 40, 48


@pytest.fixture(scope="module")
def isbi_arrays() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (ISBI_H, ISBI_W), dtype=np.uint8) for _ in range(ISBI_SLICES)]
    labels = [np.where(rng.random((ISBI_H, ISBI_W)) < 0.7, 255, 0).astype(np.uint8) for _ in range(ISBI_SLICES)]
    tests = [rng.integers(0, 256, (ISBI_H, ISBI_W), dtype=np.uint8) for _ in range(3)]
    return images, labels, tests


@pytest.fixture
def isbi_stack_root(isbi_arrays, tmp_path: Path) -> Path:
    images, labels, tests = isbi_arrays
    root = tmp_path / "isbi_stack"
    root.mkdir()
    write_tiff_stack(images, root / "train-volume.tif")
    write_tiff_stack(labels, root / "train-labels.tif")
    write_tiff_stack(tests, root / "test-volume.tif")
    return root


@pytest.fixture
def isbi_png_root(isbi_arrays, tmp_path: Path) -> Path:
    images, labels, tests = isbi_arrays
    root = tmp_path / "isbi_png"
    for sub in ("train/image", "train/label", "test/image"):
        (root / sub).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(root / "train" / "image" / f"{i}.png")
        Image.fromarray(label).save(root / "train" / "label" / f"{i}.png")
    for i, image in enumerate(tests):
        Image.fromarray(image).save(root / "test" / "image" / f"{i}.png")
    return root


def test_read_stack_returns_every_page(isbi_arrays, isbi_stack_root: Path) -> None:
    pages = read_stack(isbi_stack_root / "train-volume.tif")
    assert len(pages) == ISBI_SLICES
    for page, expected in zip(pages, isbi_arrays[0]):
        np.testing.assert_array_equal(page, expected)


def test_isbi_stack_and_png_folders_give_identical_samples(isbi_arrays, isbi_stack_root: Path,
                                                           isbi_png_root: Path) -> None:
    images, labels, tests = isbi_arrays
    from_stack = read_split("ISBI2012", isbi_stack_root, "train", "interior")
    from_png = read_split("ISBI2012", isbi_png_root, "train", "interior")
    assert len(from_stack) == len(from_png) == ISBI_SLICES
    # Both layouts number slices 0..N-1; the PNG names sort 0, 1, 10, 11, 2, ... as text.
    assert [s.id for s in from_stack] == [s.id for s in from_png] == list(range(ISBI_SLICES))
    for a, b, image, label in zip(from_stack, from_png, images, labels):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.image[..., 0], image)
        assert a.image.shape == (ISBI_H, ISBI_W, 1)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.label, label == 255)   # white is cell interior
        assert a.fov.all() and b.fov.all()
    test_stack = read_split("ISBI2012", isbi_stack_root, "test", "interior")
    test_png = read_split("ISBI2012", isbi_png_root, "test", "interior")
    assert len(test_stack) == len(test_png) == len(tests)
    for a, b, image in zip(test_stack, test_png, tests):
        assert a.label is None and b.label is None
        np.testing.assert_array_equal(a.image[..., 0], image)
        np.testing.assert_array_equal(b.image[..., 0], image)


@pytest.mark.parametrize("layout", ["stack", "png"])
def test_isbi_membrane_and_interior_are_complements(layout: str, isbi_stack_root: Path,
                                                    isbi_png_root: Path) -> None:
    root = isbi_stack_root if layout == "stack" else isbi_png_root
    membrane = read_split("ISBI2012", root, "train", "membrane")
    interior = read_split("ISBI2012", root, "train", "interior")
    for m, i in zip(membrane, interior):
        np.testing.assert_array_equal(m.label, ~i.label)
        assert m.label.any() and i.label.any()


def test_isbi_stacks_with_different_slice_counts_are_a_user_error(isbi_arrays, isbi_stack_root: Path) -> None:
    write_tiff_stack(isbi_arrays[1][:5], isbi_stack_root / "train-labels.tif")
    with pytest.raises(UserError) as info:
        read_split("ISBI2012", isbi_stack_root, "train")
    assert "12 slices" in str(info.value) and "5" in str(info.value)


def test_isbi_missing_label_stack_is_a_user_error(isbi_stack_root: Path) -> None:
    (isbi_stack_root / "train-labels.tif").unlink()
    with pytest.raises(UserError, match="train-labels.tif not found: the training slices"):
        read_split("ISBI2012", isbi_stack_root, "train")


def test_isbi_png_training_without_label_folder_is_a_user_error(isbi_png_root: Path) -> None:
    shutil.rmtree(isbi_png_root / "train" / "label")
    with pytest.raises(UserError, match="label"):
        read_split("ISBI2012", isbi_png_root, "train")


def test_isbi_png_missing_label_names_the_image(isbi_png_root: Path) -> None:
    (isbi_png_root / "train" / "label" / "7.png").unlink()
    with pytest.raises(UserError) as info:
        read_split("ISBI2012", isbi_png_root, "train")
    assert "7.png" in str(info.value)


def test_isbi_folder_without_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ISBI 2012 data not found"):
        read_split("ISBI2012", tmp_path, "train")
    assert read_split("ISBI2012", tmp_path, "test") == []


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_isbi_stack_is_a_user_error_naming_it(isbi_stack_root: Path) -> None:
    stack = isbi_stack_root / "train-volume.tif"
    stack.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(UserError) as info:
        read_split("ISBI2012", isbi_stack_root, "train")
    assert str(stack) in str(info.value)


def test_isbi_stacks_beside_png_folders_are_read_and_the_choice_is_said(isbi_stack_root: Path, isbi_png_root: Path,
                                                                        capsys) -> None:
    import shutil
    shutil.copytree(isbi_png_root / "train", isbi_stack_root / "train")
    (isbi_stack_root / "train" / "image" / "0.png").unlink()  # the folders would fail: the stack is read
    assert len(read_split("ISBI2012", isbi_stack_root, "train", "membrane")) == ISBI_SLICES
    assert "holds both train-volume.tif and" in capsys.readouterr().out

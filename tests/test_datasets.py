"""Tests for the STARE, CHASE_DB1, HRF and generic-folder readers, derived FOVs, splits and scale.

Every dataset is written in its release's real formats (PPM P6/P5 and gzipped PPM, JPEG with
1-bit PNG labels, mixed-case .JPG/.jpg with TIFF labels and RGB TIFF masks), only smaller.
"""
from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config import load_config  # noqa: E402
from lib.errors import UserError  # noqa: E402
from lib.fov import derive_fov  # noqa: E402
from lib.readers import chase_id, hrf_id, read_dataset, read_split, split_entries  # noqa: E402
from lib.sample_data import make_fundus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FW, FH = 240, 220   # fundus size: large enough for a 1-pixel erosion to cost < 3% of the FOV
W, H = 64, 48       # generic images


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _fundus(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_fundus(np.random.default_rng(seed), FW, FH)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --- derived FOV ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_derived_fov_matches_the_true_fov_of_a_synthetic_fundus(seed: int) -> None:
    image, _, fov = _fundus(seed)
    derived = derive_fov(image)
    assert derived.dtype == bool and derived.shape == fov.shape
    assert _iou(derived, fov) > 0.97
    assert not (derived & ~fov).any()   # eroded: never reaches into the dark surround


def test_derived_fov_fills_dark_holes_and_ignores_bright_specks() -> None:
    image, _, fov = _fundus(2)
    image = image.copy()
    image[100:120, 100:120] = 0          # a black blotch inside the disc
    image[2:5, 2:5] = 255                # a bright speck in the surround
    derived = derive_fov(image)
    assert derived[100:120, 100:120].all()
    assert not derived[2:5, 2:5].any()
    assert _iou(derived, fov) > 0.97


def test_derived_fov_of_an_image_without_surround_is_everything() -> None:
    assert derive_fov(np.full((30, 40, 3), 120, np.uint8)).all()


# --- STARE ------------------------------------------------------------------------------------

STARE_IDS = (1, 2, 44)


@pytest.fixture(scope="module")
def stare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("stare") / "STARE"
    (root / "labels-ah").mkdir(parents=True)
    (root / "labels-vk").mkdir()
    truth = {}
    for number in STARE_IDS:
        image, vessels, fov = _fundus(number)
        truth[number] = (image, vessels, fov)
        name = f"im{number:04d}"
        Image.fromarray(image).save(root / f"{name}.ppm")                   # P6
        Image.fromarray(vessels.astype(np.uint8) * 255).save(root / "labels-ah" / f"{name}.ah.ppm")  # P5
        other = np.roll(vessels, 3, axis=1)   # the second observer differs
        Image.fromarray(other.astype(np.uint8) * 255).save(root / "labels-vk" / f"{name}.vk.ppm")
    # As downloaded, the release's files are gzipped: both forms are read.
    gz = root / "im0044.ppm"
    gz.with_suffix(".ppm.gz").write_bytes(gzip.compress(gz.read_bytes()))
    gz.unlink()
    assert (root / "im0001.ppm").read_bytes()[:2] == b"P6"
    assert (root / "labels-ah" / "im0001.ah.ppm").read_bytes()[:2] == b"P5"
    return root, truth


def test_stare_reads_ppm_images_hoover_labels_and_derives_the_fov(stare) -> None:
    root, truth = stare
    samples = read_split("STARE", root, "train")     # no test split configured: all are training
    assert [s.id for s in samples] == list(STARE_IDS)
    assert [s.name for s in samples] == ["im0001.ppm", "im0002.ppm", "im0044.ppm.gz"]
    for sample in samples:
        image, vessels, fov = truth[sample.id]
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.label, vessels)       # labels-ah, not labels-vk
        assert _iou(sample.fov, fov) > 0.97


def test_stare_split_by_test_ids(stare) -> None:
    root, _ = stare
    train, test = read_dataset("STARE", root, test_ids=[44, 2])
    assert [e.id for e in train] == [1] and [e.id for e in test] == [2, 44]
    with pytest.raises(UserError) as info:
        read_dataset("STARE", root, test_ids=[3])
    assert "test_ids lists 3" in str(info.value) and "1, 2, 44" in str(info.value)


def test_stare_image_without_label_is_named(stare, tmp_path: Path) -> None:
    import shutil
    root = Path(shutil.copytree(stare[0], tmp_path / "STARE"))
    (root / "labels-ah" / "im0002.ah.ppm").unlink()
    with pytest.raises(UserError) as info:
        read_dataset("STARE", root)
    assert "im0002.ppm" in str(info.value) and "labels-ah" in str(info.value)
    assert "keep only those 20 (not the whole STARE image set)" in str(info.value)
    for number in range(100, 130):  # the whole image set: the unlabelled ones are listed up to a limit
        shutil.copy(root / "im0001.ppm", root / f"im{number:04d}.ppm")
    with pytest.raises(UserError, match=r"im0002.ppm, im0100.ppm, .*, \.\.\. \(31 in all\)"):
        read_dataset("STARE", root)


def test_stare_images_unpacked_into_their_own_folder_are_read(stare, tmp_path: Path) -> None:
    import shutil
    root = Path(shutil.copytree(stare[0], tmp_path / "STARE"))
    for archive in ("stare-images.tar", "labels-ah.TAR", "all.zip"):  # unpacked beside themselves: not data
        (root / archive).write_bytes(b"")
    assert [s.id for s in read_split("STARE", root, "train")] == list(STARE_IDS)
    (root / "stare-images").mkdir()
    for image in root.glob("im*.ppm*"):
        image.rename(root / "stare-images" / image.name)
    samples = read_split("STARE", root, "train")
    assert [s.id for s in samples] == list(STARE_IDS)
    np.testing.assert_array_equal(samples[0].label, stare[1][1][1])
    (root / "stare-images" / "im0001.txt").write_bytes(b"")
    with pytest.raises(UserError) as info:
        read_split("STARE", root, "train")
    assert "stare-images: im0001.txt" in str(info.value) and "(the labels go in labels-ah/)" in str(info.value)


# --- CHASE_DB1 --------------------------------------------------------------------------------

CHASE_NAMES = ("01L", "01R", "11L", "12R")


@pytest.fixture(scope="module")
def chase(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("chase") / "CHASE"
    root.mkdir()
    truth = {}
    for index, name in enumerate(CHASE_NAMES):
        image, vessels, fov = _fundus(10 + index)
        Image.fromarray(image).save(root / f"Image_{name}.jpg", quality=90)
        Image.fromarray(vessels).save(root / f"Image_{name}_1stHO.png")      # mode '1': 1-bit, 0/1
        Image.fromarray(np.roll(vessels, 2, axis=0)).save(root / f"Image_{name}_2ndHO.png")
        truth[name] = (_rgb(root / f"Image_{name}.jpg"), vessels, fov)
    with Image.open(root / "Image_01L_1stHO.png") as label:
        assert label.mode == "1"
    return root, truth


def test_chase_has_the_conventional_split_and_derived_fov(chase) -> None:
    root, truth = chase
    train, test = read_dataset("CHASE_DB1", root)
    assert [(e.id, e.key) for e in train] == [(1, "01L"), (2, "01R")]
    assert [(e.id, e.key) for e in test] == [(21, "11L"), (24, "12R")]
    assert chase_id(12, "R") == 24
    for entry in train + test:
        sample = entry.load()
        image, vessels, fov = truth[entry.key]
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.label, vessels)     # the first observer
        assert _iou(sample.fov, fov) > 0.97


def test_chase_refuses_test_ids_because_its_split_is_fixed(chase) -> None:
    with pytest.raises(UserError, match="has its own test split"):
        read_dataset("CHASE_DB1", chase[0], test_ids=["01L"])


def test_chase_stray_file_is_named(chase, tmp_path: Path) -> None:
    import shutil
    root = Path(shutil.copytree(chase[0], tmp_path / "CHASE"))
    (root / "Image_01L_3rdHO.png").write_bytes(b"x")
    with pytest.raises(UserError) as info:
        read_dataset("CHASE_DB1", root)
    assert "Image_01L_3rdHO.png" in str(info.value)


# --- HRF --------------------------------------------------------------------------------------

HRF_NAMES = ("01_dr", "01_g", "01_h", "02_dr", "02_g", "02_h")


@pytest.fixture(scope="module")
def hrf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hrf") / "HRF"
    for sub in ("images", "manual1", "mask"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(4)
    for name in HRF_NAMES:
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        # As released: the DR images end in .JPG, the others in .jpg.
        Image.fromarray(image).save(root / "images" / f"{name}.{'JPG' if name.endswith('dr') else 'jpg'}",
                                    format="JPEG")
        label = (rng.random((H, W)) < 0.2).astype(np.uint8) * 255
        Image.fromarray(label).save(root / "manual1" / f"{name}.tif")
        mask = np.zeros((H, W), np.uint8)
        mask[4:-4, 6:-6] = 255
        Image.fromarray(np.stack([mask] * 3, -1)).save(root / "mask" / f"{name}_mask.tif")   # RGB TIFF
    return root


def test_hrf_pairs_mixed_case_images_with_labels_and_rgb_masks(hrf: Path) -> None:
    train, test = read_dataset("HRF", hrf)
    assert test == []
    assert [e.id for e in train] == list(range(1, 7))
    assert [e.key for e in train] == list(HRF_NAMES)
    assert [e.name for e in train][:2] == ["01_dr.JPG", "01_g.jpg"]
    assert hrf_id(15, "h") == 45
    sample = train[3].load()
    assert sample.name == "02_dr.JPG" and sample.image.shape == (H, W, 3)
    with Image.open(hrf / "manual1" / "02_dr.tif") as label:
        np.testing.assert_array_equal(sample.label, np.asarray(label) == 255)
    assert sample.fov.sum() == (H - 8) * (W - 12) and not sample.fov[0].any()


def test_hrf_split_by_names_and_numbers(hrf: Path) -> None:
    train, test = read_dataset("HRF", hrf, test_ids=["01_g", "2dr", 6])
    assert [e.key for e in test] == ["01_g", "02_dr", "02_h"]
    assert len(train) == 3


@pytest.mark.parametrize("dataset", ["HRF", "folders"])
def test_split_by_fraction_is_deterministic_per_seed(dataset: str, hrf: Path, folders: Path) -> None:
    root = hrf if dataset == "HRF" else folders
    first = read_dataset(dataset, root, test_fraction=0.34, seed=3)
    again = read_dataset(dataset, root, test_fraction=0.34, seed=3)
    assert [e.id for e in first[1]] == [e.id for e in again[1]]
    assert len(first[1]) == 2 and len(first[0]) == 4
    others = {tuple(e.id for e in read_dataset(dataset, root, test_fraction=0.34, seed=s)[1]) for s in range(8)}
    assert len(others) > 1   # the seed chooses


def test_split_that_leaves_no_training_image_is_refused(hrf: Path) -> None:
    entries, _ = read_dataset("HRF", hrf)
    with pytest.raises(UserError, match="leave some for training"):
        split_entries(entries, [e.id for e in entries], 0.0, 0)
    # One image: any fraction draws it for testing; the message gives the setting that keeps it for training.
    with pytest.raises(UserError, match=r"all 1 image in the test split.*--set test_fraction=0 makes no test split"):
        split_entries(entries[:1], [], 0.25, 0)


def test_scale_halves_sizes_and_keeps_labels_binary(hrf: Path) -> None:
    full = read_split("HRF", hrf, "train")
    half = read_split("HRF", hrf, "train", scale=0.5)
    for a, b in zip(full, half):
        assert b.image.shape == (H // 2, W // 2, 3) and b.image.dtype == np.uint8
        assert b.label.shape == b.fov.shape == (H // 2, W // 2)
        assert b.label.dtype == b.fov.dtype == bool
        # Nearest neighbour: every label pixel is one of the four it replaces, never a blend.
        blocks = a.label.reshape(H // 2, 2, W // 2, 2)
        assert (b.label <= blocks.any(axis=(1, 3))).all() and (b.label >= blocks.all(axis=(1, 3))).all()
        # Area averaging for the image: close to the mean of each 2x2 block.
        mean = a.image.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))
        assert np.abs(b.image - mean).max() <= 1.0


# --- your own data: images/ + labels/ (+ masks/) ----------------------------------------------

FOLDER_FILES = {   # stem: (image extension, label extension, label scale)
    "case2": (".png", ".png", 255), "case10": (".jpg", ".gif", 1), "case1": (".tif", ".bmp", 255),
    "scan_a": (".ppm", ".tif", 1), "scan_b": (".bmp", ".png", 1), "scan_c": (".gif", ".ppm", 255),
}


def _write_folders(root: Path, masks: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    labels = {}
    for sub in ("images", "labels") + (("masks",) if masks else ()):
        (root / sub).mkdir(parents=True)
    for stem, (image_ext, label_ext, top) in FOLDER_FILES.items():
        gray = image_ext == ".gif"
        image = rng.integers(0, 256, (H, W) if gray else (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}",
                                    **({"quality": 95} if image_ext == ".jpg" else {}))
        label = rng.random((H, W)) < 0.3
        Image.fromarray(label.astype(np.uint8) * top).save(root / "labels" / f"{stem}{label_ext}")
        labels[stem] = label
        if masks:
            Image.fromarray(np.full((H, W), 255, np.uint8)).save(root / "masks" / f"{stem}.png")
    return labels


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folders") / "mine"
    _write_folders(root)
    return root


def test_folders_pair_by_stem_across_extensions(folders: Path) -> None:
    samples = read_split("folders", folders, "train")
    # Natural name order (case2 before case10); ids are positions because not every name is a number.
    assert [s.key for s in samples] == ["case1", "case2", "case10", "scan_a", "scan_b", "scan_c"]
    assert [s.id for s in samples] == [1, 2, 3, 4, 5, 6]
    expected = _write_folders(folders.parent / "again")
    for sample in samples:
        np.testing.assert_array_equal(sample.label, expected[sample.key])   # 0/1 and 0/255 alike
        assert sample.fov.all()                                             # no masks/: whole image
        assert sample.image.shape[:2] == (H, W)
    assert read_split("folders", folders, "test") == []
    train, test = read_dataset("folders", folders, test_ids=["case10", "CASE2.png", 5])
    assert [e.key for e in test] == ["case2", "case10", "scan_b"] and len(train) == 3


def test_folders_leave_archives_alone_but_name_other_files(folders: Path, tmp_path: Path) -> None:
    import shutil
    root = Path(shutil.copytree(folders, tmp_path / "mine"))
    (root / "images" / "images.zip").write_bytes(b"PK")
    assert len(read_split("folders", root, "train")) == 6
    (root / "images" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"unexpected files in .*images: notes.txt\.") as info:
        read_split("folders", root, "train")
    assert "convert" not in str(info.value)
    # An image format that is not read is named as such, with the fix.
    (root / "images" / "notes.txt").unlink()
    (root / "images" / "case3.webp").write_bytes(b"RIFF")
    with pytest.raises(UserError, match=r"case3.webp\..*\.webp images are not read: convert them to PNG"):
        read_split("folders", root, "train")
    # dataset_dir given as the images/ folder itself: the message names the folder meant.
    with pytest.raises(UserError, match=rf"images/images not found\. dataset_dir names the dataset's own folder, "
                                        rf"here probably {re.escape(str(root))}\."):
        read_split("folders", root / "images", "train")


def test_folders_with_masks_but_no_labels_say_what_masks_are_for(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    _write_folders(root)
    (root / "labels").rename(root / "masks")  # the Kaggle layout: the structures to segment in masks/
    with pytest.raises(UserError, match=r"labels not found, but .*masks is there\. Labels go in labels/; masks/ is "
                                        r"for optional field-of-view masks"):
        read_dataset("folders", root)


def test_folders_refuse_images_in_subfolders_which_would_be_left_out(tmp_path: Path) -> None:
    root = tmp_path / "nested"
    _write_folders(root)
    (root / "images" / "extra" / "more").mkdir(parents=True)
    for name in ("case11.png", "more/case12.png"):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "images" / "extra" / name)
    (root / "images" / "notes").mkdir()  # a subfolder without images is no loss
    (root / "images" / "notes" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"images has images in subfolders, which are not read: extra/ \(2 images\)"):
        read_dataset("folders", root)
    for path in (root / "images" / "extra").rglob("*.png"):
        path.rename(root / "images" / path.name)
    for stem in ("case11", "case12"):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "labels" / f"{stem}.png")
    assert len(read_dataset("folders", root)[0]) == len(FOLDER_FILES) + 2


def test_folders_by_name_in_test_ids_and_numeric_names_as_ids(tmp_path: Path) -> None:
    root = tmp_path / "numbers"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for number in (3, 12, 7):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "images" / f"{number}.png")
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "labels" / f"{number}.tif")
    train, test = read_dataset("folders", root, test_ids=[12])
    assert [e.id for e in train] == [3, 7] and [e.id for e in test] == [12]


def test_folders_test_folder_is_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _write_folders(root, masks=True)
    (root / "test" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "test" / "images" / "new.jpg")
    train, test = read_dataset("folders", root, test_fraction=0.5)   # ignored: the split is fixed
    assert len(train) == 6 and [(e.id, e.key) for e in test] == [(7, "new")]
    (sample,) = [e.load() for e in test]
    assert sample.label is None and sample.fov.all()
    with pytest.raises(UserError, match="has its own test split"):
        read_dataset("folders", root, test_ids=[1])


def test_folders_unpaired_files_are_named(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _write_folders(root)
    (root / "labels" / "case2.png").rename(root / "labels" / "case_2.png")
    with pytest.raises(UserError) as info:
        read_dataset("folders", root)
    message = str(info.value)
    assert "no label for image(s) case2.png" in message and "case_2.png have no image" in message


def test_folders_two_files_with_one_stem_are_named(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _write_folders(root)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "images" / "case1.png")
    with pytest.raises(UserError) as info:
        read_dataset("folders", root)
    assert "case1.png and case1.tif" in str(info.value)


def test_folders_label_with_other_values_lists_them(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _write_folders(root)
    label = np.zeros((H, W), np.uint8)
    label[:, 10:] = 1
    label[:, 20:] = 2
    Image.fromarray(label).save(root / "labels" / "scan_b.png")
    with pytest.raises(UserError) as info:
        read_split("folders", root, "train")
    assert "scan_b.png" in str(info.value) and "0, 1, 2" in str(info.value)


def test_folders_stray_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _write_folders(root)
    (root / "images" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="notes.txt"):
        read_dataset("folders", root)


# --- configuration and prepare ------------------------------------------------------------------

def test_id_lists_accept_numbers_and_names() -> None:
    config = load_config(REPO / "configuration.txt", ["test_ids=01L, 05_dr,3", "holdout_ids=7", "resize=0.5"])
    assert config["data paths"]["test_ids"] == ["01L", "05_dr", 3]
    assert config["data paths"]["holdout_ids"] == [7]
    assert config["data paths"]["resize"] == 0.5
    assert load_config(REPO / "configuration.txt", ["test_ids=case03.png"])["data paths"]["test_ids"] == ["case03.png"]
    with pytest.raises(UserError, match="test_ids = 'left'"):   # a name needs a number: a typo is caught
        load_config(REPO / "configuration.txt", ["test_ids=left"])


def test_prepare_folders_dataset_with_fraction_split_and_half_scale(folders: Path, tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    import prepare_datasets

    prepared = tmp_path / "prepared"
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"),
        "--set", "dataset=folders", "--set", f"dataset_dir={folders}", "--set", f"prepared_dir={prepared}",
        "--set", "holdout_ids=9", "--set", "test_fraction=0.34", "--set", "resize=0.5",
        "--set", "N_subimgs=40", "--set", "patch_size=16", "--set", "channels=3", "--set", "clahe=false",
    ])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        prepare_datasets.main()
    assert "holdout_ids lists 9" in str(info.value) and "4 (scan_a)" in str(info.value)
    argv = [a if a != "holdout_ids=9" else "holdout_ids=4" for a in sys.argv]
    monkeypatch.setattr(sys, "argv", argv)
    assert prepare_datasets.main() == 0
    out = capsys.readouterr().out
    assert "Test split (2 images)" in out
    assert "Held out of training (1 image): ids 4 (scan_a)" in out
    expected_test = [e.id for e in read_dataset("folders", folders, test_fraction=0.34, seed=42)[1]]
    with h5py.File(prepared / "dataset.h5", "r") as h5:
        assert sorted(h5["test/ids"][()].tolist()) == sorted(expected_test)
        assert h5["val/ids"][()].tolist() == [4]
        assert len(h5["train/ids"]) == 3
        for split in ("train", "val", "test"):
            for key in h5[split]["images"]:
                assert h5[split]["images"][key].shape == (H // 2, W // 2, 3)
                assert set(np.unique(h5[split]["labels"][key][()]).tolist()) <= {0, 1}
        assert set(np.unique(h5["patches/labels"][()]).tolist()) == {0, 1}
        assert h5["patches/images"].shape == (40, 16, 16, 3)
        trained_on = [name.decode() for name in h5["train/names"][()]]
    assert [p.name for p in prepared.iterdir()] == ["dataset.h5"]   # scratch files leave nothing
    # scan_c.gif, gray among colour images, is a training image here: with channels = 3 that is said.
    assert "scan_c.gif" in trained_on and "note: 1 training image of 3 is gray (scan_c.gif) among colour ones" in out


def test_prepare_chase_keeps_its_split_holds_out_by_name_and_saves_derived_fovs(chase, tmp_path: Path,
                                                                               monkeypatch, capsys) -> None:
    import prepare_datasets

    prepared = tmp_path / "prepared"
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"),
        "--set", "dataset=CHASE_DB1", "--set", f"dataset_dir={chase[0]}", "--set", f"prepared_dir={prepared}",
        "--set", "holdout_ids=1r", "--set", "N_subimgs=20", "--set", "patch_size=16", "--set", "clahe=false",
    ])
    assert prepare_datasets.main() == 0
    capsys.readouterr()
    with h5py.File(prepared / "dataset.h5", "r") as h5:
        assert h5["train/ids"][()].tolist() == [1] and h5["val/ids"][()].tolist() == [2]
        assert h5["test/ids"][()].tolist() == [21, 24]
        stored = h5["test/fovs/00001"][()]
    with Image.open(prepared / "fov" / "Image_12R_fov.png") as saved:
        np.testing.assert_array_equal(np.asarray(saved) == 255, stored == 1)
    assert sorted(p.name for p in (prepared / "fov").iterdir()) == [
        f"Image_{name}_fov.png" for name in CHASE_NAMES]


def test_prepare_refuses_an_image_smaller_than_the_patch_at_the_first_one(folders: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    import prepare_datasets

    read = []
    load_checked = prepare_datasets.load_checked
    monkeypatch.setattr(prepare_datasets, "load_checked", lambda *args: read.append(args) or load_checked(*args))
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"),
        "--set", "dataset=folders", "--set", f"dataset_dir={folders}", "--set", f"prepared_dir={tmp_path / 'p'}",
        "--set", "holdout_ids=", "--set", "resize=0.5", "--set", f"patch_size={max(H, W) // 2 + 16}",
    ])
    with pytest.raises(UserError, match=r"smaller than the .* patch\. Lower \[data attributes\] patch_size, or "
                                        r"shrink the images less \(\[data paths\] resize\)"):
        prepare_datasets.main()
    assert len(read) == 1  # refused at the first image read, not after reading them all


def test_prepare_equalizes_images_of_every_size_over_the_tile_of_the_training_images(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    import json

    import prepare_datasets
    from lib.preprocessing import preprocess

    root = tmp_path / "sizes"
    rng = np.random.default_rng(4)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for index, (height, width) in enumerate([(48, 64), (96, 128), (48, 64)]):
        Image.fromarray(rng.integers(60, 200, (height, width), dtype=np.uint8)).save(root / "images" / f"s{index}.png")
        label = (rng.random((height, width)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(label).save(root / "labels" / f"s{index}.png")
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"),
        "--set", "dataset=folders", "--set", f"dataset_dir={root}", "--set", f"prepared_dir={tmp_path / 'p'}",
        "--set", "holdout_ids=", "--set", "test_fraction=0", "--set", "N_subimgs=20", "--set", "patch_size=16",
        "--set", "clahe=true", "--set", "standardize=false", "--set", "gamma=1.0",
    ])
    assert prepare_datasets.main() == 0
    with h5py.File(tmp_path / "p" / "dataset.h5", "r") as h5:
        settings = json.loads(h5.attrs["preprocessing"])
        names = list(h5["train/names"].asstr()[()])
        stored = h5["train/images"][f"{names.index('s1.png'):05d}"][()]
    assert settings["clahe_tile"] == [6, 8]  # the median training image, 48x64, over 8
    image = np.asarray(Image.open(root / "images" / "s1.png"))
    fov = np.ones(image.shape, bool)
    np.testing.assert_allclose(stored, preprocess(image, fov, settings, None), atol=1e-6)
    per_image = {key: value for key, value in settings.items() if key != "clahe_tile"}  # 1/8 of 96x128
    assert np.abs(stored - preprocess(image, fov, per_image, None)).mean() > 0.01


def test_prepare_notes_far_more_patches_than_a_few_small_images_need(tmp_path: Path, monkeypatch, capsys) -> None:
    import prepare_datasets

    root = tmp_path / "few"
    rng = np.random.default_rng(5)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / "images" / f"c{index}.png")
        label = (rng.random((24, 24)) < 0.3).astype(np.uint8) * 255
        Image.fromarray(label).save(root / "labels" / f"c{index}.png")
    base = ["prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"), "--set", "dataset=folders",
            "--set", f"dataset_dir={root}", "--set", "holdout_ids=", "--set", "test_fraction=0",
            "--set", "patch_size=16", "--set", "clahe=false"]
    for n, noted in ((200, False), (7000, True)):  # 3 x 576 pixels: 200 patches cover each 30 times, 7000 1,037
        monkeypatch.setattr(sys, "argv", [*base, "--set", f"prepared_dir={tmp_path / str(n)}", "--set",
                                          f"N_subimgs={n}"])
        assert prepare_datasets.main() == 0
        out = capsys.readouterr().out
        # configuration_sample.txt has steps_per_epoch = 0 (one pass an epoch): the note keeps the epoch's length.
        assert ("cover each training pixel about 1,037 times" in out
                and "--set N_subimgs=700 --set steps_per_epoch=207 (100 times" in out) == noted, out


def test_prepare_names_images_turned_by_a_tag_their_labels_cannot_confirm(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import prepare_datasets

    root = tmp_path / "photos"
    rng = np.random.default_rng(6)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for name, (height, width), tag in (("square", (32, 32), 6), ("wide", (32, 48), 6), ("plain", (32, 32), 1),
                                       ("upside", (32, 48), 3)):
        photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        exif = photo.getexif()
        exif[0x0112] = tag
        photo.save(root / "images" / f"{name}.jpg", exif=exif, quality=95)
        shown = (width, height) if tag == 6 else (height, width)  # drawn on the view a viewer shows
        label = (rng.random(shown) < 0.3).astype(np.uint8) * 255
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"), "--set", "dataset=folders",
        "--set", f"dataset_dir={root}", "--set", f"prepared_dir={tmp_path / 'p'}", "--set", "holdout_ids=",
        "--set", "test_fraction=0", "--set", "N_subimgs=20", "--set", "patch_size=16", "--set", "clahe=false"])
    assert prepare_datasets.main() == 0
    out = capsys.readouterr().out
    # The wide photo's label fits only its turned view; the plain one has no tag.
    assert "note: 2 images (square.jpg, upside.jpg) with an orientation tag that turns or mirrors them" in out

"""Multi-class segmentation (CamVid layout): readers, palettes, class weights, prepare -> train -> predict."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_script, set_args, tiny_settings
from lib.config import SCHEMA, format_config, load_config
from lib.errors import UserError
from lib.readers import CAMVID_CLASSES, ClassSpec, LabelError, fixed_validation, read_dataset, to_classes
from lib.storage import class_statistics

CAMVID = REPO / "configuration_camvid.txt"
VOID = 11
WIDTH, HEIGHT = 64, 48


def camvid_spec(palette: bool = False) -> ClassSpec:
    """The CamVid label set as configuration_camvid.txt declares it (with or without its palette)."""
    spec = ClassSpec.from_config(load_config(CAMVID))
    return spec if palette else ClassSpec(spec.n_classes, spec.names, spec.ignore_index)


def scene(rng: np.random.Generator) -> np.ndarray:
    """A road-scene-like class map: sky over buildings over road, a few objects, a void border."""
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)                       # Sky
    horizon = int(rng.integers(HEIGHT // 3, HEIGHT // 2))
    labels[horizon - int(rng.integers(6, 12)):, :] = 1                  # Building
    labels[horizon:, :] = 3                                             # Road
    for cls in rng.choice([2, 5, 8, 9], size=3, replace=False):       # Pole, Tree, Car, Pedestrian
        top, left = int(rng.integers(horizon - 8, HEIGHT - 8)), int(rng.integers(0, WIDTH - 12))
        labels[top: top + int(rng.integers(5, 9)), left: left + int(rng.integers(6, 12))] = cls
    labels[-2:, :] = VOID
    return labels


def photo(labels: np.ndarray, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour tells its class (plus noise), so a tiny network can learn it."""
    colours = np.vstack([palette[:VOID], [[0, 0, 0]]]).astype(float)
    image = colours[np.minimum(labels, VOID)] + rng.normal(0, 12, labels.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_camvid(root: Path, n_train: int = 6, n_val: int = 3, colour_labels: bool = False,
                 seed: int = 0) -> Path:
    """CamVid as distributed with SegNet: train/ + trainannot/, val/ + valannot/ (uint8 indices or colours)."""
    rng = np.random.default_rng(seed)
    palette = camvid_spec(palette=True).display_palette()  # the configured colours, void (0 0 0) last
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for index in range(count):
            labels = scene(rng)
            name = f"0001TP_{split}{index:03d}.png"
            Image.fromarray(photo(labels, palette, rng)).save(root / split / name)
            annotation = palette[np.minimum(labels, VOID)] if colour_labels else labels
            Image.fromarray(annotation).save(root / f"{split}annot" / name)
    return root


def tiny(tmp: Path, data: Path, extra: list[str] | None = None) -> list[str]:
    """The CamVid profile shrunk to seconds: full size, small patches, a small U-Net, two short epochs."""
    pairs = ["resize=1", "patch_size=32", "N_subimgs=480", "depth=2", "base_filters=8", "N_epochs=2",
             "steps_per_epoch=12", "training_settings.batch_size=8", "testing_settings.batch_size=4", "window=64",
             "stride=48", "validate_every=1", "learning_rate=0.01", "max_train_minutes=0", "validation_fraction=0.1",
             f"dataset_dir={data}", f"prepared_dir={tmp / 'prepared'}", f"runs_dir={tmp / 'runs'}", "name=mc"]
    return ["--config", str(CAMVID), *set_args(pairs + (extra or []))]


# --- configuration --------------------------------------------------------------------------

def test_camvid_profile_has_every_key_with_its_comment_and_the_camvid_classes() -> None:
    lines = CAMVID.read_text(encoding="utf-8").splitlines()
    section, found = None, set()
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key = line.split("=", 1)[0].strip()
            assert lines[i - 1] == f"# {SCHEMA[section][key][1]}", key
            found.add((section, key))
    assert found == {(s, k) for s, keys in SCHEMA.items() for k in keys}
    config = load_config(CAMVID)
    assert config["model"]["n_classes"] == 11 and config["data attributes"]["ignore_index"] == VOID
    assert tuple(config["data attributes"]["class_names"]) == CAMVID_CLASSES
    assert len(config["data attributes"]["palette"]) == 12 and config["data attributes"]["palette"][-1] == (0, 0, 0)


def test_palette_round_trips_and_bad_class_settings_are_user_errors(tmp_path: Path) -> None:
    config = load_config(CAMVID)
    (tmp_path / "again.txt").write_text(format_config(config))
    assert load_config(tmp_path / "again.txt") == config
    with pytest.raises(UserError, match="palette has 3 colours"):
        load_config(CAMVID, ["palette=0 0 0, 1 1 1, 2 2 2"])
    with pytest.raises(UserError, match="not an 'R G B' triple"):
        load_config(CAMVID, ["palette=0 0"])
    with pytest.raises(UserError, match="class_names lists 2 names"):
        load_config(CAMVID, ["class_names=a,b"])
    with pytest.raises(UserError, match="ignore_index = 3 is a class"):
        load_config(CAMVID, ["ignore_index=3"])
    with pytest.raises(UserError, match="loss = bce_dice is for one class"):
        load_config(CAMVID, ["loss=bce_dice"])
    with pytest.raises(UserError, match="cce_dice is for several classes"):
        load_config(REPO / "configuration.txt", ["loss=cce_dice"])


# --- readers --------------------------------------------------------------------------------

def test_camvid_reader_gives_train_val_and_uint8_class_maps(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "CamVid", n_train=3, n_val=2)
    spec = camvid_spec()
    train, test = read_dataset("CamVid", root, classes=spec)
    val = fixed_validation("CamVid", root, spec)
    assert [e.id for e in train] == [1, 2, 3] and [e.id for e in val] == [4, 5] and test == []
    sample = train[0].load()
    expected = np.asarray(Image.open(root / "trainannot" / train[0].name))
    assert sample.label.dtype == np.uint8 and sample.image.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(sample.label, expected)
    assert VOID in sample.label and sample.fov.all()
    with pytest.raises(UserError, match="multi-class dataset"):
        read_dataset("CamVid", root)
    (root / "valannot" / val[0].name).unlink()
    with pytest.raises(UserError, match=f"no annotation for image.*{val[0].name}"):
        fixed_validation("CamVid", root, spec)


def test_colour_labels_are_mapped_to_classes_with_the_palette(tmp_path: Path) -> None:
    indexed = write_camvid(tmp_path / "indexed", n_train=2, n_val=1, seed=5)
    coloured = write_camvid(tmp_path / "coloured", n_train=2, n_val=1, seed=5, colour_labels=True)
    assert np.asarray(Image.open(next((coloured / "trainannot").iterdir()))).ndim == 3
    for a, b in zip(read_dataset("CamVid", indexed, classes=camvid_spec())[0],
                    read_dataset("CamVid", coloured, classes=camvid_spec(palette=True))[0]):
        np.testing.assert_array_equal(a.load().label, b.load().label)   # void colour (0 0 0) -> 11
    with pytest.raises(UserError, match=r"the label is a colour image \(colours \(\d+ \d+ \d+\), .*\) but "
                                        r"\[data attributes\] palette is empty"):
        read_dataset("CamVid", coloured, classes=camvid_spec())[0][0].load()


def test_unknown_colour_is_an_error_listing_the_colours_and_files(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "CamVid", n_train=3, n_val=1, colour_labels=True)
    names = sorted(p.name for p in (root / "trainannot").iterdir())
    for name, colour in ((names[0], (1, 2, 3)), (names[2], (250, 0, 7))):
        image = np.asarray(Image.open(root / "trainannot" / name)).copy()
        image[5, 5:8] = colour
        Image.fromarray(image).save(root / "trainannot" / name)
    with pytest.raises(LabelError, match=r"\(1 2 3\)"):
        to_classes(np.asarray(Image.open(root / "trainannot" / names[0])), names[0], camvid_spec(palette=True))
    result = run_script("prepare_datasets.py", "--config", str(CAMVID), *set_args(
        [f"dataset_dir={root}", f"prepared_dir={tmp_path / 'prepared'}", "patch_size=16", "depth=2"]), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "2 training label or mask file(s) cannot be used" in result.stderr
    assert names[0] in result.stderr and "(1 2 3)" in result.stderr
    assert names[2] in result.stderr and "(250 0 7)" in result.stderr and names[1] not in result.stderr
    assert not (tmp_path / "prepared" / "dataset.h5").exists()


def test_label_values_outside_the_classes_are_an_error_listing_them(tmp_path: Path) -> None:
    spec = camvid_spec()
    labels = np.array([[0, 10, 11], [12, 200, 12]], np.uint8)
    with pytest.raises(LabelError) as info:
        to_classes(labels, "bad.png", spec)
    assert "bad.png" in str(info.value) and "values 12, 200" in str(info.value)
    assert "ignore index 11" in str(info.value)
    np.testing.assert_array_equal(to_classes(labels[:1], "ok.png", spec), labels[:1])
    root = write_camvid(tmp_path / "CamVid", n_train=2, n_val=2)
    name = sorted((root / "valannot").iterdir())[1]
    Image.fromarray(np.full((HEIGHT, WIDTH), 13, np.uint8)).save(name)
    result = run_script("prepare_datasets.py", "--config", str(CAMVID), *set_args(
        [f"dataset_dir={root}", f"prepared_dir={tmp_path / 'prepared'}", "patch_size=16", "depth=2"]), check=False)
    assert result.returncode == 2 and "1 val label or mask file(s)" in result.stderr
    assert f"{name}: the label has values 13" in result.stderr


# --- class weights and the prepared file ----------------------------------------------------

def test_median_frequency_weights_on_a_hand_checked_example() -> None:
    # Image A: classes 0, 0, 1 and one void pixel; image B: 1, 1, 2, 2 (class 3 never appears).
    a = np.array([[0, 0], [1, 11]], np.uint8)
    b = np.array([[1, 1], [2, 2]], np.uint8)
    stats = class_statistics([a, b], n_classes=4, ignore_index=11)
    assert stats["pixel_counts"] == [2, 3, 2, 0]
    # freq(c) = pixels of c / valid pixels of the images holding c: 2/3, 3/(3+4), 2/4; median 1/2.
    np.testing.assert_allclose(stats["frequencies"], [2 / 3, 3 / 7, 1 / 2, 0.0])
    np.testing.assert_allclose(stats["median_frequency_weights"], [0.75, 7 / 6, 1.0, 1.0])
    # Pixels outside the FOV count nowhere.
    fov = np.array([[True, True], [False, True]])
    assert class_statistics([a], 4, 11, [fov])["pixel_counts"] == [2, 0, 0, 0]


def test_prepare_writes_uint8_class_labels_the_val_split_and_class_weights(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "CamVid", n_train=4, n_val=2)
    for path in (root / "trainannot").iterdir():  # no Bicyclist in the training labels
        label = np.asarray(Image.open(path)).copy()
        label[label == 10] = 3
        Image.fromarray(label).save(path)
    result = run_script("prepare_datasets.py", *tiny(tmp_path, root))
    assert "median-frequency weight" in result.stdout and "Bicyclist" in result.stdout
    warning = next(line for line in result.stdout.splitlines() if "warning: no training pixel is of class" in line)
    assert "Bicyclist" in warning and "the model cannot learn" in warning and "Check [model] n_classes" in warning
    with h5py.File(tmp_path / "prepared" / "dataset.h5", "r") as h5:
        assert h5["patches/labels"].dtype == np.uint8
        assert set(np.unique(h5["patches/labels"][()])) <= set(range(11)) | {VOID}
        assert len(h5["train/names"]) == 4 and len(h5["val/names"]) == 2 and len(h5["test/names"]) == 0
        stored = [h5["train/labels"][k][()] for k in sorted(h5["train/labels"])]
        assert all(s.dtype == np.uint8 for s in stored)
        classes = json.loads(h5.attrs["classes"])
    truth = [np.asarray(Image.open(p)) for p in sorted((root / "trainannot").iterdir())]
    for got, want in zip(stored, truth):
        np.testing.assert_array_equal(got, want)
    assert classes["n_classes"] == 11 and classes["ignore_index"] == VOID
    assert classes["class_names"] == list(CAMVID_CLASSES)
    # Independent computation of median-frequency balancing over the training labels.
    valid = [t[t != VOID] for t in truth]
    counts = np.array([sum(int((v == c).sum()) for v in valid) for c in range(11)])
    totals = np.array([sum(v.size for v in valid if (v == c).any()) for c in range(11)])
    present = totals > 0
    freq = counts[present] / totals[present]
    assert classes["pixel_counts"] == counts.tolist()
    assert sorted(warning.split("of class ")[1].split(":")[0].split(", ")) == sorted(
        name for name, count in zip(CAMVID_CLASSES, counts) if count == 0)  # exactly the absent classes
    np.testing.assert_allclose(np.array(classes["median_frequency_weights"])[present], np.median(freq) / freq)


def test_foreground_fraction_centres_rare_classes_as_often_as_common_ones(tmp_path: Path) -> None:
    root = write_camvid(tmp_path / "CamVid", n_train=4, n_val=1)

    def centre_classes(extra: list[str]) -> np.ndarray:
        run_script("prepare_datasets.py", *tiny(tmp_path, root, extra), "--overwrite")
        with h5py.File(tmp_path / "prepared" / "dataset.h5", "r") as h5:
            half = h5["patches/labels"].shape[1] // 2
            return h5["patches/labels"][:, half, half, 0]

    plain = centre_classes([])
    focused = centre_classes(["foreground_fraction=0.9"])
    objects = [2, 5, 8, 9]  # Pole, Tree, Car, Pedestrian: small boxes in every scene
    assert np.isin(focused, objects).mean() > 2 * np.isin(plain, objects).mean() + 0.05
    assert np.mean(focused == 3) < np.mean(plain == 3)  # the road, the largest class, loses its lead


# --- training pieces -------------------------------------------------------------------------

def test_pixel_accuracy_metric_and_cce_dice_loss_leave_void_out() -> None:
    from lib.losses import loss_and_metrics
    probs = np.full((1, 2, 2, 3), 0.1, "float32")
    probs[..., 0] = 0.8                                       # predicts class 0 everywhere
    labels = np.array([[[0], [0]], [[2], [11]]], "float32")[None]
    loss, (accuracy,) = loss_and_metrics("cce", 3, ignore_index=11)
    assert float(accuracy(labels, probs)) == pytest.approx(2 / 3)      # the void pixel does not count
    assert float(loss(labels, probs)) == pytest.approx(-(2 * np.log(0.8) + np.log(0.1)) / 3, rel=1e-5)
    weighted, _ = loss_and_metrics("cce", 3, ignore_index=11, class_weights=[1.0, 1.0, 4.0])
    assert float(weighted(labels, probs)) == pytest.approx(-(2 * np.log(0.8) + 4 * np.log(0.1)) / 6, rel=1e-5)
    with_dice, _ = loss_and_metrics("cce_dice", 3, ignore_index=11)
    assert float(with_dice(labels, probs)) > float(loss(labels, probs))


# --- end to end ------------------------------------------------------------------------------

def test_prepare_train_predict_writes_colour_maps_legend_confusion_matrix_and_metrics(tmp_path: Path,
                                                                                     small_drive: Path) -> None:
    root = write_camvid(tmp_path / "CamVid", n_train=6, n_val=2)
    args = tiny(tmp_path, root)
    run_script("prepare_datasets.py", *args)
    train = run_script("train.py", *args)
    assert "monitoring holdout_mean_iou" in train.stdout
    run = tmp_path / "runs" / "mc"
    log = list(csv.DictReader(open(run / "log.csv")))
    assert len(log) == 2 and {"holdout_mean_iou", "pixel_accuracy"} <= set(log[0])
    assert 0.0 <= float(log[-1]["holdout_mean_iou"]) <= 1.0
    info = json.loads((run / "model_info.json").read_text())
    assert info["monitor"] == "holdout_mean_iou" and "label_offset" not in info  # class maps are not moved

    result = run_script("predict.py", *args, "--split", "val")
    out = run / "predictions" / "val"
    for path in sorted((root / "val").iterdir()):
        stem = path.stem
        classes = np.asarray(Image.open(out / f"{stem}_classes.png"))
        assert classes.shape == (HEIGHT, WIDTH) and classes.max() < 11
        colour = np.asarray(Image.open(out / f"{stem}_color.png"))
        assert colour.shape == (HEIGHT, WIDTH, 3)
        compare = np.asarray(Image.open(out / f"{stem}_compare.png"))
        assert compare.shape[:2] == (HEIGHT, 3 * WIDTH + 2 * 4)        # image | ground truth | prediction
    for name in ("legend.png", "confusion_matrix.png", "per_image.csv", "summary.txt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert "threshold" not in metrics["settings"]  # class maps take the argmax
    pooled = metrics["pooled"]
    assert set(pooled["per_class"]) == set(CAMVID_CLASSES) and pooled["ignore_index"] == VOID
    assert 0.0 <= pooled["mean_iou"] <= 1.0 and 0.0 <= pooled["pixel_accuracy"] <= 1.0
    assert pooled["n_pixels"] == 2 * HEIGHT * WIDTH - 2 * 2 * WIDTH    # the void rows are left out
    assert np.array(pooled["confusion_matrix"]).shape == (11, 11)
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 and all(0.0 <= float(r["mean_iou"]) <= 1.0 for r in rows)
    assert "mean IoU" in result.stdout and "per-class IoU: Sky" in result.stdout
    # A label offset given for class maps is not applied, and predict.py says so.
    assert metrics["settings"]["label_offset"] == [0.0, 0.0]
    moved = run_script("predict.py", *args, "--split", "val", "--set", "label_offset=0.5,0", "--output",
                       str(tmp_path / "moved"))
    assert "moves binary probability maps only" in moved.stdout
    stem = sorted((root / "val").iterdir())[0].stem
    assert np.array_equal(np.asarray(Image.open(tmp_path / "moved" / f"{stem}_classes.png")),
                          np.asarray(Image.open(out / f"{stem}_classes.png")))

    # A binary dataset's labels mean something else: refused before any image is segmented.
    binary = tiny_settings(tmp_path / "drive", small_drive)
    run_script("prepare_datasets.py", *binary)
    refused = run_script("predict.py", *args, "--data", str(tmp_path / "drive" / "prepared"), check=False)
    assert refused.returncode == 2 and "is a binary dataset, but the model of" in refused.stderr
    assert not (run / "predictions" / "DRIVE_prepared_test").exists()

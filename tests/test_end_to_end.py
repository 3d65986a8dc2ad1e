"""prepare -> train -> predict through the real command lines, on generated DRIVE-format files."""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_script, script_env, tiny_settings


def best_intensity_dice(h5_path: Path) -> float:
    """Dice of the best global threshold on the preprocessed holdout pixels (vessels are dark)."""
    with h5py.File(h5_path, "r") as h5:
        group = h5["val"]
        values = np.concatenate([group["images"][k][()][..., 0][group["fovs"][k][()] > 0] for k in group["images"]])
        labels = np.concatenate([group["labels"][k][()][group["fovs"][k][()] > 0] > 0 for k in group["labels"]])
    best = 0.0
    for t in np.quantile(values, np.linspace(0.01, 0.5, 50)):
        predicted = values <= t
        dice = 2 * np.sum(predicted & labels) / (predicted.sum() + labels.sum())
        best = max(best, dice)
    return float(best)


def test_prepare_writes_complete_hdf5_and_summary(trained):
    tmp, _, prepare, _ = trained
    path = tmp / "prepared" / "dataset.h5"
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"]
        assert h5["patches/images"].shape == (2400, 32, 32, 1)
        assert h5["patches/images"].chunks[0] <= 64  # streamable by batch
        assert list(h5["val"]["ids"][()]) == [27, 28]
        assert len(h5["train"]["names"]) == 6 and len(h5["test"]["names"]) == 2
        stats = json.loads(h5.attrs["statistics"])
        assert stats["std"][0] > 0
    assert "foreground fraction" in prepare.stdout


@pytest.mark.parametrize("in_dataset_folder", [False, True], ids=["own_folder", "the_dataset_folder"])
def test_prepare_reruns_only_when_asked_and_names_what_changed(tmp_path, small_drive, in_dataset_folder):
    drive = tmp_path / "DRIVE"
    shutil.copytree(small_drive, drive)
    # dataset.h5 may be written among the source files: they must still be watched.
    args = tiny_settings(tmp_path, drive, extra=["N_subimgs=200"] + [f"prepared_dir={drive}"] * in_dataset_folder)
    run_script("prepare_datasets.py", *args)
    assert "nothing to do" in run_script("prepare_datasets.py", *args).stdout
    # The same folder spelled with a trailing slash is the same setting.
    assert "nothing to do" in run_script("prepare_datasets.py", *args, "--set", f"dataset_dir={drive}/").stdout
    other = run_script("prepare_datasets.py", *args, "--set", "seed=7", "--set", "clahe_clip=0.02", check=False)
    assert other.returncode == 2
    assert "preprocessing.clahe_clip = 0.01 (now 0.02), experiment.seed = 42 (now 7)" in other.stderr
    # An edited label makes the file stale too, and the message names the file.
    label = drive / "training" / "1st_manual" / "22_manual1.gif"
    with Image.open(label) as image:
        edited = np.array(image)
    edited[:4] = 255 - edited[:4]
    Image.fromarray(edited).save(label)
    changed = run_script("prepare_datasets.py", *args, check=False)
    assert changed.returncode == 2 and "training/1st_manual/22_manual1.gif (changed)" in changed.stderr
    run_script("prepare_datasets.py", *args, "--overwrite")
    assert "nothing to do" in run_script("prepare_datasets.py", *args).stdout
    # Files only touched (copied or checked out again: new times, same bytes) leave it up to date.
    for path in drive.rglob("*"):
        if path.is_file() and path.suffix != ".h5":
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert "nothing to do" in run_script("prepare_datasets.py", *args).stdout


def test_a_second_prepare_of_one_file_is_refused_and_a_killed_ones_leftover_removed(tmp_path, small_drive):
    args = tiny_settings(tmp_path, small_drive, extra=["N_subimgs=200"])
    lock = tmp_path / "prepared" / ".dataset.h5.lock"
    hold = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from lib.locks import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}, ''):\n print('held', flush=True); time.sleep(120)")
    with subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout.readline().strip() == "held"  # as a prepare_datasets.py at work holds it
        busy = run_script("prepare_datasets.py", *args, check=False)
        assert busy.returncode == 2 and f"another prepare_datasets.py (process {other.pid} on " in busy.stderr
        assert not (tmp_path / "prepared" / "dataset.h5").exists()
        other.send_signal(signal.SIGKILL)  # killed, it holds the lock no more
        other.wait()
    leftover = tmp_path / "prepared" / ".dataset.k2j4h6g8.tmp.h5"  # what a killed one leaves
    leftover.write_bytes(b"half")
    done = run_script("prepare_datasets.py", *args)
    assert f"Removing {leftover}" in done.stdout and not leftover.exists()
    assert (tmp_path / "prepared" / "dataset.h5").is_file()
    leftover.write_bytes(b"half")  # killed during an --overwrite of an up-to-date file
    again = run_script("prepare_datasets.py", *args)
    assert "nothing to do" in again.stdout and f"Removing {leftover}" in again.stdout and not leftover.exists()


def test_foreground_fraction_puts_more_vessel_pixels_into_the_patches(tmp_path, small_drive):
    args = tiny_settings(tmp_path, small_drive, extra=["N_subimgs=600"])
    run_script("prepare_datasets.py", *args)
    path = tmp_path / "prepared" / "dataset.h5"
    with h5py.File(path, "r") as h5:
        plain = h5["patches/labels"][()].mean()
    focused_args = [*args, "--set", "foreground_fraction=0.5"]
    stale = run_script("prepare_datasets.py", *focused_args, check=False)
    assert stale.returncode == 2 and "training_settings.foreground_fraction = 0 (now 0.5)" in stale.stderr
    result = run_script("prepare_datasets.py", *focused_args, "--overwrite")
    assert "50% of them on foreground" in result.stdout
    with h5py.File(path, "r") as h5:
        labels = h5["patches/labels"][()]
    half = labels.shape[1] // 2
    assert labels[:, half, half].mean() >= 0.5
    assert labels.mean() > plain + 0.02, (plain, labels.mean())


def test_training_writes_every_promised_file(trained):
    tmp, _, _, train = trained
    run = tmp / "runs" / "tiny"
    for name in ("configuration.txt", "preprocessing.json", "model_summary.txt", "best.keras", "last.keras",
                 "log.csv", "learning_curves.png", "model_info.json", "training_summary.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"loss", "val_loss", "holdout_auc_roc", "dice_coefficient"} <= set(rows[0])
    info = json.loads((run / "model_info.json").read_text())
    assert 0.0 < info["threshold"] < 1.0 and info["threshold_source"].startswith("best F1")
    # The label offset, found on the training images (and said so), within a pixel.
    assert len(info["label_offset"]) == 2 and max(map(abs, info["label_offset"])) <= 1.0
    assert info["label_offset_source"] == "the 6 training images"
    assert "Label offset on the 6 training images: " in train.stdout


def test_training_really_learns_the_synthetic_task(trained):
    """The best checkpoint beats the best possible global intensity threshold on the holdout images.

    Vessels are darker than background, so a threshold on the preprocessed intensity is the natural
    no-learning baseline; even choosing its threshold with the labels it is limited by uneven
    illumination and low-contrast thin vessels. A network that learned vessel shape beats it.
    """
    tmp, _, _, _ = trained
    log = list(csv.DictReader(open(tmp / "runs" / "tiny" / "log.csv")))
    holdout_f1 = max(float(r["holdout_f1"]) for r in log)
    baseline = best_intensity_dice(tmp / "prepared" / "dataset.h5")
    assert holdout_f1 > baseline + 0.03, (holdout_f1, baseline)
    assert float(log[-1]["loss"]) < float(log[0]["loss"])


def test_predict_writes_images_metrics_and_curves(trained):
    tmp, args, _, _ = trained
    # In a process of its own, as users run it (the other runs of the scripts share the test's process).
    result = run_script("predict.py", *args, "--split", "test", fresh_process=True)
    out = tmp / "runs" / "tiny" / "predictions" / "test"
    for stem in ("01_test", "02_test"):
        for kind in ("probability", "binary", "compare", "overlay"):
            with Image.open(out / f"{stem}_{kind}.png") as image:
                assert image.size[1] == 120
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pooled", "per_image", "per_image_mean", "per_image_sd"} <= set(metrics)
    for key in ("accuracy", "sensitivity", "specificity", "f1", "jaccard", "auc_roc", "auc_pr"):
        assert 0.0 <= metrics["pooled"][key] <= 1.0
    assert metrics["pooled"]["auc_roc"] > 0.85
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 and all(0.0 < float(r["cldice"]) <= 1.0 for r in rows)
    assert (out / "roc.png").is_file() and (out / "pr.png").is_file()
    assert "auc_roc" in result.stdout
    # The summary's key says what the pictures show.
    summary = (out / "summary.txt").read_text()
    assert "<image>_overlay.png      green: found (true positive), red: false positive" in summary
    assert "<image>_compare.png      image | label | prediction\n" in summary and "roc.png" in summary
    # tta_flips = auto (in TINY) is settled for the model before predicting, and the settings record what it
    # became: the tiny model trains in float32, so four flips only where a GPU runs it.
    assert metrics["settings"]["tta_flips"] in ("all", False)
    assert f"tta_flips {metrics['settings']['tta_flips']}," in result.stdout
    # The same command again has nothing to do: it says so and shows the earlier results.
    again = run_script("predict.py", *args, "--split", "test")
    assert "already holds these predictions" in again.stdout and "nothing to do" in again.stdout
    assert summary in again.stdout
    # Other settings do not silently replace the first run's files.
    other = run_script("predict.py", *args, "--split", "test", "--set", "threshold=0.4", check=False)
    assert other.returncode == 2 and "--overwrite" in other.stderr and "made before" not in other.stderr
    assert "made with other settings (threshold 0.5 (now 0.4))" in other.stderr
    # Nor does the same command once best.keras holds another model (told by content, whatever the file times): the
    # refusal says the maps were made from another one. The earlier record is edited to stand for that.
    from lib.fingerprint import file_digest
    assert metrics["settings"]["made_from"]["best.keras"] == file_digest(tmp / "runs" / "tiny" / "best.keras")
    recorded = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**recorded, "settings": {
        **recorded["settings"], "made_from": {**recorded["settings"]["made_from"], "best.keras": "0" * 32}}}))
    try:
        stale = run_script("predict.py", *args, "--split", "test", check=False)
    finally:
        (out / "metrics.json").write_text(json.dumps(recorded))
    assert stale.returncode == 2 and "made from another best.keras" in stale.stderr
    # label_offset = auto applies the offset train.py found for the checkpoint, and says so.
    info = json.loads((tmp / "runs" / "tiny" / "model_info.json").read_text())
    assert metrics["settings"]["label_offset"] == info["label_offset"]
    assert metrics["settings"]["label_offset_source"] == "found on the 6 training images"
    assert "label offset: " in summary


def test_labels_drawn_a_pixel_below_their_vessels_are_found_and_followed(tmp_path, small_drive):
    """A tiny model trained with flips puts its maps on the vessels; train.py finds that the labels sit a pixel
    lower, and predict.py moves the maps there (DRIVE's and ISBI's labels are off by fractions of a pixel)."""
    from lib.sample_data import _save_gif
    drive = tmp_path / "DRIVE"
    shutil.copytree(small_drive, drive)
    for path in drive.glob("*/1st_manual/*.gif"):
        with Image.open(path) as image:
            label = np.asarray(image) > 0
        _save_gif(np.roll(label, 1, axis=0), path)
    args = tiny_settings(tmp_path, drive)
    run_script("prepare_datasets.py", *args)
    train = run_script("train.py", *args)
    info = json.loads((tmp_path / "runs" / "tiny" / "model_info.json").read_text())
    dy, dx = info["label_offset"]
    assert dy >= 0.5 and abs(dx) <= 0.25, (info["label_offset"], train.stdout)
    assert "px down" in train.stdout
    f1 = {}
    for given in ("auto", "0,0"):
        out = tmp_path / f"offset_{given.replace(',', '_')}"
        run_script("predict.py", *args, "--split", "test", "--set", f"label_offset={given}", "--output", str(out))
        f1[given] = json.loads((out / "metrics.json").read_text())["pooled"]["f1"]
    assert f1["auto"] > f1["0,0"] + 0.02, f1


def test_the_label_offset_is_found_on_training_images_up_to_a_pixel_budget(trained, monkeypatch):
    import train
    tmp, _, _, _ = trained
    prepared = train.Prepared(tmp / "prepared" / "dataset.h5", 0, {}, [], None, None, {}, "")
    assert len(train.training_images(prepared)) == 6  # 120 x 128 each: all of them
    monkeypatch.setattr(train, "CALIBRATION_PIXELS", 3 * 120 * 128 - 1)
    assert [s["name"] for s in train.training_images(prepared)] == ["21_training.tif", "22_training.tif"]
    monkeypatch.setattr(train, "CALIBRATION_PIXELS", 1)
    assert len(train.training_images(prepared)) == 1  # one image however large


def test_the_label_offset_is_chosen_for_f1_at_the_configured_threshold(trained):
    import train
    from lib.config import load_config
    from lib.start_up import import_keras
    tmp, args, _, _ = trained
    import_keras()
    overrides = args[3::2]  # args: --config FILE, then --set KEY=VALUE pairs
    f1 = {}
    for threshold in ("auto", "0.9"):
        config = load_config(REPO / "configuration_sample.txt", [*overrides, f"threshold={threshold}"])
        info = train.binary_calibration(config, train.read_prepared(config), tmp / "runs" / "tiny", False)
        f1[threshold] = info["label_offset_f1"][0]  # unmoved
    assert 0.0 < f1["0.9"] < f1["auto"] < 1.0  # a high threshold misses the faint vessels


def test_predict_moves_the_maps_by_a_given_label_offset_before_thresholding(trained):
    tmp, args, _, _ = trained
    maps = {}
    for given in ("0,0", "0,1"):
        out = tmp / f"offset_{given.replace(',', '_')}"
        result = run_script("predict.py", *args, "--split", "test", "--set", f"label_offset={given}",
                            "--set", "threshold=auto", "--output", str(out))
        if given == "0,1":  # the saved threshold was chosen on maps moved otherwise
            assert "note: the saved threshold was chosen on maps moved by the run's label offset" in result.stdout
        maps[given] = {kind: np.asarray(Image.open(out / f"01_test_{kind}.png"), dtype=int)
                       for kind in ("probability", "binary")}
        settings = json.loads((out / "metrics.json").read_text())["settings"]
        assert settings["label_offset"] == [float(v) for v in given.split(",")]
        assert settings["label_offset_source"] == "given"
    with h5py.File(tmp / "prepared" / "dataset.h5", "r") as h5:
        group = h5["test"]
        fov = group["fovs"][sorted(group["fovs"])[0]][()] > 0
    both = fov[:, 1:] & fov[:, :-1]  # maps are zero outside the FOV, moved or not
    for kind in ("probability", "binary"):
        still, moved = maps["0,0"][kind], maps["0,1"][kind]
        assert np.abs(moved[:, 1:][both] - still[:, :-1][both]).max() <= 1  # one column right (PNG rounding)
        assert np.abs(moved[:, 1:][both] - still[:, 1:][both]).max() > 1  # and not where it was


def test_predict_input_folder_reuses_saved_preprocessing(trained, small_drive):
    """Raw images through --input give the same probabilities as the prepared (HDF5) copy."""
    tmp, args, _, _ = trained
    out = tmp / "from_input"
    result = run_script("predict.py", *args, "--input", str(small_drive / "test" / "images"),
                        "--mask", str(small_drive / "test" / "mask"), "--output", str(out),
                        "--set", "base_filters=64", "--set", "tta_flips=false")
    # Model settings come from the run: a --set of one is named as ignored; testing settings apply.
    assert "note: --set model.base_filters ignored: predict.py takes only [testing settings]" in result.stdout
    assert "tta_flips False" in result.stdout
    prepared = tmp / "runs" / "tiny" / "predictions" / "test"
    if not prepared.exists():
        run_script("predict.py", *args, "--split", "test")
    a = np.asarray(Image.open(out / "01_test_probability.png"), dtype=int)
    b = np.asarray(Image.open(prepared / "01_test_probability.png"), dtype=int)
    assert np.abs(a - b).max() <= 1  # same up to PNG rounding
    assert not (out / "metrics.json").exists()  # no labels given, no metrics invented
    summary = (out / "summary.txt").read_text()
    assert f"mask: {(small_drive / 'test' / 'mask').resolve()}" in summary
    assert "<image>_overlay.png      the prediction in green\n" in summary and "roc.png" not in summary


def test_predict_input_refuses_unreadable_files_first_and_a_failed_run_leaves_the_output_as_it_was(
        trained, small_drive, tmp_path):
    """Every --input file is opened before any is segmented; a run that fails midway (here at a bad mask)
    writes nothing, so the earlier predictions in its output folder stay whole."""
    tmp, args, _, _ = trained
    folder, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    folder.mkdir()
    masks.mkdir()
    for path in sorted((small_drive / "test" / "images").iterdir())[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    first, second = sorted(folder.iterdir())
    for path, values in ((first, (0, 255)), (second, (0, 128))):  # the second mask is not binary
        with Image.open(path) as image:
            mask = np.full((image.height, image.width), values[1], np.uint8)
        mask[:, :4] = values[0]
        Image.fromarray(mask).save(masks / f"{path.stem}.png")
    run_script("predict.py", *args, "--input", str(first), "--output", str(out))
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "summary.txt" in before and "outputs.txt" in before
    assert f"input: {first.resolve()}" in before["summary.txt"].decode()
    other = run_script("predict.py", *args, "--input", str(folder), "--output", str(out), check=False)
    assert other.returncode == 2 and (f"{out} already holds predictions of other images (input {first.resolve()}, "
                                      f"not input {folder.resolve()})") in other.stderr
    (folder / "zz_broken.tif").write_bytes(b"II*\x00" + bytes(200))  # a TIFF header, then nothing
    result = run_script("predict.py", *args, "--input", str(folder), "--output", str(out), "--overwrite", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "zz_broken.tif" in result.stderr.split("error:", 1)[-1] and "predict: " not in result.stderr
    (folder / "zz_broken.tif").unlink()
    result = run_script("predict.py", *args, "--input", str(folder), "--mask", str(masks), "--output", str(out),
                        "--overwrite", check=False)
    assert result.returncode == 2 and f"{second.stem}.png" in result.stderr.split("error:", 1)[-1]
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # nothing new, nothing lost
    fresh = tmp_path / "fresh" / "predictions"
    result = run_script("predict.py", *args, "--input", str(folder), "--mask", str(masks), "--output", str(fresh),
                        check=False)
    assert result.returncode == 2 and not fresh.parent.exists()  # no empty folders left behind either
    # Finished, the new run replaces exactly the files the earlier one listed, and keeps the user's.
    (out / "notes.txt").write_text("mine")
    (masks / f"{second.stem}.png").unlink()
    run_script("predict.py", *args, "--input", str(folder), "--mask", str(masks / f"{first.stem}.png"),
               "--output", str(out), "--overwrite")
    listed = (out / "outputs.txt").read_text().splitlines()[1:]  # after its header line
    assert sorted(listed + ["outputs.txt", "notes.txt"]) == sorted(path.name for path in out.iterdir())
    assert f"{second.stem}_probability.png" in listed and "images: 2" in (out / "summary.txt").read_text()
    # Predictions are never written into the folder of the images they would then be read as.
    result = run_script("predict.py", *args, "--input", str(folder), "--output", str(folder), check=False)
    assert result.returncode == 2 and "is the folder of the --input images" in result.stderr


def test_predict_refuses_an_output_in_the_dataset_and_a_killed_one_leaves_no_folders(trained, small_drive, tmp_path):
    """Maps written among the dataset's files would be read as images or labels by the next prepare; a prediction
    stopped by `kill` (SIGTERM) cleans up as Ctrl-C does, down to the folders it made for --output."""
    _, args, _, _ = trained
    inside = small_drive / "test" / "predictions"
    result = run_script("predict.py", *args, "--output", str(inside), check=False)
    assert result.returncode == 2 and "is inside the dataset folder" in result.stderr and not inside.exists()
    folder = tmp_path / "images"
    folder.mkdir()
    image = sorted((small_drive / "test" / "images").iterdir())[0]
    for i in range(40):  # enough work to be stopped in the middle of
        shutil.copy(image, folder / f"{i:02d}{image.suffix}")
    out = tmp_path / "stopped" / "predictions"
    child = subprocess.Popen([sys.executable, str(REPO / "predict.py"), *args, "--input", str(folder), "--output",
                              str(out)], cwd=REPO, env=script_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(out.glob(".predicting-*"))):
        time.sleep(0.05)
    assert child.poll() is None, "predict finished before it could be stopped"
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130 and "Interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not (tmp_path / "stopped").exists()


def test_predict_input_segments_every_page_of_a_stack_and_refuses_names_that_would_clash(
        trained, small_drive, tmp_path):
    tmp, args, _, _ = trained
    with Image.open(sorted((small_drive / "test" / "images").iterdir())[0]) as image:
        pages = [image.convert("RGB"), image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    folder = tmp_path / "stack"
    folder.mkdir()
    pages[0].save(folder / "volume.tif", save_all=True, append_images=pages[1:])
    run_script("predict.py", *args, "--input", str(folder), "--output", str(tmp_path / "out"))
    assert "images: 2" in (tmp_path / "out" / "summary.txt").read_text()
    pages[1].save(tmp_path / "mirrored.png")  # the second page alone
    run_script("predict.py", *args, "--input", str(tmp_path / "mirrored.png"), "--output", str(tmp_path / "one"))
    with Image.open(tmp_path / "out" / "volume_1_probability.png") as a, \
            Image.open(tmp_path / "one" / "mirrored_probability.png") as b:
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    # A mask stack gives each page its own mask: here page 1 has its right half outside the FOV.
    width, height = pages[0].size
    full = np.full((height, width), 255, np.uint8)
    half = full.copy()
    half[:, width // 2:] = 0
    (tmp_path / "masks").mkdir()
    Image.fromarray(full).save(tmp_path / "masks" / "volume.tif", save_all=True, append_images=[Image.fromarray(half)])
    run_script("predict.py", *args, "--input", str(folder), "--mask", str(tmp_path / "masks"),
               "--output", str(tmp_path / "masked"))
    for page, outside in ((0, False), (1, True)):
        with Image.open(tmp_path / "masked" / f"volume_{page}_probability.png") as probability:
            assert (np.asarray(probability)[:, width // 2:].max() == 0) == outside
    # A page of a stack and an image named as its outputs would be (a.png with a.tif: tests/test_bad_inputs.py).
    pages[0].save(folder / "volume_1.png")
    result = run_script("predict.py", *args, "--input", str(folder), "--output", str(tmp_path / "b"), check=False)
    assert result.returncode == 2 and "outputs would have the same name" in result.stderr
    assert "volume.tif[1] and volume_1.png" in result.stderr
    assert not (tmp_path / "b").exists()  # a refused run leaves no empty folder
    (folder / "volume_1.png").unlink()
    # Gzipped files, as STARE distributes them, are images too, named without .gz.
    buffer = io.BytesIO()
    pages[1].save(buffer, format="PPM")
    (folder / "im0001.ppm.gz").write_bytes(gzip.compress(buffer.getvalue()))
    run_script("predict.py", *args, "--input", str(folder), "--output", str(tmp_path / "c"))
    with Image.open(tmp_path / "c" / "im0001_probability.png") as a, \
            Image.open(tmp_path / "one" / "mirrored_probability.png") as b:
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_a_run_trained_at_half_size_resizes_input_files_before_preprocessing_them(trained, small_drive, tmp_path):
    """--input files are as distributed: a run prepared with resize=0.5 resizes each to half size first, as
    its training images were, preprocesses and segments it there, and returns maps at the file's size."""
    from lib.readers import read_image, scale_sample, Sample

    tmp, args, _, _ = trained
    half = tmp / "runs" / "tiny_half"
    shutil.copytree(tmp / "runs" / "tiny", half, ignore=shutil.ignore_patterns("predictions"))
    config = (half / "configuration.txt").read_text()
    (half / "configuration.txt").write_text(config.replace("resize = 1.0", "resize = 0.5", 1))
    source = sorted((small_drive / "test" / "images").iterdir())[0]
    result = run_script("predict.py", *args, "--run", str(half), "--input", str(source),
                        "--output", str(tmp_path / "a"))
    assert "resized by 0.5" in result.stdout
    # The same image resized by hand, segmented by the full-size run: the half-size map, before it is enlarged.
    image = read_image(source)
    small = scale_sample(Sample("x", 1, image, None, np.ones(image.shape[:2], bool)), 0.5).image
    (tmp_path / "small").mkdir()
    Image.fromarray(small).save(tmp_path / "small" / f"{source.stem}.png")
    run_script("predict.py", *args, "--input", str(tmp_path / "small"), "--output", str(tmp_path / "b"))
    with Image.open(tmp_path / "a" / f"{source.stem}_probability.png") as a, \
            Image.open(tmp_path / "b" / f"{source.stem}_probability.png") as b:
        assert a.size == (128, 120) and b.size == (64, 60)
        enlarged = np.asarray(b.resize(a.size, Image.Resampling.BILINEAR), dtype=int)
        assert np.abs(np.asarray(a, dtype=int) - enlarged)[4:-4, 4:-4].mean() < 2


def _write_stare(root: Path, numbers: tuple[int, ...], width: int = 150, height: int = 140) -> Path:
    """A STARE release in its formats (PPM images, P5 PPM labels of both observers, no FOV masks)."""
    from lib.sample_data import make_fundus
    (root / "labels-ah").mkdir(parents=True)
    (root / "labels-vk").mkdir()
    rng = np.random.default_rng(7)
    for number in numbers:
        image, vessels, _ = make_fundus(rng, width, height)
        Image.fromarray(image).save(root / f"im{number:04d}.ppm")
        for observer in ("ah", "vk"):
            Image.fromarray(vessels.astype(np.uint8) * 255).save(root / f"labels-{observer}" / f"im{number:04d}.{observer}.ppm")
    return root


def test_predict_scores_another_dataset_at_a_zoom_and_refuses_an_incompatible_one(trained, tmp_path):
    """Cross-dataset evaluation: the DRIVE-trained run on STARE's test images, at the original size."""
    tmp, args, _, _ = trained
    stare = _write_stare(tmp_path / "STARE", (1, 2, 3, 4))
    other = ["--set", "dataset=STARE", "--set", f"dataset_dir={stare}", "--set", "holdout_ids=",
             "--set", "test_ids=3,4", "--set", "N_subimgs=200"]
    run_script("prepare_datasets.py", *args, *other, "--set", f"prepared_dir={tmp_path / 'stare'}")
    result = run_script("predict.py", *args, "--data", str(tmp_path / "stare"), "--set", "zoom=0.8")
    out = tmp / "runs" / "tiny" / "predictions" / "STARE_stare_test"  # the dataset and its prepared folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_image"]) == 2 and metrics["settings"]["zoom"] == 0.8
    scored = (tmp_path / "stare" / "dataset.h5").resolve()
    assert metrics["settings"]["data"] == str(scored) and f"data: {scored}" in (out / "summary.txt").read_text()
    assert metrics["pooled"]["auc_roc"] > 0.8  # the same kind of vessels, another dataset's layout
    # The run's label offset belongs to its own labels' annotators, not to STARE's.
    assert metrics["settings"]["label_offset"] == [0.0, 0.0] and "label_offset = auto moves no maps" in result.stdout
    with Image.open(out / "im0003_probability.png") as image:
        assert image.size == (150, 140)  # scored at the dataset's own size, not the zoomed one
    assert "auc_roc" in result.stdout

    run_script("prepare_datasets.py", *args, *other, "--set", "channels=3",
               "--set", f"prepared_dir={tmp_path / 'stare_rgb'}")
    refused = run_script("predict.py", *args, "--data", str(tmp_path / "stare_rgb"), check=False)
    assert refused.returncode == 2
    assert "3-channel" in refused.stderr and "--set channels=1" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_stride_that_is_no_multiple_of_2_to_the_depth_is_rounded_and_recorded_as_used(trained):
    tmp, args, _, _ = trained
    out = tmp / "stride_2"
    result = run_script("predict.py", *args, "--split", "test", "--set", "stride=2", "--output", str(out))
    # The tiny model has depth 2: windows start at multiples of 4.
    assert "stride = 2 is not a multiple of 2^depth = 4" in result.stdout and "they step by 4" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["settings"]["stride"] == 4
    assert "window 64, stride 4," in (out / "summary.txt").read_text()


def test_predict_with_run_alone_notes_no_prepared_dir_and_a_missing_data_path_is_named_first(trained):
    tmp, args, _, _ = trained
    run = tmp / "runs" / "tiny"
    alone = run_script("predict.py", "--run", str(run), "--split", "test", "--output", str(tmp / "run_alone"))
    assert "note: predict.py scores the data the run was trained with" not in alone.stdout
    assert (tmp / "run_alone" / "metrics.json").is_file()
    named = run_script("predict.py", "--run", str(run), "--split", "test", "--set", "prepared_dir=elsewhere",
                       "--output", str(tmp / "run_named"))
    assert "note: predict.py scores the data the run was trained with" in named.stdout
    assert "not elsewhere" in named.stdout
    missing = run_script("predict.py", *args, "--data", str(tmp / "nowhere"), check=False)
    assert missing.returncode == 2 and f"--data {tmp / 'nowhere'} not found" in missing.stderr
    assert "note:" not in missing.stdout


def test_finished_run_is_not_overwritten(trained):
    tmp, args, _, _ = trained
    best = tmp / "runs" / "tiny" / "best.keras"
    before = best.stat().st_mtime_ns
    # The same command again (a rerun of the whole pipeline) has nothing to do, and says so.
    again = run_script("train.py", *args)
    assert "already holds a finished run with these settings: best holdout_auc_roc = " in again.stdout
    assert "nothing to do" in again.stdout and "--overwrite" in again.stdout
    # Other training settings are refused, named as --set takes them.
    result = run_script("train.py", *args, "--set", "N_epochs=4", check=False)
    assert result.returncode == 2
    assert "already holds a finished run made with other settings (training_settings.N_epochs = 3 (now 4))" in (
        result.stderr) and "--overwrite" in result.stderr
    assert best.stat().st_mtime_ns == before
    # The summary records which preparation the run was trained on: data prepared again (other files, the same
    # settings) is refused, not taken as nothing to do. Here a copy of the run says it saw another preparation.
    copy = tmp / "runs" / "tiny_copy"
    shutil.copytree(tmp / "runs" / "tiny", copy)
    summary = json.loads((copy / "training_summary.json").read_text())
    assert len(summary["data_digest"]) == 32
    (copy / "training_summary.json").write_text(json.dumps({**summary, "data_digest": "0" * 32}))
    saved = (copy / "configuration.txt").read_text()
    assert "\nname = tiny\n" in saved
    (copy / "configuration.txt").write_text(saved.replace("\nname = tiny\n", "\nname = tiny_copy\n"))
    moved = run_script("train.py", *args, "--set", "name=tiny_copy", check=False)
    assert moved.returncode == 2 and "as it was before it was prepared again" in moved.stderr
    shutil.rmtree(copy)


def test_sigkill_during_training_then_same_command_resumes(tmp_path, small_drive, trained):
    tmp, _, _, _ = trained
    # With the moving average of the weights on: the backup must hold the training state, not the average.
    args = tiny_settings(tmp, small_drive, name="killed", extra=["N_epochs=3", "ema_momentum=0.9"])
    command = [sys.executable, str(REPO / "train.py"), *args]
    child = subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    backup = tmp / "runs" / "killed" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if backup.exists() and json.loads(backup.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.2)
    assert child.poll() is None, "training ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = json.loads(backup.read_text())["epoch"]
    assert killed_at < 3
    state_before = json.loads((tmp / "runs" / "killed" / "checkpoint_state.json").read_text())

    result = run_script("train.py", *args)
    assert "Resuming run" in result.stdout
    assert f"Epoch {killed_at + 1}/3" in result.stdout and "Epoch 1/3" not in result.stdout
    log = {int(r["epoch"]): r for r in csv.DictReader(open(tmp / "runs" / "killed" / "log.csv"))}
    assert sorted(log) == [0, 1, 2]
    state = json.loads((tmp / "runs" / "killed" / "checkpoint_state.json").read_text())
    best_logged = max(float(r["holdout_auc_roc"]) for r in log.values())
    assert state["best"] == pytest.approx(best_logged, abs=1e-9)
    assert state["best"] >= state_before["best"]
    # The resumed run repeats the uninterrupted one exactly: the same batches, dropout masks and moving average.
    run_script("train.py", *tiny_settings(tmp, small_drive, name="whole", extra=["N_epochs=3", "ema_momentum=0.9"]))
    whole = {int(r["epoch"]): r for r in csv.DictReader(open(tmp / "runs" / "whole" / "log.csv"))}
    assert whole == log


def test_ctrl_c_stops_cleanly_keeps_checkpoints_and_prints_the_resume_command(small_drive, trained):
    tmp, _, _, _ = trained
    # A setting with a space, as the README writes section.key: the printed command must keep it one argument.
    args = tiny_settings(tmp, small_drive, name="interrupted", extra=["training settings.N_epochs=8"])
    # A shell starts background jobs with SIGINT ignored; the child must get Ctrl-C as a terminal would.
    # Started with --overwrite: the printed command must leave it out, or pasting it would delete the run.
    child = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--overwrite"], cwd=REPO,
                             env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    backup = tmp / "runs" / "interrupted" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None and not backup.exists():
        time.sleep(0.2)
    assert child.poll() is None, "training ended before it could be interrupted"
    second = run_script("train.py", *args, "--overwrite", check=False)  # while the first one trains
    assert second.returncode == 2 and "is being trained now by process" in second.stderr
    assert (tmp / "runs" / "interrupted" / "last.keras").is_file()  # deleted nothing
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130
    assert "Interrupted" in stderr and "train.py" in stderr and "Traceback" not in stderr
    printed = stderr.split("run the same command to resume:", 1)[1].strip().splitlines()[0]
    assert shlex.split(printed)[2:] == args
    run = tmp / "runs" / "interrupted"
    assert (run / "last.keras").is_file() and (run / "backup").is_dir()
    assert not (run / "training_summary.json").exists()  # not finished: the same command resumes
    early = run_script("predict.py", *args, "--split", "val", "--set", "threshold=auto")
    assert "has not finished training" in early.stdout and "no threshold was chosen yet" in early.stdout
    # The same command resumes; the test stops it there rather than wait for its last six epochs.
    resumed = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=script_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = ""
        while "Epoch " not in printed and (line := resumed.stdout.readline()):  # up to its first epoch
            printed += line
    finally:
        resumed.kill()
        resumed.communicate()
    assert "Resuming run" in printed and "Epoch 1/8" not in printed, printed[-2000:]


def test_a_run_that_ended_early_trains_no_more_when_rerun_before_its_final_files(tmp_path, small_drive, trained):
    """Stopped by its time budget and killed before writing its final files, a run reruns to those files only;
    it also records the patch settings and dataset folder of dataset.h5, warns that a source file changed after
    it was prepared, and validates on fewer patches than a batch."""
    tmp, _, _, _ = trained
    shutil.copytree(tmp / "prepared", tmp_path / "prepared")  # prepared with N_subimgs=2400
    with h5py.File(tmp_path / "prepared" / "dataset.h5", "r+") as h5:
        files = json.loads(h5.attrs["source_files"])
        files["training/1st_manual/22_manual1.gif"][0] += 1  # as if the label had been edited since
        h5.attrs["source_files"] = json.dumps(files)
    args = tiny_settings(tmp_path, small_drive, name="budget",
                         extra=["max_train_minutes=0.01", "N_subimgs=999", "validation_fraction=0.004",
                                f"dataset_dir={tmp_path / 'moved'}"])
    first = run_script("train.py", *args)
    assert "stopping after epoch 1" in first.stdout and "2390 training and 10 validation patches" in first.stdout
    assert (f"warning: these files in {small_drive} changed after {tmp_path / 'prepared' / 'dataset.h5'} was "
            "prepared from them: training/1st_manual/22_manual1.gif (changed)") in first.stdout
    run = tmp_path / "runs" / "budget"
    log = list(csv.DictReader(open(run / "log.csv")))
    assert len(log) == 1 and float(log[0]["val_loss"]) > 0  # 10 patches, batch 16: validated all the same
    recorded = (run / "configuration.txt").read_text().splitlines()
    assert "N_subimgs = 2400" in recorded and f"dataset_dir = {small_drive}" in recorded
    info = json.loads((run / "model_info.json").read_text())
    assert info["thresholds"]["best"] == info["thresholds"]["last"] == info["threshold"]  # one epoch: one model
    for name in ("training_summary.json", "model_info.json"):
        (run / name).unlink()  # as after a kill between the end of training and the final files

    again = run_script("train.py", *args)
    assert "Its training had ended (stopped early, after 1 epoch)" in again.stdout
    assert "Epoch" not in again.stdout and len(list(csv.DictReader(open(run / "log.csv")))) == 1
    assert json.loads((run / "model_info.json").read_text()) == {**info, "minutes_this_session": 0.0}


def test_nan_loss_stops_with_a_clear_message_and_writes_no_bad_checkpoint(tmp_path, small_drive, trained):
    import shutil
    tmp, _, _, _ = trained
    shutil.copytree(tmp / "prepared", tmp_path / "prepared")
    with h5py.File(tmp_path / "prepared" / "dataset.h5", "r+") as h5:
        images = h5["patches/images"]
        # One array write: h5py writes a broadcast scalar element by element (40 µs each, 2.4 million here).
        images[...] = np.full(images.shape, np.nan, images.dtype)  # poisoned inputs: the loss is NaN at once
    args = tiny_settings(tmp_path, small_drive, name="nan", extra=["learning_rate=0.003"])
    result = run_script("train.py", *args, check=False)
    assert result.returncode == 2
    assert "loss became NaN at epoch 1" in result.stderr and "Traceback" not in result.stderr
    run = tmp_path / "runs" / "nan"
    assert not (run / "last.keras").exists() and not (run / "best.keras").exists()
    assert not (run / "training_summary.json").exists()

"""predict.py's binary outputs on images it cannot fully score: no vessels, no label, unrescaled input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import predict
from lib import outputs
from lib.errors import UserError


def _dark_is_vessel(image: np.ndarray) -> np.ndarray:
    """A fixed model: probability sigmoid(-4 x), so dark (negative) pixels are vessels."""
    return 1.0 / (1.0 + np.exp(4.0 * image))


def _sample(name: str, image: np.ndarray, label: np.ndarray | None) -> dict:
    return {"name": name, "image": image[..., None].astype("float32"), "label": label,
            "fov": np.ones(image.shape, bool)}


def _predict(samples: list[dict], out) -> list[str]:
    out.mkdir()
    return predict.predict_binary(_dark_is_vessel, samples, len(samples), 0.5, out, {"split": "test"}, "DRIVE", None)


def test_an_image_without_vessels_is_scored_with_undefined_scores_left_empty(tmp_path):
    rng = np.random.default_rng(0)
    # Standardized values (rescale = false): negative and above 1, which the panels must stretch, not refuse.
    vessels = rng.normal(0.0, 2.0, (32, 32))
    blank = np.abs(rng.normal(0.0, 2.0, (32, 32)))
    lines = _predict([_sample("with", vessels, vessels < 0), _sample("without", blank, np.zeros((32, 32), bool))],
                     tmp_path / "out")
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "out" / "per_image.csv"))}
    assert rows["without"]["auc_roc"] == "" and float(rows["with"]["auc_roc"]) == pytest.approx(1.0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["per_image"][1]["auc_roc"] is None and metrics["pooled"]["auc_roc"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "roc.png").is_file() and (tmp_path / "out" / "without_compare.png").is_file()
    assert any(line.startswith("pooled inside the FOV") for line in lines)
    # Correctly left empty, the image has no F1 or clDice (not 0), and the means are those of the other image.
    assert rows["without"]["f1"] == "" and rows["without"]["cldice"] == "" and float(rows["with"]["f1"]) == 1.0
    assert metrics["per_image_mean"]["f1"] == 1.0 and metrics["per_image_mean"]["cldice"] == 1.0
    assert ("left out of the per-image means (in metrics.json), as undefined: sensitivity, precision, f1, jaccard, "
            "auc_roc, auc_pr, cldice of without (no foreground" in " ".join(lines))


def test_no_vessel_in_any_image_gives_n_a_and_no_curves(tmp_path):
    blank = np.abs(np.random.default_rng(1).normal(0.0, 1.0, (32, 32)))
    lines = _predict([_sample("a", blank, np.zeros((32, 32), bool))], tmp_path / "out")
    assert "auc_roc n/a" in lines[0]
    assert not (tmp_path / "out" / "roc.png").exists()
    assert "no ROC / PR curves" in lines[-1]


def test_some_images_without_labels_are_counted_in_the_message(tmp_path):
    image = np.random.default_rng(2).normal(0.0, 1.0, (32, 32))
    lines = _predict([_sample("a", image, image < 0), _sample("b", image, None)], tmp_path / "out")
    assert lines == [predict.unscored(1, 2)] and lines[0].startswith("1 of 2 images have no label")
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert (tmp_path / "out" / "b_probability.png").is_file()


def test_overwrite_clears_the_earlier_outputs_and_keeps_other_files(tmp_path):
    # A folder written before outputs.txt existed: its summary.txt and every file named as predictions are.
    for name in ("metrics.json", "roc.png", "old_probability.png", "old_compare.png", "notes.txt",
                 "old_probability.png.bak"):
        (tmp_path / name).write_text("x")
    (tmp_path / "summary.txt").write_text("run: runs/drive\nimages: 1 (test)\n")
    (tmp_path / "outputs.txt").write_text("a user's list, not predict.py's\n")
    (tmp_path / "sub").mkdir()
    assert outputs.clear_outputs(tmp_path) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "old_probability.png.bak", "outputs.txt", "sub"]


def test_overwrite_replaces_what_the_earlier_prediction_listed_and_never_a_stranger_s_files(tmp_path):
    (tmp_path / "a_probability.png").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "outputs.txt").write_text(f"{outputs.MANIFEST_HEADER}\na_probability.png\nsummary.txt\n"
                                          "../escape_overlay.png\nnotes.txt\n")
    (tmp_path / "summary.txt").write_text("x")
    assert outputs.clear_outputs(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # A user's own outputs.txt or summary.txt is no earlier prediction: nothing it names is deleted.
    (tmp_path / "outputs.txt").write_text("notes.txt\n")
    (tmp_path / "summary.txt").write_text("my summary\n")
    assert outputs.earlier_outputs(tmp_path) is None and outputs.clear_outputs(tmp_path) == 0
    with pytest.raises(UserError, match="named as predictions are \\(outputs.txt, summary.txt\\)"):
        outputs.check_output_folder(tmp_path, True, None)  # the new ones would replace them
    (tmp_path / "summary.txt").unlink()
    (tmp_path / "outputs.txt").unlink()
    # Files named as outputs that no earlier prediction listed: refused, --overwrite or not.
    (tmp_path / "b_binary.png").write_text("hand-corrected")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="holds files named as predictions are \\(b_binary.png\\)"):
            outputs.check_output_folder(tmp_path, overwrite, None)
    (tmp_path / "outputs.txt").write_text(f"{outputs.MANIFEST_HEADER}\nsummary.txt\n")
    with pytest.raises(UserError, match="holds files named as predictions are \\(b_binary.png\\)"):
        outputs.check_output_folder(tmp_path, True, None)
    outputs.check_output_folder(tmp_path / "new", False, None)
    assert (tmp_path / "new").is_dir()


def test_a_prediction_finished_meanwhile_in_the_same_folder_is_kept(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    earlier = outputs.check_output_folder(out, False, None)
    (out / "a_probability.png").write_text("the other run's")
    (out / "outputs.txt").write_text(f"{outputs.MANIFEST_HEADER}\na_probability.png\nsummary.txt\n")
    (staging / "summary.txt").write_text("run: mine\n")
    with pytest.raises(UserError, match="another prediction wrote into"):
        outputs.publish(staging, out, earlier)
    assert (out / "a_probability.png").read_text() == "the other run's"


def test_maps_are_written_at_the_size_of_the_fov_and_multiclass_maps_are_void_outside_it(tmp_path):
    from lib.readers import ClassSpec

    image = np.random.default_rng(3).normal(0.0, 1.0, (16, 20))
    fov = np.ones((32, 40), bool)
    fov[:, :5] = False
    sample = {"name": "a.png", "image": image[..., None].astype("float32"), "label": None, "fov": fov}
    lines = _predict([sample], tmp_path / "binary")
    with Image.open(tmp_path / "binary" / "a_probability.png") as probability:
        assert probability.size == (40, 32) and not np.asarray(probability)[:, :5].any()
    classes = ClassSpec(n_classes=3, names=("x", "y", "z"), ignore_index=3)
    (tmp_path / "multi").mkdir()
    three = lambda x: np.concatenate([x, -x, np.zeros_like(x)], axis=-1)  # noqa: E731
    predict.predict_multiclass(three, [sample], 1, classes, tmp_path / "multi", {"split": "input"})
    with Image.open(tmp_path / "multi" / "a_classes.png") as classes_png:
        predicted = np.asarray(classes_png)
    assert predicted.shape == (32, 40) and (predicted[:, :5] == 3).all() and (predicted[:, 5:] < 2).all()
    # Without a void value, 255 marks what lies outside the FOV.
    (tmp_path / "novoid").mkdir()
    predict.predict_multiclass(three, [sample], 1, ClassSpec(n_classes=3, names=("x", "y", "z")), tmp_path / "novoid",
                               {"split": "input"})
    with Image.open(tmp_path / "novoid" / "a_classes.png") as classes_png:
        assert (np.asarray(classes_png)[:, :5] == 255).all()
    assert lines == [predict.unscored(1, 1)]


def test_threshold_auto_takes_the_threshold_chosen_for_the_checkpoint_used():
    info = {"threshold": 0.6, "thresholds": {"best": 0.6, "last": 0.8}, "threshold_source": "best F1 on the holdout images"}
    assert predict.saved_threshold(info, "best") == (0.6, "best F1 on the holdout images, for best.keras")
    assert predict.saved_threshold(info, "last") == (0.8, "best F1 on the holdout images, for last.keras")
    # A run trained before thresholds were chosen per checkpoint: best.keras's does not hold for last.keras.
    older = {"threshold": 0.6, "threshold_source": "best F1 on the holdout images", "best_epoch": 3, "epochs_run": 5}
    assert predict.saved_threshold(older, "best")[0] == 0.6
    value, source = predict.saved_threshold(older, "last")
    assert value == 0.5 and "best.keras only" in source
    assert predict.saved_threshold({**older, "best_epoch": 5}, "last")[0] == 0.6  # the last epoch was the best
    assert predict.saved_threshold({"threshold": 0.5, "threshold_source": "default: no holdout images"}, "last") \
        == (0.5, "default: no holdout images")
    assert predict.saved_threshold({}, "best")[1].startswith("default: training has not finished")


def test_the_unfinished_outputs_of_a_killed_prediction_are_removed_and_a_running_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys
    host = socket.gethostname()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        names = {"killed": f".predicting-{gone}@{host}-k3x_9", "running": f".predicting-{running.pid}@{host}-a1",
                 "elsewhere": f".predicting-{gone}@other-host.lab-b2", "older": ".predicting-q8w7e6"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "01_probability.png").write_bytes(b"png")
        assert outputs.remove_abandoned(tmp_path) == [names["killed"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for k, n in names.items() if k != "killed")
        running.kill()
    # What predict.py creates matches, and a folder named by this very process is from before a restart.
    (tmp_path / (outputs.staging_prefix() + "x_1")).mkdir()
    assert set(outputs.remove_abandoned(tmp_path)) == {names["running"], outputs.staging_prefix() + "x_1"}


def test_a_prepared_dataset_whose_labels_mean_something_else_is_refused(tmp_path):
    import h5py
    from lib.config import load_config
    from conftest import REPO
    run = tmp_path / "run"
    isbi = load_config(REPO / "configuration_isbi.txt")  # trained to find the membranes
    with h5py.File(tmp_path / "isbi.h5", "w") as h5:
        h5.attrs["dataset"] = "ISBI2012"
        h5.attrs["fingerprint"] = json.dumps({"data attributes": {"positive_class": "interior"}})
        with pytest.raises(UserError, match="positive_class = interior, but the model of .* membrane"):
            predict.check_same_labels(h5, tmp_path / "isbi.h5", run, isbi)
        h5.attrs["fingerprint"] = json.dumps({"data attributes": {"positive_class": "membrane"}})
        predict.check_same_labels(h5, tmp_path / "isbi.h5", run, isbi)
    camvid = load_config(REPO / "configuration_camvid.txt")  # void = 11
    with h5py.File(tmp_path / "camvid.h5", "w") as h5:
        h5.attrs["dataset"] = "CamVid"
        h5.attrs["classes"] = json.dumps({"n_classes": 11, "ignore_index": None})
        with pytest.raises(UserError, match="has no void label, but the model of .* ignore_index = 11"):
            predict.check_same_labels(h5, tmp_path / "camvid.h5", run, camvid)
        h5.attrs["classes"] = json.dumps({"n_classes": 11, "ignore_index": 11})
        predict.check_same_labels(h5, tmp_path / "camvid.h5", run, camvid)


def test_a_run_from_before_the_clahe_tile_accepts_its_data_prepared_again_only_where_nothing_changed(tmp_path):
    import h5py

    settings = {"channels": 1, "gray_mode": "luminance", "standardize": True, "rescale": True, "clahe": True,
                "clahe_clip": 0.01, "gamma": 1.0}
    statistics = {"mean": [100.0], "std": [20.0]}
    old_run = {"settings": settings, "statistics": statistics}  # trained when each image had its own tile

    def prepared_again(shapes) -> h5py.File:
        h5 = h5py.File(tmp_path / f"{len(shapes)}.h5", "w")
        h5.attrs["preprocessing"] = json.dumps({**settings, "clahe_tile": [8, 8]})
        h5.attrs["statistics"] = json.dumps(statistics)
        for index, shape in enumerate(shapes):
            h5.create_dataset(f"train/images/{index:05d}", data=np.zeros(shape, np.float16))
        return h5

    with prepared_again([(64, 64, 1), (64, 64, 1)]) as h5:  # 1/8 of every image is the tile: the same data
        predict.check_same_preparation(h5, tmp_path / "a.h5", tmp_path / "run", old_run, 1.0, 1.0)
    with prepared_again([(64, 64, 1), (128, 96, 1), (64, 64, 1)]) as h5:  # the 128x96 image was equalized anew
        with pytest.raises(UserError, match=r"prepared again since .* with other preprocessing: clahe_tile \[8, 8\] "
                                            r"\(model: None\)"):
            predict.check_same_preparation(h5, tmp_path / "a.h5", tmp_path / "run", old_run, 1.0, 1.0)


def test_an_inconsistency_only_ignored_set_options_cause_says_to_leave_them_out():
    from conftest import REPO

    with pytest.raises(UserError, match=r"loss = bce is for one class, but n_classes = 5.*predict.py takes these "
                                        r"settings from the run, as it was trained, so leave out --set n_classes=5\."):
        predict.load_current(REPO / "configuration.txt", ["n_classes=5", "tta_flips=false"])
    with pytest.raises(UserError, match=r"threshold") as info:  # a testing setting's own error is left as it is
        predict.load_current(REPO / "configuration.txt", ["n_classes=5", "threshold=7"])
    assert "leave out" not in str(info.value)
    assert predict.load_current(REPO / "configuration.txt", ["tta_flips=false"])["testing settings"]["tta_flips"] is False


def test_predict_names_the_set_options_it_ignores():
    from lib.config import load_config
    from conftest import REPO

    run = load_config(REPO / "configuration.txt")
    overrides = ["base_filters=64", "tta_flips=false", "name=other", "seed=7", "prepared_dir=elsewhere",
                 "model.depth=3", "training_settings.batch_size=8"]
    current = load_config(REPO / "configuration.txt", overrides)
    # The model's width, the seed, the batch and another prepared_dir differ from the run's and are not used;
    # the depth is the run's own, tta_flips is a testing setting and the name finds the run.
    assert predict.ignored_overrides(overrides, current, run) == [
        "model.base_filters", "experiment.seed", "data_paths.prepared_dir", "training_settings.batch_size"]
    assert "data_paths.prepared_dir" not in predict.ignored_overrides(overrides, current, run,
                                                                      [("data paths", "prepared_dir")])


def test_the_output_key_describes_the_files_written_with_and_without_labels():
    names = ["a_probability.png", "a_compare.png", "a_overlay.png", "b_overlay.png", "metrics.json", "roc.png"]
    labelled = outputs.output_key(names, True)
    assert [line.split()[0] for line in labelled] == ["<image>_probability.png", "<image>_compare.png",
                                                        "<image>_overlay.png", "roc.png"]
    assert "image | label | prediction" in labelled[1] and "red: false positive" in labelled[2]
    assert outputs.output_key(names, False)[1].endswith("image | prediction")
    mixed = outputs.output_key(names, None)
    assert mixed[1].endswith("image | label | prediction (an image without a label: image | prediction)")
    assert mixed[0] == labelled[0]  # the same either way: said once
    assert outputs.output_key(["legend.png", "x_classes.png", "x_color.png"], True)[1].endswith("(legend.png)")
    assert outputs.output_key([], True) == []


def test_an_earlier_prediction_counts_as_the_same_only_with_its_settings_and_source_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    settings = {"window": 64, "label_offset": (-0.125, 0.0), "threshold": 0.5, "data": "dataset.h5",
                "made_from": {"best.keras": "a" * 32, "dataset.h5": "b" * 32}}
    (out / "metrics.json").write_text(json.dumps({"pooled": {}, "settings": settings}))
    (out / "a_probability.png").write_text("x")
    (out / "summary.txt").write_text("run: runs/drive\nimages: 1 (test)\n")
    (out / outputs.MANIFEST).write_text(f"{outputs.MANIFEST_HEADER}\na_probability.png\nmetrics.json\nsummary.txt\n")
    assert outputs.same_prediction(out, settings) == "run: runs/drive\nimages: 1 (test)\n"
    # Other settings are named, what is segmented and what it is made from aside: those have words of their own.
    other = {**settings, "threshold": 0.4, "data": "elsewhere.h5",
             "made_from": {"best.keras": "c" * 32, "dataset.h5": "b" * 32}}
    assert outputs.same_prediction(out, other) is None
    recorded = outputs.recorded_settings(out)
    assert outputs.setting_changes(recorded, other) == ["threshold 0.5 (now 0.4)"]
    assert outputs.remade_files(recorded, other) == ["best.keras"]
    with pytest.raises(UserError, match=r"made with other settings \(threshold 0\.5 \(now 0\.4\)\) made from "
                                        r"another best\.keras"):
        outputs.check_output_folder(out, False, None, changes=["threshold 0.5 (now 0.4)"], remade=["best.keras"])
    # A file of it deleted: there is work to do.
    (out / "a_probability.png").unlink()
    assert outputs.same_prediction(out, settings) is None
    (out / "a_probability.png").write_text("x")
    (out / "metrics.json").unlink()  # unlabelled images: nothing records the settings
    assert outputs.recorded_settings(out) is None and outputs.same_prediction(out, settings) is None

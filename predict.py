"""Segment full images with a trained run: probability and binary PNGs, comparisons and metrics."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from lib.alignment import offset_text, shift_map
from lib.atomic import new_folders_removed_if_empty, write_json, write_text
from lib.config import NAME_MAX, Config, add_config_arguments, load_config, load_run_config, parse_override
from lib.cells import cell_colours, closed_membranes, watershed_cells
from lib.errors import UserError, run_cli
from lib.fingerprint import file_digest
from lib.metrics import SCORE_KEYS, cldice, evaluate_images, isbi_scores, multiclass_scores, per_image_means
from lib.outputs import (check_output_folder, output_key, publish, recorded_settings, remade_files,
                         remove_abandoned, same_prediction, setting_changes, staging_prefix)
from lib.plots import (colorize, overlay, panels, save_confusion_matrix, save_legend, save_png, save_roc_pr,
                       side_by_side, stretched)
from lib.preprocessing import clahe_tile, preprocess
from lib.progress import listed, progress
from lib.readers import ClassSpec, Entry, image_stem, input_entries, is_image_name, output_stem, scale_sample
from lib.runs import CONFIG_NAME, FINISHED, find_run_folder, training_now
from lib.storage import (FILE_NAME, data_digest, image_shapes, iter_split, open_prepared, read_attr_json, read_classes,
                         split_size)
from lib.tiling import resize_map, window_step

MULTICLASS_IMAGE_KEYS = ("pixel_accuracy", "mean_iou", "mean_accuracy")


def load_run(run: Path, current: Config) -> tuple[Config, Any, dict[str, Any], dict[str, Any]]:
    """Load a run's saved configuration (with the current [testing settings]), model and preprocessing."""
    from lib.folding import for_this_machine, load_saved  # Keras: imported only once a run is found (see main)

    config = load_run_config(run / CONFIG_NAME, current, from_current=("testing settings",))
    testing = config["testing settings"]
    name = testing["checkpoint"]
    model_path = run / f"{name}.keras"
    if not model_path.is_file():
        raise UserError(f"model file {model_path} not found: training has not saved a {name} checkpoint "
                        "yet. Finish training (rerun train.py), or use --set testing_settings.checkpoint=last.")
    if not zipfile.is_zipfile(model_path):
        raise UserError(f"model file {model_path} is not a Keras model archive (it is truncated or corrupt). "
                        "Retrain, or use the other checkpoint with --set testing_settings.checkpoint=last (or best).")
    try:
        model = load_saved(model_path)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise UserError(f"model file {model_path} cannot be loaded ({type(exc).__name__}: {exc}). It is "
                        "corrupt or from an incompatible version: retrain, or use the other checkpoint with "
                        "--set testing_settings.checkpoint=last (or best).") from None
    # Folded outside the try: a folding error is a bug to see, not a corrupt file to report.
    model = for_this_machine(model)
    preprocessing = read_run_json(run / "preprocessing.json")
    info_path = run / "model_info.json"
    info = read_run_json(info_path) if info_path.exists() else {}
    return config, model, preprocessing, info


def saved_threshold(info: Mapping[str, Any], checkpoint: str) -> tuple[float, str]:
    """The binary threshold train.py chose for this checkpoint (threshold = auto), and where it came from."""
    if not info:
        return 0.5, "default: training has not finished, so no threshold was chosen yet"
    source = info.get("threshold_source", "default: no holdout images")
    thresholds = info.get("thresholds")
    if thresholds is not None and checkpoint in thresholds:
        return float(thresholds[checkpoint]), f"{source}, for {checkpoint}.keras"
    one_model = info.get("best_epoch") is not None and info.get("best_epoch") == info.get("epochs_run")
    if checkpoint == "best" or not source.startswith("best F1") or one_model:  # one model: its best epoch was last
        return float(info.get("threshold", 0.5)), source
    # Runs trained before thresholds were chosen per checkpoint chose one for best.keras only.
    return 0.5, "default: this run chose its threshold for best.keras only; give a number for last.keras"


def saved_offset(info: Mapping[str, Any]) -> tuple[list[float], str]:
    """The label offset train.py found for the run (label_offset = auto), and where it came from."""
    if not info:
        return [0.0, 0.0], "none: training has not finished, so no offset was found yet"
    if "label_offset" not in info:
        return [0.0, 0.0], "none: the run was trained before train.py found label offsets"
    return [float(v) for v in info["label_offset"]], f"found on {info['label_offset_source']}"


def read_run_json(path: Path) -> dict:
    """One of the JSON files train.py writes into a run folder, with a UserError when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: {path.parent} is not a complete run folder. Rerun train.py with "
                        "the same configuration, or copy the whole run folder.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is damaged ({exc}). Copy the run folder again, or rerun train.py "
                        "with --overwrite.") from None


RUN_LOOKUP = (("experiment", "name"), ("experiment", "runs_dir"))  # the settings predict.py finds the run by


def used_from_command_line(override: str, noted: Sequence[tuple[str, str]] = ()) -> bool:
    """Whether predict.py uses a --set option itself: a testing setting, one that finds the run, or a noted one."""
    section, key, _ = parse_override(override)
    return section == "testing settings" or (section, key) in (*RUN_LOOKUP, *noted)


def ignored_overrides(overrides: Sequence[str], current: Mapping[str, Any], run_config: Mapping[str, Any],
                      noted: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The --set options outside [testing settings] whose values differ from the run's: predict.py does not use
    them. Those that find the run, and the noted ones (said otherwise), are left out."""
    ignored = []
    for override in overrides:
        section, key, _ = parse_override(override)
        if not used_from_command_line(override, noted) and current[section][key] != run_config[section][key]:
            ignored.append(f"{section.replace(' ', '_')}.{key}")
    return list(dict.fromkeys(ignored))


def load_current(path: Path, overrides: Sequence[str]) -> Config:
    """The current configuration. When only --set options predict.py does not use (outside [testing settings], not
    finding the run) make it inconsistent, the message says so: predict.py takes those settings from the run."""
    try:
        return load_config(path, overrides)
    except UserError as error:
        used = [text for text in overrides if used_from_command_line(text, [("data paths", "prepared_dir")])]
        if len(used) == len(overrides):
            raise
        try:
            load_config(path, used)
        except UserError:
            raise error from None
        unused = ", ".join(text for text in overrides if text not in used)
        raise UserError(f"{error} predict.py takes these settings from the run, as it was trained, so leave out "
                        f"--set {unused}.") from None


def data_file(path: Path) -> Path:
    """The dataset.h5 that --data names: the file, or the one in the prepared folder; a folder without one (such
    as a dataset's own folder of images) is refused with what to give instead."""
    if not path.exists():
        raise UserError(f"--data {path} not found: give a folder prepared by prepare_datasets.py (its prepared_dir) "
                        f"or its {FILE_NAME}.")
    if path.suffix.lower() == ".h5":
        return path
    if path.is_dir() and not (path / FILE_NAME).is_file():
        images = any(is_image_name(child.name) for child in path.rglob("*"))
        raise UserError(f"--data {path} holds no {FILE_NAME}: --data takes a folder prepared by prepare_datasets.py "
                        "(its prepared_dir) or its dataset.h5."
                        + (" To segment the images in it, give them with --input; to score them against their "
                           "labels, prepare it first (prepare_datasets.py --set dataset_dir=... --set "
                           "prepared_dir=...)." if images else ""))
    return path / FILE_NAME


def preprocessing_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """'key their value (model: our value)' for each preprocessing setting of a dataset that differs from the run's."""
    return [f"{key} {theirs.get(key)} (model: {ours.get(key)})" for key in dict.fromkeys([*ours, *theirs])
            if theirs.get(key) != ours.get(key)]


def check_same_preparation(h5: h5py.File, path: Path, run: Path, preprocessing: dict, resize: float,
                           their_resize: float) -> None:
    """Refuse the run's own prepared dataset when it was prepared again, differently (preprocessing, or
    resize: the run's against their_resize, the file's), after training."""
    theirs = {"settings": read_attr_json(h5, "preprocessing"), "statistics": read_attr_json(h5, "statistics")}
    ours = {key: preprocessing[key] for key in theirs}
    tile = theirs["settings"].get("clahe_tile")
    if tile is not None and "clahe_tile" not in ours["settings"] and all(
            clahe_tile([shape]) == tile for shape in image_shapes(h5)):
        # Trained before the tile was recorded, when each image had its own: the same wherever that is the tile.
        del theirs["settings"]["clahe_tile"]
    if theirs != ours or their_resize != resize:
        differ = preprocessing_differences({**theirs["settings"], "resize": their_resize},
                                           {**ours["settings"], "resize": resize})
        raise UserError(f"{path} was prepared again since {run} was trained, with "
                        f"{'other preprocessing: ' + ', '.join(differ) if differ else 'other images'}. "
                        f"Retrain on it, or prepare the run's data again; to score it all the same, pass "
                        f"--data {path}.")


def check_same_labels(h5: h5py.File, path: Path, run: Path, config: Mapping[str, Any]) -> None:
    """Refuse a prepared dataset whose labels mean something else than the labels the run was trained on: binary
    against several classes, another class count, the other ISBI 2012 class as foreground, or another void label.
    Scores against them would be impossible, or silently inverted or off."""
    if str(h5.attrs["dataset"]) == "ISBI2012" and config["data paths"]["dataset"] == "ISBI2012":
        theirs = read_attr_json(h5, "fingerprint")["data attributes"].get("positive_class")
        ours = config["data attributes"]["positive_class"]
        if theirs is not None and theirs != ours:
            raise UserError(f"{path} was prepared with positive_class = {theirs}, but the model of {run} was "
                            f"trained to find the {ours}: its scores would be inverted. Prepare it with --set "
                            f"positive_class={ours} (in another prepared_dir, or with --overwrite).")
    stored, classes = read_classes(h5), ClassSpec.from_config(config)
    if (stored is None) != (classes is None):
        raise UserError(f"{path} is a {'binary' if classes else 'multi-class'} dataset, but the model of {run} is "
                        f"{'multi-class' if classes else 'binary'}: it cannot be scored on it.")
    if stored is None:
        return
    if stored["n_classes"] != classes.n_classes:
        raise UserError(f"{path} has {stored['n_classes']} classes, but the model of {run} predicts "
                        f"{classes.n_classes}: it cannot be scored on it.")
    if stored["ignore_index"] != classes.ignore_index:
        theirs = "has no void label" if stored["ignore_index"] is None else \
            f"leaves out label {stored['ignore_index']} as void"
        ours = -1 if classes.ignore_index is None else classes.ignore_index
        raise UserError(f"{path} {theirs}, but the model of {run} was trained with ignore_index = {ours}: its "
                        f"scores would count other pixels. Prepare it with --set ignore_index={ours}.")


def samples_from_input(entries: Sequence[Entry], scale: float, preprocessing: Mapping[str, Any]
                       ) -> Iterator[dict[str, Any]]:
    """Images given with --input, read one at a time and preprocessed as the model's training images were:
    resized by the run's [data paths] resize first. Their FOV stays at their own size, as do the outputs."""
    noted = False
    for entry in entries:
        sample = entry.load()
        if preprocessing["settings"]["channels"] == 3 and (sample.image.ndim == 2 or sample.image.shape[-1] == 1) \
                and not noted:
            noted = True
            print(f"\nnote: {sample.name} is gray, but the model was trained on colour images: its gray level goes "
                  "to all three channels, a kind of image the model has not seen (said once, for the first).")
        small = scale_sample(sample, scale)
        image = preprocess(small.image, small.fov, preprocessing["settings"], preprocessing["statistics"])
        yield {"name": sample.name, "image": image, "label": None, "fov": sample.fov}


def at_model_scale(testing: dict, model_scale: float, source_scale: float) -> dict:
    """Testing settings whose zoom also brings images read at source_scale to the scale the model was
    trained at ([data paths] resize), so a model trained at half size never sees full-size images."""
    factor = model_scale / source_scale
    if factor == 1.0:
        return testing
    zoom = testing["zoom"] * factor
    print(f"note: the model was trained on images resized by {model_scale:g} and these are at {source_scale:g} "
          f"of their original size: they are segmented at {zoom:g} times their size, and the maps and scores "
          "are at their own size.")
    return {**testing, "zoom": zoom}


def check_other_dataset(h5: h5py.File, path: Path, run: Path, preprocessing: dict) -> None:
    """Refuse a prepared dataset the run's model cannot read; note preprocessing that differs."""
    theirs, ours = read_attr_json(h5, "preprocessing"), preprocessing["settings"]
    if theirs["channels"] != ours["channels"]:
        raise UserError(f"{path} holds {theirs['channels']}-channel images, but the model of {run} was trained on "
                        f"{ours['channels']}-channel images. Prepare that dataset again with "
                        f"--set channels={ours['channels']} (and the same gray_mode).")
    # Each dataset's CLAHE tile follows its own training images: not a setting to note.
    differ = preprocessing_differences(*({key: value for key, value in settings.items() if key != "clahe_tile"}
                                         for settings in (theirs, ours)))
    if differ:
        print(f"note: {path} was prepared with other preprocessing than the model's training data: "
              f"{', '.join(differ)}. Its images are segmented as prepared, with its own settings (each dataset is "
              "normalized with its own training-split statistics); to match the model's, prepare it again with "
              "those values (--set).")


def extra_scores(prob: np.ndarray, label: np.ndarray, fov: np.ndarray, threshold: float, dataset: str, config: Config,
                 cells: np.ndarray | None = None) -> dict[str, float | None]:
    """Task-specific scores of one image: clDice for vessels; pixel and adapted Rand errors for ISBI."""
    predicted = prob >= threshold
    if dataset == "ISBI2012":
        return isbi_scores(predicted, label, fov, membrane_positive(config), cells)
    return {"cldice": cldice(predicted, label, fov)}


def membrane_positive(config: Config) -> bool:
    """Whether the model's foreground (probability) is the membrane, as for ISBI 2012 by default."""
    return config["data attributes"]["positive_class"] == "membrane"


NO_LABELS = "no labels: metrics not computed"


def unscored(unlabelled: int, total: int) -> str:
    """The summary line when metrics are left out because some or all images have no label."""
    if unlabelled == total:
        return NO_LABELS
    return (f"{unlabelled} of {total} images have no label: metrics not computed, since scores over only the "
            "labelled ones would not describe the split (give every image a label, or score a split that has them)")


def undefined_note(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """A summary line naming the per-image scores that some images leave undefined (an image without foreground
    labelled or predicted has no F1; one without both classes no AUC), which their means leave out."""
    by_images: dict[tuple[str, ...], list[str]] = {}  # the images left out -> the keys that leave them out
    for key in keys:
        names = tuple(row["name"] for row in rows if row[key] is None)
        if names:
            by_images.setdefault(names, []).append(key)
    parts = [f"{', '.join(group)} of {listed(names)}" for names, group in by_images.items()]
    return [f"left out of the per-image means (in metrics.json), as undefined: {'; '.join(parts)} (no foreground "
            "labelled or predicted, or nothing predicted for precision, or one class labelled for AUC)"] if parts else []


def score(value: float | None) -> str:
    """A score for the summary lines: four decimals, or n/a where it is undefined (e.g. AUC without vessels)."""
    return "n/a" if value is None else f"{value:.4f}"


def per_image_csv(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """CSV text of per-image scores: the name, then each key to six decimals, empty where undefined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", *keys])
    for row in rows:
        writer.writerow([row["name"], *("" if row[k] is None else f"{row[k]:.6f}" for k in keys)])
    return buffer.getvalue()


def predict_multiclass(infer: Callable[[np.ndarray], np.ndarray], samples: Iterable[dict[str, Any]], count: int,
                       classes: ClassSpec, out: Path, settings: dict) -> list[str]:
    """Class maps, colourized maps, comparisons, legend; with labels metrics.json, per_image.csv and the
    confusion matrix (void pixels and pixels outside the FOV left out). infer maps a preprocessed image to
    class probabilities; maps are written at the size of the sample's FOV. Returns the summary lines."""
    palette = classes.display_palette()
    void = classes.ignore_index is not None
    save_legend([*classes.names, *(["void"] if void else [])], palette[: classes.n_classes + void], out / "legend.png")
    per_image, pooled_true, pooled_pred, unlabelled = [], [], [], 0
    for s in progress(samples, count, "predict"):
        predicted = np.argmax(resize_map(infer(s["image"]), s["fov"].shape), axis=-1).astype(np.uint8)
        # Outside the FOV nothing is predicted: void, or 255 where the classes have no void value.
        predicted[~s["fov"]] = classes.ignore_index if void else 255
        stem = output_stem(s["name"])
        coloured = colorize(classes.display_map(predicted), palette)
        save_png(predicted, out / f"{stem}_classes.png")   # class indices, like the annotations
        save_png(coloured, out / f"{stem}_color.png")
        shown = [resize_map(stretched(s["image"]), s["fov"].shape)]
        if s["label"] is not None:
            shown.append(colorize(classes.display_map(s["label"]), palette))
        save_png(panels([*shown, coloured]), out / f"{stem}_compare.png")
        if s["label"] is None:
            unlabelled += 1
            continue
        keep = s["fov"] if classes.ignore_index is None else s["fov"] & (s["label"] != classes.ignore_index)
        pooled_true.append(s["label"][keep])
        pooled_pred.append(predicted[keep])
        row = {"name": s["name"], **{key: None for key in MULTICLASS_IMAGE_KEYS}}
        if keep.any():
            scores = multiclass_scores(predicted[keep], s["label"][keep], classes.n_classes, None, classes.names)
            row.update({key: scores[key] for key in MULTICLASS_IMAGE_KEYS})
        per_image.append(row)
    if not per_image or unlabelled:
        return [unscored(unlabelled, len(per_image) + unlabelled)]
    if not sum(len(t) for t in pooled_true):
        return [f"every labelled pixel inside the FOV is void (ignore_index = {classes.ignore_index}): "
                "metrics not computed"]

    pooled = multiclass_scores(np.concatenate(pooled_pred), np.concatenate(pooled_true), classes.n_classes,
                               None, classes.names)
    pooled["ignore_index"] = classes.ignore_index
    means, sds = per_image_means(per_image, MULTICLASS_IMAGE_KEYS)
    write_json(out / "metrics.json", {"pooled": pooled, "per_image": per_image, "per_image_mean": means,
                                      "per_image_sd": sds, "settings": settings})
    write_text(out / "per_image.csv", per_image_csv(per_image, MULTICLASS_IMAGE_KEYS))
    save_confusion_matrix(np.array(pooled["confusion_matrix"]), list(classes.names), out / "confusion_matrix.png")
    iou = ", ".join(f"{name} {score(v['iou'])}"
                    for name, v in pooled["per_class"].items())
    return [f"pooled ({pooled['n_pixels']} pixels{', void left out' if void else ''}):  mean IoU "
            f"{pooled['mean_iou']:.4f}  pixel accuracy {pooled['pixel_accuracy']:.4f}  mean class accuracy "
            f"{pooled['mean_accuracy']:.4f}  mean Dice {pooled['mean_dice']:.4f}",
            f"per-class IoU: {iou}"]


def predict_binary(infer: Callable[[np.ndarray], np.ndarray], samples: Iterable[dict[str, Any]], count: int,
                   threshold: float, out: Path, settings: dict, dataset: str, config: Config) -> list[str]:
    """Probability, binary, comparison and overlay PNGs; with labels metrics.json, per_image.csv and
    ROC / PR curves (pixels inside the FOV). infer maps a preprocessed image to H x W x 1 probabilities;
    maps are written at the size of the sample's FOV. Keeps only FOV pixels between images. Returns summary
    lines."""
    names, fov_probs, fov_labels, extra, unlabelled = [], [], [], [], 0
    for s in progress(samples, count, "predict"):
        prob = resize_map(infer(s["image"]), s["fov"].shape)[..., 0]
        prob = np.where(s["fov"], prob, 0.0)
        stem = output_stem(s["name"])
        cells = None
        if dataset == "ISBI2012" and settings["watershed_seed"] > 0:
            membrane = membrane_positive(config)
            cells = watershed_cells(prob if membrane else 1.0 - prob, settings["watershed_seed"])
            save_png(cell_colours(cells), out / f"{stem}_cells.png")
            if settings["close_membranes"]:
                prob = np.where(s["fov"], closed_membranes(prob, cells, membrane), 0.0)
        binary = prob >= threshold
        # Stretched: a preprocessed image need not lie in [0, 1].
        shown = resize_map(stretched(s["image"]), s["fov"].shape)
        save_png(prob, out / f"{stem}_probability.png")
        save_png(binary, out / f"{stem}_binary.png")
        save_png(side_by_side(shown, s["label"], binary), out / f"{stem}_compare.png")
        save_png(overlay(shown, binary, s["label"]), out / f"{stem}_overlay.png")
        if s["label"] is None:
            unlabelled += 1
            continue
        names.append(s["name"])
        fov_probs.append(prob[s["fov"]])
        fov_labels.append(s["label"][s["fov"]])
        extra.append(extra_scores(prob, s["label"], s["fov"], threshold, dataset, config, cells))
    if not names or unlabelled:
        return [unscored(unlabelled, len(names) + unlabelled)]

    results = evaluate_images(fov_probs, fov_labels, None, threshold=threshold, names=names)
    for row, values in zip(results["per_image"], extra):
        row.update(values)
    mean, sd = per_image_means(results["per_image"], list(extra[0]))
    results["per_image_mean"].update(mean)
    results["per_image_sd"].update(sd)
    results["settings"] = settings
    write_json(out / "metrics.json", results)
    write_text(out / "per_image.csv", per_image_csv(results["per_image"], [*SCORE_KEYS, *extra[0]]))
    pooled_labels = np.concatenate(fov_labels)
    curves = pooled_labels.any() and not pooled_labels.all()  # both classes, else the curves are undefined
    if curves:
        save_roc_pr({settings["split"]: (pooled_labels, np.concatenate(fov_probs))}, out / "roc.png",
                    out / "pr.png", threshold)
    pooled, mean, sd = results["pooled"], results["per_image_mean"], results["per_image_sd"]
    shown = ("f1", "auc_roc", *extra[0])
    return ["pooled inside the FOV:  " + "  ".join(f"{k} {score(pooled[k])}" for k in SCORE_KEYS),
            "per image (mean ± sd):  " + "  ".join(f"{k} {score(mean[k])}±{score(sd[k])}" for k in shown),
            *undefined_note(results["per_image"], [*SCORE_KEYS, *extra[0]]),
            *([] if curves else ["no ROC / PR curves: the labels inside the FOV are all of one class"])]


def main() -> int:
    """Segment and score a prepared split, another prepared dataset or --input images with a trained run."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--run", help="run folder to use (default: <runs_dir>/<name> from the configuration)")
    parser.add_argument("--split", choices=("test", "val", "train"),
                        help="prepared split to segment and score (default: test, else val)")
    parser.add_argument("--input", type=Path, help="segment this image file or folder instead of a prepared split")
    parser.add_argument("--mask", type=Path, help="with --input: FOV mask file or folder (matched by file stem)")
    parser.add_argument("--data", type=Path, help="segment and score a split of another prepared dataset (its "
                        "prepared folder or dataset.h5), e.g. STARE with a model trained on DRIVE; "
                        "[testing settings] zoom matches vessel widths")
    parser.add_argument("--output", type=Path, help="output folder (default: <run>/predictions/ and <split>, "
                        "input_<folder or file name> for --input, <dataset>_<split> for --data, or "
                        "<dataset>_<prepared folder>_<split> when the folder is named otherwise)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier predictions in the output folder")
    args = parser.parse_args()
    if args.input and args.data:
        parser.error("give --input (image files) or --data (a prepared dataset), not both")
    if args.input and args.split:
        parser.error("--split chooses a prepared split; with --input the given images are segmented")
    if args.mask and not args.input:
        parser.error("--mask gives the FOV masks of --input images; prepared splits have their own")

    data = data_file(args.data) if args.data else None  # a raw dataset folder is answered before TensorFlow starts
    # Model, preprocessing and data paths come from the run; inference choices from the current config.
    current = load_current(args.config, args.overrides)
    run = find_run_folder(current, args.run)
    # Imported only now because TensorFlow takes seconds to start: --help and errors in the configuration or
    # run name answer at once.
    from lib.start_up import import_keras
    import_keras()
    from lib.folding import compute_dtype
    from lib.inference import predict_image, resolve_tta, tta_flips

    config, model, preprocessing, info = load_run(run, current)
    other_data = current["data paths"]["prepared_dir"] != config["data paths"]["prepared_dir"]
    # --run alone, with the default configuration file: the user named no prepared_dir, so none is ignored.
    named = (args.run is None or args.config != parser.get_default("config")
             or any(parse_override(item)[1] == "prepared_dir" for item in args.overrides))
    if other_data and named and not (args.input or args.data):
        print(f"note: predict.py scores the data the run was trained with, {config['data paths']['prepared_dir']}, "
              f"not {current['data paths']['prepared_dir']}; use --data to score another prepared dataset.")
    noted = [] if args.input or args.data else [("data paths", "prepared_dir")]
    ignored = ignored_overrides(args.overrides, current, config, noted)
    if ignored:
        print(f"note: --set {', '.join(ignored)} ignored: predict.py takes only [testing settings] from the command "
              f"line and configuration, and the rest from the run ({run / CONFIG_NAME}), as it was trained.")
    flips = config["augmentation"]["flips"]  # TTA averages only the flips the model was trained with
    testing, depth = resolve_tta(config["testing settings"], model, flips), config["model"]["depth"]
    if flips == "none" and tta_flips(testing, flips):
        print(f"note: tta_flips = {testing['tta_flips']} averages flipped views, which this model, trained with "
              "[augmentation] flips = none, has not seen; --set tta_flips=false leaves them out.")
    step = window_step(testing["stride"], 2 ** depth)
    if step != testing["stride"]:
        # Recorded as used: the summary and metrics.json then say how the windows were laid.
        print(f"note: stride = {testing['stride']} is not a multiple of 2^depth = {2 ** depth}, where windows must "
              f"start: they step by {step}.")
        testing = {**testing, "stride": step}
    threshold = testing["threshold"]
    classes = ClassSpec.from_config(config)
    trainer = training_now(run)
    if trainer:
        print(f"warning: {run} is being trained now by {trainer}, so its {testing['checkpoint']}.keras may still "
              "change; this uses it as it is now.")
    elif not (run / FINISHED).exists():
        print(f"warning: {run} has not finished training (no {FINISHED} in it), so this uses its "
              f"{testing['checkpoint']}.keras as it is now. Rerun train.py with the run's settings to finish it.")
    threshold_source = None
    if threshold == "auto" and classes is None:
        threshold, threshold_source = saved_threshold(info, testing["checkpoint"])
        print(f"Threshold {threshold:.3f} ({threshold_source})")
    offset, offset_source = testing["label_offset"], "given"
    if classes is not None:
        if offset != "auto" and any(offset):
            print("note: label_offset moves binary probability maps only; class maps are not moved.")
        offset, offset_source = [0.0, 0.0], "none: class maps take the argmax"
    elif offset == "auto" and args.data:
        # The offset is a habit of the run's annotators; another dataset's labels have their own.
        offset, offset_source = [0.0, 0.0], "none: --data may hold labels other than the run's"
        print("note: label_offset = auto moves no maps for --data: the offset train.py found belongs to the labels "
              "the run was trained on. Give two numbers (e.g. --set label_offset=-0.5,0) to move them.")
    elif offset == "auto":
        offset, offset_source = saved_offset(info)
    if threshold_source and "label_offset" in info and list(offset) != list(info["label_offset"]):
        print(f"note: the saved threshold was chosen on maps moved by the run's label offset "
              f"({offset_text(info['label_offset'])}); these maps are moved by {offset_text(offset)}.")

    with contextlib.ExitStack() as stack:
        if args.input:
            # Listed, paired and opened now: a missing mask or an unreadable file stops the run before any work.
            entries = input_entries(args.input, args.mask)
            # Read one at a time, as they are segmented, at the scale of the model's training images.
            source_scale = config["data paths"]["resize"]
            if source_scale != 1.0:
                print(f"note: the model was trained on images resized by {source_scale:g}: each image is resized so "
                      "before it is preprocessed and segmented, and its maps are at its own size.")
            samples = samples_from_input(entries, source_scale, preprocessing)
            # A folder's whole name (scans.2024-01 and scans.2024-02 differ), a file's without its extension.
            name = Path(os.path.abspath(args.input)).name
            count, where = len(entries), f"input_{image_stem(name) if args.input.is_file() else name}"
            dataset = preprocessing["dataset"]
        else:
            data_path = data or Path(config["data paths"]["prepared_dir"]) / FILE_NAME
            h5 = stack.enter_context(open_prepared(data_path))
            source_scale = float(read_attr_json(h5, "fingerprint")["data paths"].get("resize", 1.0))
            check_same_labels(h5, data_path, run, config)
            if args.data:
                check_other_dataset(h5, data_path, run, preprocessing)
            else:
                check_same_preparation(h5, data_path, run, preprocessing, config["data paths"]["resize"],
                                       source_scale)
            dataset = str(h5.attrs["dataset"])
            split = args.split or ("test" if split_size(h5, "test") else "val")
            count = split_size(h5, split)
            if not count:
                what = (f"no '{split}' images" if args.split else
                        "neither test images nor holdout images (the val split) to segment and score")
                raise UserError(f"{data_path} has {what}. Choose a split it has (--split train segments the "
                                "training images), hold out training images with [data paths] holdout_ids and "
                                "rerun prepare_datasets.py (they become --split val), or segment files with --input.")
            samples = iter_split(h5, split)  # one image in memory at a time (HRF images are large)
            # Named by the prepared folder too: two prepared copies of one dataset keep their results apart.
            folder = data_path.resolve().parent.name
            where = (f"{dataset}_{split}" if folder == dataset else f"{dataset}_{folder}_{split}") if args.data else split
        testing = at_model_scale(testing, config["data paths"]["resize"], source_scale)
        out = args.output or run / "predictions" / where
        if len(out.name.encode()) > NAME_MAX:
            raise UserError(f"the output folder's name, {out.name[:40]}..., would be {len(out.name.encode())} bytes "
                            f"long, more than the {NAME_MAX} file systems take: choose one with --output.")
        # What is segmented, recorded in summary.txt and metrics.json: the --input path, or the dataset.h5.
        kind, segmented = ("input", args.input) if args.input else ("data", data_path)
        source, source_line = {kind: str(segmented.resolve())}, f"{kind}: {segmented.resolve()}"
        if args.mask:
            source["mask"] = str(args.mask.resolve())
        # The views TTA averaged, as printed above (False, "all", "horizontal" or "rotations").
        # The threshold used, not the setting ("auto"); class maps take the argmax and use none.
        settings = {**{k: v for k, v in testing.items() if k != "threshold"},
                    "tta_flips": tta_flips(testing, flips) or False, "label_offset": offset,
                    "label_offset_source": offset_source, "run": str(run), "split": where, **source}
        if classes is None:
            settings.update(threshold=threshold, **({"threshold_source": threshold_source} if threshold_source else {}))
        # Which checkpoint and data, by content: a rerun of the same command has nothing to do only with both.
        checkpoint = run / f"{testing['checkpoint']}.keras"
        settings["made_from"] = {checkpoint.name: file_digest(checkpoint),
                                 **({} if args.input else {data_path.name: data_digest(h5)})}
        done = None if args.overwrite else same_prediction(out, settings)
        if done is not None:
            # Rerunning a finished pipeline's commands (prepare, train, predict) is not an error.
            print(f"{out} already holds these predictions (the same images and settings, made from the same "
                  f"{' and '.join(settings['made_from'])}); nothing to do. --overwrite makes them again.\n\n{done}")
            return 0
        recorded = recorded_settings(out) or {}
        stack.enter_context(new_folders_removed_if_empty(out))  # a run that fails leaves no empty folders behind
        earlier = check_output_folder(out, args.overwrite, args.input, source_line,
                                      setting_changes(recorded, settings) if recorded else (),
                                      remade_files(recorded, settings) if recorded else (),
                                      Path(config["data paths"]["dataset_dir"]))
        # Written into a hidden folder and moved into out when all is done: a run that fails or is interrupted
        # leaves out as it was.
        abandoned = remove_abandoned(out)
        if abandoned:
            print(f"note: removed {', '.join(abandoned)} from {out}: the unfinished outputs of a prediction that "
                  "was killed.")
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=staging_prefix(), dir=out)))
        header = [f"run: {run}", f"images: {count} ({where})", source_line,
                  *([f"mask: {source['mask']}"] if args.mask else [])]
        windows = (f"window {testing['window']}, stride {testing['stride']}, blend {testing['blend']}, "
                   f"tta_flips {tta_flips(testing, flips) or False}, "
                   f"tta_scales {', '.join(map(format, testing['tta_scales']))}, "
                   f"mirror_margin {testing['mirror_margin']}, zoom {testing['zoom']:g}, "
                   f"compute dtype {compute_dtype(model)}")

        def infer(image: np.ndarray) -> np.ndarray:
            return shift_map(predict_image(model, image, testing, depth, flips), offset)

        if classes is not None:
            lines = [*header, f"classes: {classes.n_classes} ({', '.join(classes.names)}); ignore index "
                     f"{'none' if classes.ignore_index is None else classes.ignore_index}", windows]
            lines += predict_multiclass(infer, samples, count, classes, staging, settings)
        else:
            lines = [*header, f"threshold: {threshold:.3f}",
                     f"label offset: {offset_text(offset)} ({offset_source})", windows]
            lines += predict_binary(infer, samples, count, threshold, staging, settings, dataset, config)
        written = [path.name for path in staging.iterdir()]
        labelled = True if "metrics.json" in written else False if NO_LABELS in lines else None
        summary = "\n".join([*lines, f"outputs: {out}", *output_key(written, labelled)]) + "\n"
        write_text(staging / "summary.txt", summary)
        removed = publish(staging, out, earlier)
    if removed:
        print(f"Replaced the {removed} files of the earlier predictions in {out} (--overwrite).")
    print("\n" + summary)
    return 0


if __name__ == "__main__":
    run_cli(main)

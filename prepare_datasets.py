"""Turn a dataset in its original layout into dataset.h5: preprocessed full images and training patches.

Images are read and preprocessed one at a time and kept in anonymous scratch files beside the
output (disk, not memory), so large releases such as HRF fit in a small machine.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from PIL import Image

from lib.atomic import atomic_path, new_folders_removed_if_empty
from lib.config import Config, add_config_arguments, load_config
from lib.errors import UserError, run_cli
from lib.fingerprint import (FOV_FOLDER, describe_differences, fingerprint, prepare_outputs, setting_differences,
                             source_changes, source_files)
from lib.locks import exclusive_lock
from lib.patches import (batches_per_pass, check_fits, extract_patches, iter_chunks, sample_centres,
                         validation_split)
from lib.preprocessing import clahe_tile, fit_statistics, preprocess, preprocessing_settings, select_channels
from lib.progress import listed, plural, progress
from lib.readers import (CONFIGURED_SPLIT, DERIVED_FOV, ClassSpec, Entry, LabelError, Sample, describe_ids,
                         fixed_validation, images_in_subfolders, load_sample, output_stem, read_dataset, resolve_ids)
from lib.sample_data import write_drive_sample
from lib.storage import (FILE_NAME, class_statistics, open_prepared, read_attr_json, read_source_files,
                         write_prepared)

SAMPLE_TRAIN, SAMPLE_TEST = 10, 4  # images in the generated demo dataset (DRIVE size)
EXTRACT_BLOCK = 4096  # patches cut and written at a time: bounds memory whatever N_subimgs is
MAX_COVERAGE = 1000  # times each training pixel is in a patch, on average, beyond which prepare notes it


def stale_reason(path: Path, wanted: Mapping[str, Any], root: Path) -> str | None:
    """Why an existing dataset.h5 does not match the settings and source files now; None when it does."""
    try:
        with open_prepared(path) as h5:
            saved = read_attr_json(h5, "fingerprint")
            saved_files = read_source_files(h5)
    except (UserError, KeyError):
        return "is unfinished or from another version"
    differences = setting_differences(saved, wanted)
    if differences:
        return f"was prepared with other settings: {describe_differences(differences)}"
    changes = source_changes(saved_files, root, path)
    if changes:
        return f"was prepared before these files in {root} changed: {listed(changes, 10)}"
    return None


def load_checked(entry: Entry, scale: float, bad_labels: list[LabelError]) -> Sample | None:
    """Load an entry; a label or mask with values or colours it cannot use is recorded in bad_labels (None
    returned), so that one message can list every such file. An empty field of view stops with a UserError."""
    try:
        sample = load_sample(entry, scale)
    except LabelError as error:
        bad_labels.append(error)
        return None
    if not sample.fov.any():
        # A mask file that is empty is refused by name when read; this one was derived from the image.
        raise UserError(f"the field of view derived from image {sample.name} (its bright disc) is empty. Check the "
                        "image, or give field-of-view masks.")
    return sample


def raise_bad_labels(bad_labels: Sequence[LabelError], split: str) -> None:
    """One UserError naming every label or mask file of a split with values or colours it cannot use."""
    if bad_labels:
        shown = "\n  ".join(f"{e.path}: {e.problem}" for e in bad_labels[:20])
        more = f"\n  ... and {len(bad_labels) - 20} more" if len(bad_labels) > 20 else ""
        fixes = "\n".join(dict.fromkeys(e.fix for e in bad_labels))  # each different fix once, in order
        raise UserError(f"{len(bad_labels)} {split} label or mask file(s) cannot be used:\n  "
                        f"{shown}{more}\n{fixes}")


def spill(array: np.ndarray, folder: Path) -> np.ndarray:
    """Copy an array into an anonymous scratch file in folder; the copy lives on disk and vanishes at exit."""
    with tempfile.TemporaryFile(dir=folder) as handle:
        copy = np.memmap(handle, dtype=array.dtype, mode="w+", shape=array.shape)
    copy[...] = array
    return copy


def save_fov(sample: Sample, folder: Path | None) -> None:
    """Write a sample's (derived) FOV as a 0/255 PNG into folder; None: nothing to save."""
    if folder is not None:
        with atomic_path(folder / f"{output_stem(sample.name)}_fov.png") as tmp:
            Image.fromarray(sample.fov.astype(np.uint8) * 255).save(tmp, format="PNG")


def read_training(entries: Sequence[Entry], scale: float, folder: Path, fov_folder: Path | None,
                  patch_size: int) -> list[dict[str, Any]]:
    """Read the training images one at a time into scratch files: raw image, label and FOV."""
    rows = []
    bad_labels: list[LabelError] = []
    for entry in progress(entries, len(entries), "read       train"):
        sample = load_checked(entry, scale, bad_labels)
        if sample is None:
            continue
        check_fits(*sample.image.shape[:2], patch_size, f"training image {sample.name}")  # before reading the rest
        save_fov(sample, fov_folder)
        if sample.label is None:
            raise UserError(f"training image {sample.name} has no label; every training image needs one.")
        rows.append({"name": sample.name, "id": sample.id, "raw": spill(sample.image, folder),
                     "label": spill(sample.label, folder), "fov": spill(sample.fov, folder),
                     "turned": sample.turned_unconfirmed})
    raise_bad_labels(bad_labels, "training")
    return rows


def note_gray_images(rows: Sequence[Mapping[str, Any]], channels: int) -> None:
    """Say which training images are gray when colour is kept: their gray level fills all three channels."""
    gray = [r["name"] for r in rows if r["raw"].ndim == 2 or r["raw"].shape[-1] == 1]
    if channels != 3 or not gray:
        return
    if len(gray) == len(rows):
        print("  note: every training image is gray, but channels = 3 keeps colour: each gray level fills three "
              "channels. --set channels=1 gives the model the same information.")
    else:
        print(f"  note: {plural(len(gray), 'training image')} of {len(rows)} {'is' if len(gray) == 1 else 'are'} "
              f"gray ({listed(gray, 5)}) among colour ones: {'its' if len(gray) == 1 else 'their'} gray level fills "
              "all three channels. A mix is usually a mistake: convert the images alike, or use --set channels=1.")


def check_foreground(rows: Sequence[Mapping[str, Any]], root: Path) -> None:
    """Refuse binary training labels with no foreground, or only foreground, inside the field of view."""
    inside = sum(int(r["fov"].sum()) for r in rows)
    foreground = sum(int(r["label"][r["fov"]].sum()) for r in rows)
    names = listed((r["name"] for r in rows), 3)
    if foreground == 0:
        raise UserError(f"no training label in {root} marks any foreground inside the field of view (images "
                        f"{names}): there is nothing to learn. Foreground must be 255 (or 1) on 0; check that "
                        "the labels are the right files and not inverted or blank.")
    if foreground == inside:
        raise UserError(f"every pixel inside the field of view is foreground in every training label in {root} "
                        f"(images {names}): there is nothing to learn. Foreground must be 255 (or 1) on a "
                        "background of 0; check that the labels are not inverted or blank white.")


def preprocess_training(rows: list[dict[str, Any]], settings: Mapping[str, Any], stats: Mapping[str, Any],
                        folder: Path) -> None:
    """Replace each training row's raw image by its preprocessed one (in place, one at a time)."""
    for row in progress(rows, len(rows), "preprocess train"):
        row["image"] = spill(preprocess(row.pop("raw"), row["fov"], settings, stats), folder)


def prepare_split(entries: Sequence[Entry], split: str, settings: Mapping[str, Any], stats: Mapping[str, Any],
                  scale: float, folder: Path, fov_folder: Path | None) -> list[dict[str, Any]]:
    """Read and preprocess a held-out or test split one image at a time, into scratch files."""
    rows = []
    bad_labels: list[LabelError] = []
    for entry in progress(entries, len(entries), f"preprocess {split:5s}"):
        sample = load_checked(entry, scale, bad_labels)
        if sample is None:
            continue
        save_fov(sample, fov_folder)
        rows.append({"name": sample.name, "id": sample.id,
                     "image": spill(preprocess(sample.image, sample.fov, settings, stats), folder),
                     "label": None if sample.label is None else spill(sample.label, folder),
                     "fov": spill(sample.fov, folder), "turned": sample.turned_unconfirmed})
    raise_bad_labels(bad_labels, split)
    return rows


def main() -> int:
    """Read the configured dataset, preprocess it and write dataset.h5 with its training patches; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset.h5 prepared with other settings")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    out_path = Path(config["data paths"]["prepared_dir"]) / FILE_NAME
    # A prepare that fails or is interrupted leaves no empty folders of its own behind.
    with new_folders_removed_if_empty(out_path.parent):
        # Held from the first look at dataset.h5 to its rename: a second prepare of the same file is refused.
        with exclusive_lock(out_path.parent / f".{out_path.name}.lock",
                            f"another prepare_datasets.py ({{holder}}) is preparing {out_path} now. Wait for it to "
                            "finish, or set [data paths] prepared_dir to another folder."):
            return prepare(config, out_path, args.overwrite)


def prepare(config: Config, out_path: Path, overwrite: bool) -> int:
    """Read, check and preprocess the dataset config names and write out_path (unless it is up to date, or
    differs and overwrite is not given); return the exit status."""
    paths = config["data paths"]
    wanted = fingerprint(config)

    root = Path(paths["dataset_dir"])
    # The lock held by main() means no other run is writing these: they were left by a killed one.
    for stale in out_path.parent.glob(f".{out_path.stem}.*.tmp{out_path.suffix}"):
        print(f"Removing {stale}, left by an interrupted prepare_datasets.py run.")
        stale.unlink()
    if out_path.exists() and not overwrite:
        reason = stale_reason(out_path, wanted, root)
        if reason is None:
            print(f"{out_path} is already prepared with these settings and files; nothing to do.")
            return 0
        raise UserError(f"{out_path} exists and {reason}. Rerun with --overwrite to replace it, or set "
                        "[data paths] prepared_dir to another folder to keep both.")
    seed = config["experiment"]["seed"]
    if paths["dataset"] == "sample" and not root.exists():
        print(f"Generating the sample dataset (DRIVE layout, {SAMPLE_TRAIN} training and {SAMPLE_TEST} "
              f"test images) in {root} ...")
        write_drive_sample(root, n_train=SAMPLE_TRAIN, n_test=SAMPLE_TEST, seed=seed)

    # Before reading: a later edit makes the file stale. The digests tell a later touch from an edit.
    files = source_files(root, exclude=prepare_outputs(out_path), digests=True)
    classes = ClassSpec.from_config(config)
    train, test = read_dataset(paths["dataset"], root, config["data attributes"]["positive_class"],
                               paths["test_ids"], paths["test_fraction"], seed, classes)
    if not train:
        nested = images_in_subfolders(root)
        where = (f" Its subfolders hold images ({nested}): {paths['dataset']} expects the layout of its release, "
                 "as data/README.md describes it; move the files there." if nested else "")
        raise UserError(f"no training images found in {root}.{where}")
    held = resolve_ids(paths["holdout_ids"], train, "holdout_ids", "training")
    # A release's own validation split (CamVid's val/) and held-out training images form the 'val' split.
    val = fixed_validation(paths["dataset"], root, classes) + [e for e in train if e.id in held]
    train = [e for e in train if e.id not in held]
    if not train:
        raise UserError("[data paths] holdout_ids holds out every training image; leave some for training.")
    if paths["dataset"] in CONFIGURED_SPLIT and test:
        print(f"Test split ({plural(len(test), 'image')}): ids {describe_ids(test, limit=40)}")
    if held:
        # Ids of folders may count files rather than name them: say which images are held out.
        print(f"Held out of training ({plural(len(held), 'image')}): ids "
              f"{describe_ids([e for e in val if e.id in held], limit=40)}")

    settings = preprocessing_settings(config)
    scale = paths["resize"]
    scratch = out_path.parent
    scratch.mkdir(parents=True, exist_ok=True)
    fov_folder = out_path.parent / FOV_FOLDER if paths["dataset"] in DERIVED_FOV else None
    if fov_folder is not None:
        print(f"{paths['dataset']} has no FOV masks: deriving them from the red channel; saved in {fov_folder}")
        fov_folder.mkdir(exist_ok=True)
    train_rows = read_training(train, scale, scratch, fov_folder, config["data attributes"]["patch_size"])
    note_gray_images(train_rows, settings["channels"])
    if settings["clahe"]:
        settings["clahe_tile"] = clahe_tile([row["fov"].shape for row in train_rows])
    if classes is None:
        check_foreground(train_rows, root)
    stats = fit_statistics((select_channels(r["raw"], settings["channels"], settings["gray_mode"])
                            for r in train_rows), [r["fov"] for r in train_rows])
    preprocess_training(train_rows, settings, stats, scratch)
    splits = {"train": train_rows,
              "val": prepare_split(val, "val", settings, stats, scale, scratch, fov_folder),
              "test": prepare_split(test, "test", settings, stats, scale, scratch, fov_folder)}

    size = config["data attributes"]["patch_size"]
    n = config["training settings"]["N_subimgs"]
    rng = np.random.default_rng(seed)
    positions = sample_centres([r["fov"] for r in train_rows], n, size,
                               config["training settings"]["inside_FOV"], rng, [r["name"] for r in train_rows],
                               [r["label"] for r in train_rows], config["training settings"]["foreground_fraction"],
                               (1,) if classes is None else range(classes.n_classes))
    train_images = [r["image"] for r in train_rows]
    train_labels = [r["label"] for r in train_rows]

    def fill_patches(images, labels, positions_out) -> None:
        blocks = list(iter_chunks(positions, EXTRACT_BLOCK))
        for start, rows in progress(blocks, len(blocks), "patches         "):
            images[start: start + len(rows)] = extract_patches(train_images, rows, size).astype(np.float16)
            labels[start: start + len(rows), ..., 0] = extract_patches(train_labels, rows, size)
            positions_out[start: start + len(rows)] = rows

    attrs = {"dataset": paths["dataset"], "preprocessing": settings, "statistics": stats,
             "fingerprint": wanted, "source": str(root), "source_files": files}
    if classes is not None:
        # Frequencies and median-frequency weights from the training labels (void left out).
        attrs["classes"] = {"n_classes": classes.n_classes, "class_names": list(classes.names),
                            "ignore_index": classes.ignore_index, "palette": [list(c) for c in classes.palette],
                            **class_statistics((r["label"] for r in train_rows), classes.n_classes,
                                               classes.ignore_index, (r["fov"] for r in train_rows))}
    write_prepared(out_path, splits, attrs, n, size, settings["channels"], fill_patches)

    print(f"\nWrote {out_path} ({out_path.stat().st_size / 2**20:.1f} MiB)")
    for split, rows in splits.items():
        if rows:
            shapes = sorted({r["image"].shape for r in rows}, key=lambda shape: shape[0] * shape[1])
            (h0, w0, c), (h1, w1, _) = shapes[0], shapes[-1]
            sizes = f"{w0}x{h0}x{c}" if len(shapes) == 1 else f"{len(shapes)} sizes from {w0}x{h0}x{c} to {w1}x{h1}x{c}"
            print(f"  {split:5s}: {len(rows):3d} image{'s' * (len(rows) != 1)}, {sizes}"
                  f"{'' if rows[0]['label'] is not None else ' (no labels)'}")
    focus = config["training settings"]["foreground_fraction"]
    print(f"  patches: {n} of {size}x{size}x{settings['channels']} (float16), centres "
          f"{'inside the FOV' if config['training settings']['inside_FOV'] else 'anywhere'}"
          + (f", {focus:.0%} of them on {'foreground' if classes is None else 'a class drawn per patch'}"
             if focus else ""))
    inside = config["training settings"]["inside_FOV"]  # patch centres in the FOV, or anywhere
    pixels = sum(int(row["fov"].sum()) if inside else row["fov"].size for row in train_rows)
    coverage = n * size * size / max(pixels, 1)
    if coverage > MAX_COVERAGE:
        training = config["training settings"]
        enough = max(int(round(100 * pixels / (size * size), -2)), 100)
        # With steps_per_epoch = 0 an epoch is one pass over the patches: fewer patches would mean shorter epochs.
        steps = batches_per_pass(validation_split(n, training["validation_fraction"])[0], training["batch_size"])
        keep = f" --set steps_per_epoch={steps}" if training["steps_per_epoch"] == 0 else ""
        print(f"  note: the patches cover each training pixel about {coverage:,.0f} times, in "
              f"{out_path.stat().st_size / 2**20:.1f} MiB. For so few pixels a smaller file does as well: "
              f"--set N_subimgs={enough}{keep} (100 times; DRIVE's 100,000 patches cover its pixels about 100 "
              "times).")
    if classes is None:
        foreground = np.mean([r["label"][r["fov"]].mean() for r in train_rows])
        inverted = (" (over half: labels that draw the structure dark on a light background are inverted; "
                    "foreground must be 255 or 1)" if foreground > 0.5 and paths["dataset"] != "ISBI2012" else "")
        print(f"  foreground fraction inside the FOV (train): {foreground:.3f}{inverted}")
    else:
        info = attrs["classes"]
        total = max(sum(info["pixel_counts"]), 1)
        print("  classes (train pixels, void left out; median-frequency weight):")
        for name, count, weight in zip(classes.names, info["pixel_counts"], info["median_frequency_weights"]):
            print(f"    {name:12s} {100 * count / total:5.1f}%  weight {weight:.3f}{'  (no pixels)' * (count == 0)}")
        absent = [name for name, count in zip(classes.names, info["pixel_counts"]) if count == 0]
        if absent:
            print(f"  warning: no training pixel is of class {', '.join(absent)}: the model cannot learn "
                  f"{'it' if len(absent) == 1 else 'them'}. Check [model] n_classes and the training labels.")
    print(f"  statistics: mean {np.round(stats['mean'], 2).tolist()}, std {np.round(stats['std'], 2).tolist()}")
    turned = [row["name"] for rows in splits.values() for row in rows if row["turned"]]
    if turned:
        print(f"  note: {plural(len(turned), 'image')} ({listed(turned, 10)}) with an orientation tag that turns "
              "or mirrors them, and labels that fit either way (square, or turned by 180 degrees, or mirrored): read "
              "as viewers show them, with the labels drawn on that view. If the labels were drawn on the pixels as "
              "stored, save the images without the tag and prepare again.")
    return 0


if __name__ == "__main__":
    run_cli(main)

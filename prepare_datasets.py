"""Turn a dataset in its original layout into dataset.h5: preprocessed full images and training patches."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lib.config import add_config_arguments, load_config
from lib.errors import UserError, run_cli
from lib.patches import extract_patches, iter_chunks, sample_centres
from lib.preprocessing import fit_statistics, preprocess, preprocessing_settings, select_channels
from lib.progress import progress
from lib.readers import read_split
from lib.sample_data import write_drive_sample
from lib.storage import FILE_NAME, open_prepared, write_prepared

SAMPLE_TRAIN, SAMPLE_TEST = 10, 4  # images in the generated demo dataset (DRIVE size)
EXTRACT_BLOCK = 4096  # patches cut and written at a time: bounds memory whatever N_subimgs is


def fingerprint(config) -> dict:
    """The settings dataset.h5 depends on; a file made with other values must be redone."""
    return {
        "data paths": {k: config["data paths"][k] for k in ("dataset", "dataset_dir", "holdout_ids")},
        "data attributes": config["data attributes"],
        "preprocessing": config["preprocessing"],
        "patches": {k: config["training settings"][k] for k in ("N_subimgs", "inside_FOV")},
        "seed": config["experiment"]["seed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset.h5 prepared with other settings")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    paths = config["data paths"]
    out_path = Path(paths["prepared_dir"]) / FILE_NAME
    wanted = fingerprint(config)

    if out_path.exists():
        try:
            with open_prepared(out_path) as h5:
                same = json.loads(h5.attrs["fingerprint"]) == json.loads(json.dumps(wanted))
        except UserError:
            same = False
        if same and not args.overwrite:
            print(f"{out_path} is already prepared with these settings; nothing to do.")
            return 0
        if not args.overwrite:
            raise UserError(f"{out_path} exists and was prepared with other settings (or is unfinished). "
                            "Rerun with --overwrite to replace it, or set [data paths] prepared_dir "
                            "to another folder to keep both.")

    for stale in out_path.parent.glob(f".{out_path.stem}.*.tmp{out_path.suffix}"):
        print(f"Removing {stale}, left by an interrupted prepare_datasets.py run.")
        stale.unlink()
    root = Path(paths["dataset_dir"])
    if paths["dataset"] == "sample" and not root.exists():
        print(f"Generating the sample dataset (DRIVE layout, {SAMPLE_TRAIN} training and {SAMPLE_TEST} "
              f"test images) in {root} ...")
        write_drive_sample(root, n_train=SAMPLE_TRAIN, n_test=SAMPLE_TEST, seed=config["experiment"]["seed"])

    positive = config["data attributes"]["positive_class"]
    train = read_split(paths["dataset"], root, "train", positive)
    test = read_split(paths["dataset"], root, "test", positive)
    if not train:
        raise UserError(f"no training images found in {root}.")
    unknown = sorted(set(paths["holdout_ids"]) - {s.id for s in train})
    if unknown:
        raise UserError(f"[data paths] holdout_ids lists {unknown}, which are not training image ids "
                        f"(found {min(s.id for s in train)}..{max(s.id for s in train)}).")
    val = [s for s in train if s.id in paths["holdout_ids"]]
    train = [s for s in train if s.id not in paths["holdout_ids"]]
    if not train:
        raise UserError("[data paths] holdout_ids holds out every training image; leave some for training.")

    settings = preprocessing_settings(config)
    stats = fit_statistics([select_channels(s.image, settings["channels"], settings["gray_mode"])
                            for s in train], [s.fov for s in train])
    splits = {}
    for split, samples in (("train", train), ("val", val), ("test", test)):
        splits[split] = [
            {"name": s.name, "id": s.id, "image": preprocess(s.image, s.fov, settings, stats),
             "label": s.label, "fov": s.fov}
            for s in progress(samples, len(samples), f"preprocess {split:5s}")
        ]

    size = config["data attributes"]["patch_size"]
    n = config["training settings"]["N_subimgs"]
    rng = np.random.default_rng(config["experiment"]["seed"])
    positions = sample_centres([s.fov for s in train], n, size, config["training settings"]["inside_FOV"], rng)
    train_images = [s["image"] for s in splits["train"]]
    train_labels = [s["label"] for s in splits["train"]]

    def fill_patches(images, labels, positions_out) -> None:
        blocks = list(iter_chunks(positions, EXTRACT_BLOCK))
        for start, rows in progress(blocks, len(blocks), "patches      "):
            images[start: start + len(rows)] = extract_patches(train_images, rows, size).astype(np.float16)
            labels[start: start + len(rows), ..., 0] = extract_patches(train_labels, rows, size)
            positions_out[start: start + len(rows)] = rows

    attrs = {"dataset": paths["dataset"], "preprocessing": settings, "statistics": stats,
             "fingerprint": wanted, "source": str(root)}
    write_prepared(out_path, splits, attrs, n, size, settings["channels"], fill_patches)

    foreground = np.mean([s.label[s.fov].mean() for s in train])
    print(f"\nWrote {out_path} ({out_path.stat().st_size / 2**20:.1f} MiB)")
    for split, samples in splits.items():
        if samples:
            h, w, c = samples[0]["image"].shape
            print(f"  {split:5s}: {len(samples):3d} images, {w}x{h}x{c}"
                  f"{'' if samples[0]['label'] is not None else ' (no labels)'}")
    print(f"  patches: {n} of {size}x{size}x{settings['channels']} (float16), centres "
          f"{'inside the FOV' if config['training settings']['inside_FOV'] else 'anywhere'}")
    print(f"  foreground fraction inside the FOV (train): {foreground:.3f}")
    print(f"  statistics: mean {np.round(stats['mean'], 2).tolist()}, std {np.round(stats['std'], 2).tolist()}")
    return 0


if __name__ == "__main__":
    run_cli(main)

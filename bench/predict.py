"""Prediction speed and accuracy: seconds per full image (predicted and scored) and AUC, for several tilings.

Uses a trained run (default runs/sample, made by
    python prepare_datasets.py --config configuration_sample.txt && python train.py --config configuration_sample.txt
) and the prepared dataset of that run's configuration (test split, else val). Every method goes through
lib.inference.predict_image (lib.tiling.sliding_window) with the same model:
  default   the [testing settings] predict.py would use: those of --config and --set, not the run's
  stride5   the classic method: 48x48 windows every 5 pixels, constant (plain) averaging
  stride48  48x48 windows without overlap
  whole     one window holding the whole image (its size rounded up to a multiple of 2^depth)
The time of an image covers prediction and scoring (lib.metrics.binary_scores inside the FOV); the table
shows per method the mean over images of each image's median over --repeats, after an untimed warm-up on
zero batches of the shapes the method will use. AUC is pooled over the FOV pixels of the images timed,
and also shown on the images the slow stride-5 method ran, so that every method is compared on the same
images.

    python bench/predict.py                              # stride 5 on 1 image, the rest on all
    python bench/predict.py --stride5-images 4 --repeats 5
    python bench/predict.py --methods default,whole --limit-images 2 --repeats 1   # a quick check
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

METHODS = ("default", "stride5", "stride48", "whole")


def load_run(run: Path, checkpoint: str | None, config_path: str, overrides: list[str]):
    """The run's configuration with the current [testing settings], its model and model_info, as predict.py loads them."""
    import predict
    from lib.config import load_config
    chosen = [f"testing_settings.checkpoint={checkpoint}"] if checkpoint else []
    config, model, _, info = predict.load_run(run, load_config(common.repo_path(config_path), overrides + chosen))
    return config, model, info


def settings_for(method: str, testing: dict, image_shape: tuple, multiple: int, args) -> dict:
    """The [testing settings]-like dict predict_image takes for a method."""
    if method == "default":
        return dict(testing)
    if method in ("stride5", "stride48"):
        stride = args.classic_stride if method == "stride5" else args.classic_window
        return dict(testing, window=args.classic_window, stride=stride, blend="constant",
                    batch_size=args.patch_batch, tta_flips=False, tta_scales=[1.0])
    height, width = image_shape[:2]
    side = max(-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    return dict(testing, window=side, stride=side, blend="constant", batch_size=1, tta_flips=False,
                tta_scales=[1.0])


def window_batches(image_shape: tuple, settings: dict, multiple: int) -> tuple[int, list[tuple]]:
    """(number of windows, distinct batch shapes) that sliding_window will feed the model."""
    from lib.tiling import window_grid
    height, width, channels = image_shape
    win_h, win_w, corners = window_grid(height, width, settings["window"], settings["stride"], multiple)
    count, batch = len(corners), settings["batch_size"]
    sizes = {min(batch, count)} | ({count % batch} if count % batch else set())
    return count, [(size, win_h, win_w, channels) for size in sorted(sizes)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/sample", help="trained run folder (default runs/sample)")
    parser.add_argument("--config", default="configuration.txt",
                        help="configuration whose [testing settings] the default method uses, as predict.py does "
                        "(default configuration.txt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a configuration value, e.g. tta_flips=horizontal (repeatable)")
    parser.add_argument("--checkpoint", choices=("best", "last"), help="default: [testing settings] checkpoint")
    parser.add_argument("--split", choices=("test", "val", "train"), help="default: test, else val")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)} (default: all)")
    parser.add_argument("--limit-images", type=int, default=0, help="images per method (default: all of the split)")
    parser.add_argument("--stride5-images", type=int, default=1,
                        help="images for the slow stride-5 method (default 1; 0 = as --limit-images)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image (median) (default 3)")
    parser.add_argument("--stride5-repeats", type=int, default=1, help="timed runs per image for stride 5 (default 1)")
    parser.add_argument("--classic-window", type=int, default=48, help="window of stride5/stride48 (default 48)")
    parser.add_argument("--classic-stride", type=int, default=5, help="stride of the stride5 method (default 5)")
    parser.add_argument("--patch-batch", type=int, default=256,
                        help="windows per model call for stride5/stride48 (default 256)")
    parser.add_argument("--target-images", type=int, default=20,
                        help="the 'N images' column extrapolates the mean time to this many (default 20, DRIVE test)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    common.quiet_logs()

    import numpy as np
    from lib.inference import model_predictor, predict_image, resolve_tta, tta_flips
    from lib.metrics import binary_scores
    from lib.storage import FILE_NAME, iter_split, open_prepared, split_size

    run = common.repo_path(args.run)
    if not (run / "configuration.txt").is_file():
        print(f"error: {run} is not a trained run folder. Make one with\n  python prepare_datasets.py --config "
              "configuration_sample.txt && python train.py --config configuration_sample.txt", file=sys.stderr)
        return 2
    config, model, info = load_run(run, args.checkpoint, args.config, args.overrides)
    if config["model"]["n_classes"] > 1:
        print(f"error: {run} segments {config['model']['n_classes']} classes; this benchmark scores binary maps "
              "(AUC, F1). Time a multi-class run with predict.py.", file=sys.stderr)
        return 2
    flips = config["augmentation"]["flips"]  # as predict.py: TTA averages only the flips the model was trained with
    testing, depth = resolve_tta(config["testing settings"], model, flips), config["model"]["depth"]
    multiple = 2 ** depth
    if args.classic_window % multiple:
        parser.error(f"--classic-window {args.classic_window} is not a multiple of 2^depth = {multiple}")
    threshold = testing["threshold"]
    if threshold == "auto":
        threshold = float(info.get("threshold", 0.5))
    data_path = common.repo_path(config["data paths"]["prepared_dir"]) / FILE_NAME
    with open_prepared(data_path) as h5:
        split = args.split or ("test" if split_size(h5, "test") else "val")
        samples = [s for s in iter_split(h5, split) if s["label"] is not None]
    if not samples:
        print(f"error: {data_path} has no labelled '{split}' images to score.", file=sys.stderr)
        return 2
    limit = args.limit_images or len(samples)
    stride5_count = min(args.stride5_images or limit, limit, len(samples))
    shapes = sorted({s["image"].shape for s in samples})

    results = {}
    for method in methods:
        chosen = samples[: stride5_count if method == "stride5" else limit]
        repeats = args.stride5_repeats if method == "stride5" else args.repeats
        first = settings_for(method, testing, chosen[0]["image"].shape, multiple, args)
        print(f"... {method}: window {first['window']}, stride {first['stride']}, {len(chosen)} image(s) "
              f"x {repeats}", file=sys.stderr, flush=True)
        # Warm-up: one call per batch shape the method will use (tracing/compilation on some backends).
        for sample in chosen:
            settings = settings_for(method, testing, sample["image"].shape, multiple, args)
            for shape in window_batches(sample["image"].shape, settings, multiple)[1]:
                model_predictor(model, tta_flips(settings, flips))(np.zeros(shape, np.float32))
        per_image, probs, windows = [], [], []
        for sample in chosen:
            settings = settings_for(method, testing, sample["image"].shape, multiple, args)
            windows.append(window_batches(sample["image"].shape, settings, multiple)[0])
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                prob = predict_image(model, sample["image"], settings, depth, flips)[..., 0]
                prob = np.where(sample["fov"], prob, 0.0)
                binary_scores(prob, sample["label"], sample["fov"], threshold)
                times.append(time.perf_counter() - start)
            per_image.append(common.median(times))
            probs.append(prob)
        results[method] = {"settings": first, "seconds_per_image": per_image, "probs": probs,
                           "windows": windows, "images": [s["name"] for s in chosen], "repeats": repeats}

    def pooled_auc(probs, subset):
        p = np.concatenate([pr[s["fov"]] for pr, s in zip(probs, subset)])
        y = np.concatenate([s["label"][s["fov"]] for s in subset])
        return binary_scores(p, y, None, threshold)["auc_roc"]

    common_images = samples[:stride5_count] if "stride5" in results else samples[:min(limit, len(samples))]
    slow = float(np.mean(results["stride5"]["seconds_per_image"])) if "stride5" in results else None
    rows = []
    for method, r in results.items():
        mean = float(np.mean(r["seconds_per_image"]))
        n = len(r["probs"])
        r["mean_seconds_per_image"] = mean
        r["auc_pooled"] = pooled_auc(r["probs"], samples[:n])
        k = min(n, len(common_images))
        r["auc_common"] = pooled_auc(r["probs"][:k], common_images[:k]) if k == len(common_images) else None
        s = r["settings"]
        tta = {True: " +TTA", False: ""}.get(s["tta_flips"], f" +TTA {s['tta_flips']}")
        label = f"stride{args.classic_stride}" if method == "stride5" else method  # the method as run
        rows.append([label, f"{s['window']}", s["stride"], s["blend"] + tta,
                     int(np.mean(r["windows"])), f"{n} x {r['repeats']}", mean, mean * args.target_images,
                     None if slow is None else slow / mean, r["auc_pooled"], r["auc_common"]])
        del r["probs"]
    notes = [f"run {run} ({config['testing settings']['checkpoint']}"
             f" checkpoint, depth {depth}), {split} split of {data_path}: {len(samples)} labelled image(s) of "
             + ", ".join(f"{w}x{h}x{c}" for h, w, c in shapes),
             "s/image = prediction + FOV masking + binary_scores, mean over images of the median over repeats",
             f"'{args.target_images} images' = {args.target_images} x s/image; x faster = stride-{args.classic_stride} "
             "s/image / s/image",
             f"AUC: pooled inside the FOV over that method's images, and over the first {len(common_images)} "
             f"image(s) (those the stride-{args.classic_stride} method ran) for a same-images comparison"]
    common.report("Prediction: seconds per image and AUC",
                  ["method", "window", "stride", "blend", "windows/image", "images x repeats", "s/image",
                   f"{args.target_images} images (s)", f"x faster than stride {args.classic_stride}", "AUC (its images)",
                   f"AUC (first {len(common_images)})"], rows, notes, args.json,
                  extra={"results": results, "threshold": threshold})
    return 0


if __name__ == "__main__":
    sys.exit(main())

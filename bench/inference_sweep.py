"""Sweep sliding-window settings (window, stride, blend, flip TTA) on a run's holdout images: AUC, F1, s/image.

Used to choose the [testing settings] defaults by measured AUC and time (issue 3).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from common import ROOT, add_common_arguments, quiet_logs, report

quiet_logs()

import numpy as np  # noqa: E402

from lib.config import load_config, load_run_config  # noqa: E402
from lib.errors import UserError, run_cli  # noqa: E402
from lib.folding import load_for_inference  # noqa: E402
from lib.inference import predict_image, resolve_tta  # noqa: E402
from lib.metrics import binary_scores  # noqa: E402
from lib.storage import FILE_NAME, iter_split, open_prepared  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default="runs/drive_holdout", help="run folder with best.keras")
    parser.add_argument("--split", default="val", help="prepared split to score (val = holdout images)")
    parser.add_argument("--windows", default="128,256,whole", help="window sizes ('whole' = the padded image, scored once without overlap)")
    parser.add_argument("--overlaps", default="0,0.25,0.5", help="fractions of the window that overlap")
    parser.add_argument("--blends", default="constant,gaussian")
    parser.add_argument("--tta", default="false,true", help="tta_flips values: false, true (all four), horizontal, rotations, auto")
    add_common_arguments(parser)
    args = parser.parse_args()

    run = ROOT / args.run if not Path(args.run).is_absolute() else Path(args.run)
    if not (run / "configuration.txt").is_file():
        raise UserError(f"{run} is not a trained run folder (no configuration.txt in it): give one with --run.")
    config = load_run_config(run / "configuration.txt", load_config(ROOT / "configuration.txt"))
    if config["model"]["n_classes"] > 1:
        raise UserError(f"{run} segments {config['model']['n_classes']} classes; this sweep scores binary maps "
                        "(AUC, F1). Compare window settings of a multi-class run with predict.py --set window=...")
    depth, flips = config["model"]["depth"], config["augmentation"]["flips"]  # as predict.py: TTA follows training
    model = load_for_inference(run / "best.keras")
    with open_prepared(ROOT / config["data paths"]["prepared_dir"] / FILE_NAME) as h5:
        samples = list(iter_split(h5, args.split))
    labels = np.concatenate([s["label"][s["fov"]] for s in samples])
    whole = max(max(s["image"].shape[:2]) for s in samples)
    whole = -(-whole // 2 ** depth) * 2 ** depth
    overlaps = [float(o) for o in args.overlaps.split(",")]
    grid = [(window, overlap) for window in args.windows.split(",")
            for overlap in ([0.0] if window == "whole" else overlaps)]  # one window holding the image never overlaps
    rows = []
    for (window, overlap), blend, tta in itertools.product(
            grid, args.blends.split(","), [{"true": True, "false": False}.get(t, t) for t in args.tta.split(",")]):
        size = whole if window == "whole" else int(window)
        stride = max(int(size * (1 - overlap)), 1)
        testing = resolve_tta(dict(config["testing settings"], window=size, stride=stride, blend=blend,
                                   batch_size=4, tta_flips=tta), model, flips)
        predict_image(model, samples[0]["image"], testing, depth, flips)  # warm-up (graph tracing)
        start = time.perf_counter()
        probs = np.concatenate([predict_image(model, s["image"], testing, depth, flips)[..., 0][s["fov"]]
                                for s in samples])
        seconds = (time.perf_counter() - start) / len(samples)
        scores = binary_scores(probs, labels)
        tta = testing["tta_flips"]  # auto as settled for the model
        rows.append([window, stride, blend, {True: "all", False: "off"}.get(tta, tta), f"{scores['auc_roc']:.4f}",
                     f"{scores['f1']:.4f}", f"{scores['accuracy']:.4f}", f"{seconds:.2f}"])
        print(json.dumps(rows[-1]), flush=True)
    report(f"Sliding-window settings on {len(samples)} '{args.split}' images of {run.name}",
           ["window", "stride", "blend", "flip TTA", "AUC", "F1@0.5", "accuracy", "s/image"], rows,
           json_path=args.json)


if __name__ == "__main__":
    run_cli(main)

"""Peak memory (RSS) and time of prepare_datasets.py and train.py for several N_subimgs.

Runs the real scripts as child processes, one at a time, on a temporary copy of the data paths: the
configuration (default configuration_sample.txt) with --set overrides for N_subimgs, patch_size,
prepared_dir, runs_dir and name, and dataset_dir pointing to the existing dataset (for the sample
dataset, data/sample if it exists, else one generated once into the temporary folder before timing).
train.py runs a short training (--epochs epochs of --train-steps batches), with everything else from the
configuration (validation stream, holdout scoring, checkpoints). Each child's peak RSS comes from
os.wait4, i.e. the kernel's maximum resident set size of that process alone.

    python bench/memory.py                                # N_subimgs = 19000 and 190000, patch 48
    python bench/memory.py --n 19000 --train-steps 5      # a quicker run
    python bench/memory.py --config configuration.txt --set dataset_dir=/data/DRIVE   # real DRIVE
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configuration_sample.txt",
                        help="configuration to start from (default configuration_sample.txt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra override passed to both scripts (repeatable)")
    parser.add_argument("--n", default="19000,190000", help="comma-separated N_subimgs (default 19000,190000)")
    parser.add_argument("--patch-size", type=int, default=48, help="patch_size (default 48)")
    parser.add_argument("--epochs", type=int, default=1, help="N_epochs of the training run (default 1)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps_per_epoch of the training run (default 20)")
    parser.add_argument("--skip-train", action="store_true", help="measure prepare_datasets.py only")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the baseline row (a child that only imports Keras and builds the model)")
    parser.add_argument("--tmp", help="parent folder of the temporary folder (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, dataset.h5, runs)")
    common.add_common_arguments(parser)
    args = parser.parse_args()
    try:
        sizes = [int(n) for n in args.n.replace(",", " ").split()]
    except ValueError:
        parser.error(f"--n {args.n!r}: expected comma-separated integers")
    # Keras is started only after the children ran: a child's ru_maxrss starts from its parent's peak at the
    # fork (Linux records it at exec), so a parent holding Keras would add its ~700 MiB to every figure.

    from lib.config import load_config
    config_path = common.repo_path(args.config)
    config = load_config(config_path, args.overrides)
    paths = config["data paths"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.tmp))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows, results, notes = [], [], []
    try:
        dataset_dir = common.repo_path(paths["dataset_dir"])
        if paths["dataset"] == "sample" and not dataset_dir.exists():
            from lib.sample_data import write_drive_sample
            try:
                from prepare_datasets import SAMPLE_TEST, SAMPLE_TRAIN
            except ImportError:
                SAMPLE_TRAIN, SAMPLE_TEST = 10, 4
            dataset_dir = tmp / "sample"
            print(f"... generating the sample dataset in {dataset_dir}", file=sys.stderr, flush=True)
            write_drive_sample(dataset_dir, n_train=SAMPLE_TRAIN, n_test=SAMPLE_TEST, seed=config["experiment"]["seed"])
        notes.append(f"dataset {paths['dataset']} from {dataset_dir}; configuration {config_path}"
                     + (f" with {' '.join(args.overrides)}" if args.overrides else ""))

        if not args.no_baseline:
            probe = ("import keras, numpy; from lib.config import load_config; from lib.unet import unet_from_config; "
                     f"m = unet_from_config(load_config({str(config_path)!r})); "
                     f"m(numpy.zeros((1, {args.patch_size}, {args.patch_size}, m.inputs[0].shape[-1]), 'float32'))")
            base = common.run_measured([sys.executable, "-c", probe], tmp / "baseline.log", env=env, cwd=common.ROOT)
            notes.append(f"baseline: a child that only imports Keras and runs the model once peaks at "
                         f"{base['peak_rss_mib']:.0f} MiB RSS ({base['seconds']:.1f} s)")
            results.append({"baseline": base})

        for n in sizes:
            sets = [*args.overrides, f"N_subimgs={n}", f"patch_size={args.patch_size}",
                    f"dataset_dir={dataset_dir}", f"prepared_dir={tmp / f'prepared_{n}'}",
                    f"runs_dir={tmp / 'runs'}", f"name=memory_{n}"]
            flags = [item for s in sets for item in ("--set", s)]
            print(f"... N_subimgs={n}: prepare_datasets.py", file=sys.stderr, flush=True)
            prep = common.run_measured([sys.executable, str(common.ROOT / "prepare_datasets.py"), "--config",
                                        str(config_path), *flags], tmp / f"prepare_{n}.log", env=env, cwd=common.ROOT)
            h5 = tmp / f"prepared_{n}" / "dataset.h5"
            row = {"n": n, "prepare": prep, "h5_mib": h5.stat().st_size / 2 ** 20 if h5.exists() else None}
            if prep["returncode"]:
                print(f"prepare_datasets.py failed (exit {prep['returncode']}):\n{common.tail(prep['log'])}",
                      file=sys.stderr)
            elif not args.skip_train:
                print(f"... N_subimgs={n}: train.py", file=sys.stderr, flush=True)
                train_flags = flags + ["--set", f"N_epochs={args.epochs}", "--set", f"steps_per_epoch={args.train_steps}",
                                       "--set", "max_train_minutes=0"]
                row["train"] = common.run_measured([sys.executable, str(common.ROOT / "train.py"), "--config",
                                                    str(config_path), *train_flags], tmp / f"train_{n}.log",
                                                   env=env, cwd=common.ROOT)
                if row["train"]["returncode"]:
                    print(f"train.py failed (exit {row['train']['returncode']}):\n{common.tail(row['train']['log'])}",
                          file=sys.stderr)
            if not args.keep:  # free the disk before the next (larger) N
                shutil.rmtree(tmp / f"prepared_{n}", ignore_errors=True)
            results.append(row)
            train = row.get("train")

            def status(result):
                return "ok" if result and not result["returncode"] else (f"exit {result['returncode']}" if result else "-")
            rows.append([n, f"{args.patch_size}x{args.patch_size}", row["h5_mib"], prep["seconds"],
                         prep["peak_rss_mib"], status(prep),
                         train["seconds"] if train else None, train["peak_rss_mib"] if train else None,
                         status(train)])
    finally:
        if args.keep:
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not args.skip_train:
        notes.append(f"train.py: N_epochs={args.epochs}, steps_per_epoch={args.train_steps}, max_train_minutes=0, "
                     "the rest (validation, holdout scoring, checkpoints) as configured; times include start-up")
    notes.append("peak RSS: ru_maxrss of each child from os.wait4 (MiB = 2^20 bytes)")
    common.quiet_logs()  # for the machine line
    common.report("Peak memory of prepare_datasets.py and train.py",
                  ["N_subimgs", "patch", "dataset.h5 MiB", "prepare s", "prepare peak RSS MiB", "prepare",
                   "train s", "train peak RSS MiB", "train"], rows, notes, args.json, extra={"results": results})
    return 0 if all(r[5] in ("ok",) and r[8] in ("ok", "-") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

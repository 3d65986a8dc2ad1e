"""Train the U-Net on the patches of dataset.h5; rerunning the same command resumes an interrupted run."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from lib.atomic import write_json, write_text
from lib.config import Config, add_config_arguments, load_config, write_config
from lib.errors import UserError, run_cli
from lib.fingerprint import (describe_differences, fingerprint, matters_for_training, setting_differences,
                             source_changes, with_prepared_settings)
from lib.metrics import best_f1_threshold
from lib.patches import validation_split
from lib.plots import save_learning_curves
from lib.progress import listed, plural, progress
from lib.runs import CONFIG_NAME, FINISHED, finished_as_configured, prepare_run_folder, run_lock
from lib.storage import (FILE_NAME, data_digest, iter_split, open_prepared, read_attr_json, read_classes,
                         read_source_files)

# The label offset is found on training images up to this many pixels (all of DRIVE's 20 images, 6.6 million, and
# ISBI's slices): enough for a steady offset, and about a minute on a CPU, where HRF's full-size images would
# take ten.
CALIBRATION_PIXELS = 8_000_000

if TYPE_CHECKING:  # these import Keras, which train.py loads only once the configuration and data are checked
    from lib.callbacks import CtrlC, NaNGuard, TimeLimit
    from lib.distribute import Distribution
    from lib.pipeline import PatchStream


def read_log(path: Path) -> dict[str, list[float]]:
    """Read the CSV training log; a repeated epoch (after a resume) keeps its last row."""
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows[int(row["epoch"])] = row
    history: dict[str, list[float]] = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            # CSVLogger writes "NA" for a metric an epoch did not have (e.g. no validation patches).
            history.setdefault(key, []).append(float(value) if value not in ("", "NA", None) else float("nan"))
    return history


def check_prepared_settings(differences: dict, data_path: Path) -> None:
    """Refuse a dataset.h5 prepared with settings that change what the model sees; note the others."""
    wrong = {key: values for key, values in differences.items() if matters_for_training(key)}
    if wrong:
        raise UserError(f"{data_path} was prepared with other settings: {describe_differences(wrong)}. "
                        "Give prepare_datasets.py and train.py the same configuration and --set options, or "
                        "rerun prepare_datasets.py with these (with --overwrite, or another prepared_dir).")
    if differences:
        recorded = (", and the run's configuration.txt records the ones it used"
                    if any(key != "seed" for key in differences) else "")
        print(f"note: {data_path} was prepared with {describe_differences(differences)}; training uses its "
              f"patches and images as they are{recorded}.")


def check_sources(changes: list[str], source: Path, data_path: Path) -> None:
    """Warn that the images or labels dataset.h5 was prepared from have changed since: training does not see it."""
    if changes:
        print(f"warning: these files in {source} changed after {data_path} was prepared from them: "
              f"{listed(changes, 10)}. Training uses the file as it was prepared; to train on the files as "
              "they are now, stop and rerun prepare_datasets.py with --overwrite.")


def check_holdout(holdout: list[dict], multiclass: bool, ignore_index: int | None, data_path: Path) -> None:
    """Refuse holdout images that cannot be scored: no label, or nothing to score inside the FOV."""
    names = ", ".join(s["name"] for s in holdout)
    if any(s["label"] is None for s in holdout):
        raise UserError(f"some holdout images in {data_path} ({names}) have no label; hold out labelled "
                        "training images ([data paths] holdout_ids) and rerun prepare_datasets.py.")
    if multiclass:
        scorable = any((s["fov"] if ignore_index is None else s["fov"] & (s["label"] != ignore_index)).any()
                       for s in holdout)
        what = "labelled (non-void) pixels"
    else:
        scorable = any(s["label"][s["fov"]].any() for s in holdout)
        what = "foreground pixels, so AUC and F1 are undefined"
    if not scorable:
        raise UserError(f"the holdout images in {data_path} ({names}) have no {what} inside their field of "
                        "view; hold out other images ([data paths] holdout_ids, or leave it empty) and "
                        "rerun prepare_datasets.py.")


def main() -> int:
    """Train the configured U-Net on a prepared dataset into its run folder, resuming an unfinished one."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a run of the same name (checkpoints, logs and its predictions/) and start over")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    prepared = read_prepared(config)
    return train(with_prepared_settings(config, prepared.differences), prepared, args.overwrite)


class Prepared(NamedTuple):
    """What training reads of dataset.h5 besides the patches, which it streams."""
    path: Path
    n_patches: int
    preprocessing: dict
    holdout: list[dict]
    classes: dict | None  # None for a binary task
    ignore_index: int | None
    differences: dict  # settings the file was prepared with that differ from the configuration (all neutral)
    digest: str  # lib.storage.data_digest: which preparation a finished run was trained on


def read_prepared(config: Config) -> Prepared:
    """Read and check dataset.h5 for this configuration: refuse data prepared for another one."""
    data_path = Path(config["data paths"]["prepared_dir"]) / FILE_NAME
    with open_prepared(data_path, config["data attributes"]["patch_size"],
                       config["data attributes"]["channels"]) as h5:
        n_patches = h5["patches/images"].shape[0]
        preprocessing = {"settings": read_attr_json(h5, "preprocessing"),
                         "statistics": read_attr_json(h5, "statistics"),
                         "dataset": h5.attrs["dataset"], "source": h5.attrs["source"]}
        holdout = list(iter_split(h5, "val"))
        classes = read_classes(h5)
        differences = setting_differences(read_attr_json(h5, "fingerprint"), fingerprint(config))
        saved_files = read_source_files(h5)
        digest = data_digest(h5)
    check_prepared_settings(differences, data_path)
    source = Path(preprocessing["source"])
    check_sources(source_changes(saved_files, source, data_path), source, data_path)

    n_classes, ignore_index = config["model"]["n_classes"], config["data attributes"]["ignore_index"]
    ignore_index = None if ignore_index < 0 else ignore_index
    if n_classes > 1 and (classes is None or classes["n_classes"] != n_classes
                          or classes["ignore_index"] != ignore_index):
        raise UserError(f"{data_path} was prepared for another label set than n_classes = {n_classes}, "
                        f"ignore_index = {ignore_index}; rerun prepare_datasets.py with this configuration.")
    if holdout:
        check_holdout(holdout, n_classes > 1, ignore_index, data_path)
    return Prepared(data_path, n_patches, preprocessing, holdout, classes, ignore_index, differences, digest)


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run: the interpreter in full (a virtual environment's), quoted so it pastes
    back as typed, and without --overwrite (or an abbreviation of it), which would delete the run instead."""
    kept = [arg for arg in argv[1:] if not (len(arg) > 2 and "--overwrite".startswith(arg))]
    return shlex.join([sys.executable, argv[0], *kept])


def train(config: Config, prepared: Prepared, overwrite: bool) -> int:
    """Train the run config describes on the prepared data (resuming it, or starting over with overwrite); return
    the exit status."""
    # Imported only now because TensorFlow takes seconds to start: --help and errors in the configuration or
    # the prepared data answer at once.
    from lib.start_up import import_keras
    keras = import_keras()

    from lib.backend import configure_precision
    from lib.callbacks import TimeLimit, read_state, training_ended
    from lib.distribute import check_global_batch, make_distribution

    training = config["training settings"]
    time_limit = TimeLimit(training["max_train_minutes"])  # the budget covers building the model too
    # First of all: MultiWorkerMirroredStrategy must exist before TensorFlow starts its runtime.
    distribution = make_distribution(training["strategy"])
    policy = configure_precision(training["mixed_precision"])
    # Every check that can refuse the run comes before the run folder is touched (--overwrite empties it).
    n_train, n_val = validation_split(prepared.n_patches, training["validation_fraction"])
    batch = training["batch_size"]
    check_global_batch(batch, distribution)
    if n_train < batch:
        raise UserError(f"only {n_train} training patches for a batch size of {batch}; raise "
                        "[training settings] N_subimgs (and rerun prepare_datasets.py) or lower batch_size.")
    # Validation batches split evenly between the replicas; fewer patches than a batch still make one batch.
    val_batch = min(batch, n_val) // distribution.replicas * distribution.replicas
    use_holdout = bool(prepared.holdout) and training["validate_every"] > 0
    holdout_score = "holdout_auc_roc" if config["model"]["n_classes"] == 1 else "holdout_mean_iou"
    monitor = holdout_score if use_holdout else "val_loss" if val_batch else "loss"

    command = resume_command(sys.argv)
    run = Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    with contextlib.ExitStack() as stack:
        if distribution.is_chief:
            stack.enter_context(run_lock(run))  # before --overwrite may delete the folder
            done = None if overwrite else finished_as_configured(config)
            if done is not None and done.get("data_digest", prepared.digest) != prepared.digest:  # older: unknown
                raise UserError(f"{run} holds a run finished on {prepared.path} as it was before it was prepared "
                                "again (from other files or settings). To train on the data as it is now, add "
                                "--overwrite, or choose another name with --set experiment.name=NEW_NAME.")
            if done is not None:
                # Rerunning a finished pipeline's commands (prepare, train, predict) is not an error.
                best = ("" if done.get("best") is None else
                        f": best {done.get('monitor')} = {done['best']:.4f} at epoch {done.get('best_epoch')}")
                print(f"{run} already holds a finished run with these settings{best}; nothing to do. To train it "
                      "again from the start, add --overwrite; to train more (e.g. more epochs), choose another "
                      "name with --set experiment.name=NEW_NAME.")
                return 0
            run, resuming = prepare_run_folder(config, overwrite)
            reason = training_ended(read_state(run), training["early_stopping_patience"]) if resuming else None
            fresh = resuming and not (run / "last.keras").exists()
            print(f"{'Resuming' if resuming else 'Starting'} run {run}"
                  f"{': no epoch had finished, so training starts at epoch 1' if fresh else ''}")
            write_config(config, run / CONFIG_NAME)
            write_json(run / "preprocessing.json", prepared.preprocessing)
        else:
            # Only the chief writes the run folder; this worker takes the chief's state when training starts.
            reason = None
            print(f"Training as {distribution.task}: the chief writes the run folder {run}")
        print(f"Devices: {distribution.describe()}; dtype policy {policy}; backend {keras.backend.backend()}")
        ended = distribution.agree(reason is not None)  # every worker skips training with the chief
        if ended:
            # Stopped early or by the time budget, or all epochs done: what remained were the final files.
            print(f"Its training had ended ({reason or 'the chief says so'}); "
                  f"{'writing its final files' if distribution.is_chief else 'nothing to do here'}.")
            minutes = 0.0
        else:
            minutes = fit(config, prepared, run, distribution, time_limit, monitor, (n_train, val_batch), command)
            if minutes is None:
                return 130
        if not distribution.is_chief:
            return 0
        try:
            return finish(config, prepared, run, monitor, minutes, ended, command)
        except KeyboardInterrupt:
            print(f"\nInterrupted while writing the final files. Run the same command to write them (training is "
                  f"not repeated):\n  {command}", file=sys.stderr)
            return 130


def fit(config: Config, prepared: Prepared, run: Path, distribution: Distribution, time_limit: TimeLimit,
        monitor: str, sizes: tuple[int, int], command: str) -> float | None:
    """Build the model and train it, resuming from the run's backup; return the minutes it took, None when
    interrupted. sizes: the training patches and the validation batch (0: no validation). On the chief, mark the
    run's training as ended when fit returns normally."""
    import keras

    from lib.backend import jit_setting
    from lib.callbacks import mark_ended
    from lib.losses import loss_and_metrics
    from lib.optimizer import build_optimizer
    from lib.pipeline import PatchStream
    from lib.unet import unet_from_config

    training, n_classes = config["training settings"], config["model"]["n_classes"]
    batch, seed = training["batch_size"], config["experiment"]["seed"]
    (n_train, val_batch), n_val = sizes, prepared.n_patches - sizes[0]
    keras.utils.set_random_seed(seed)
    train_data = PatchStream(prepared.path, 0, n_train, batch, steps=training["steps_per_epoch"], shuffle=True,
                             augment=config["augmentation"], seed=seed, workers=2, soft_labels=n_classes == 1)
    val_data = PatchStream(prepared.path, n_train, prepared.n_patches, val_batch, shuffle=False) if val_batch else None

    steps = len(train_data)
    weights = (prepared.classes["median_frequency_weights"]
               if n_classes > 1 and training["class_weighting"] != "none" else None)
    loss, metrics = loss_and_metrics(training["loss"], n_classes, prepared.ignore_index, weights,
                                     refined=config["model"]["refinements"] > 0)
    with distribution.scope():
        model = unet_from_config(config)
        optimizer = build_optimizer(training["learning_rate"], training["ema_momentum"], training["weight_decay"])
        model.compile(optimizer=optimizer, loss=distribution.replica_loss(loss),
                      metrics=metrics,
                      jit_compile=jit_setting(training["jit_compile"], distribution.strategy is not None))
    distribution.prepare_model(model)
    if distribution.is_chief:
        lines: list[str] = []
        model.summary(print_fn=lambda line, **_: lines.append(line + "\n"))
        write_text(run / "model_summary.txt", "".join(lines))

    callbacks, nan_guard, ctrl_c = training_callbacks(config, prepared, run, distribution, time_limit, monitor,
                                                      train_data)

    limit = training["max_train_minutes"]
    budget = f" within a time budget of {limit:g} min from the start of train.py" if limit else ""
    print(f"{n_train} training and {n_val} validation patches of {config['data attributes']['patch_size']} px; "
          f"{steps} steps of {batch} per epoch, {plural(training['N_epochs'], 'epoch')}"
          f"{budget}; monitoring {monitor}")
    started = time.monotonic()
    try:
        with ctrl_c:
            # shuffle=False: the stream shuffles by itself, keyed by seed and epoch. Keras' own shuffle of its
            # batch indices draws from Python's global generator, so a resumed run would see another order.
            model.fit(train_data, validation_data=val_data, epochs=training["N_epochs"], shuffle=False,
                      callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        kept = (f"Checkpoints are kept in {run}" if (run / "last.keras").exists() else
                "No epoch had finished, so there is no checkpoint yet")
        if ctrl_c.unfinished is not None and ctrl_c.unfinished >= backed_up_epochs(run) > 0:
            # Compared with the backup: a second Ctrl-C can land after an epoch's backup, before its end.
            kept += (f"; epoch {ctrl_c.unfinished + 1} had not finished (its training or validation), so it runs "
                     "again from its start")
        print(f"\nInterrupted. {kept}; run the same command to resume:\n  {command}", file=sys.stderr)
        if distribution.strategy is not None:
            distribution.abort(130)
        return None
    except Exception as exc:
        if distribution.strategy is None:
            raise
        # Under a strategy a normal exit can hang on threads still waiting for the other devices.
        if isinstance(exc, UserError):
            print(f"\nerror: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        print(f"\nTraining failed on {distribution.task}. Checkpoints are kept in {run}; stop every worker, "
              f"then run the same command(s) again to resume:\n  {command}", file=sys.stderr)
        distribution.abort(2 if isinstance(exc, UserError) else 1)
    finally:
        for stream in (train_data, val_data):
            if stream is not None:
                stream.close()
    minutes = (time.monotonic() - started) / 60
    if not distribution.is_chief:
        print(f"\n{distribution.task} finished its part in {minutes:.1f} min; the chief writes the results.")
        if nan_guard.where:
            raise SystemExit(1)
        return minutes
    if nan_guard.where:
        epoch, step = nan_guard.where
        kept = (f"The last good checkpoints are kept in {run}. Run the same command to retry from the last "
                "good epoch, or" if (run / "last.keras").exists() else
                "No epoch finished before it, so no checkpoint was written. Check the input data, or")
        raise UserError(f"the training loss became NaN at epoch {epoch}, step {step}. {kept} lower "
                        "[training settings] learning_rate (e.g. by 10x) and start over with --overwrite.")
    # From here a rerun writes the final files without training more: an early stop or the time budget
    # would otherwise be forgotten, and the rerun would train on.
    epochs = len(read_log(run / "log.csv").get("epoch", []))
    mark_ended(run, "all epochs done" if epochs >= training["N_epochs"] else
               f"stopped early, after {plural(epochs, 'epoch')}")
    return minutes


def training_callbacks(config: Config, prepared: Prepared, run: Path, distribution: Distribution,
                       time_limit: TimeLimit, monitor: str, train_data: PatchStream) -> tuple[list, NaNGuard, CtrlC]:
    """fit's callbacks in the order they must run, with the NaN guard and the Ctrl-C handler among them."""
    import keras

    from lib.averaging import AveragedWeights
    from lib.callbacks import (Checkpoints, CosineSchedule, CtrlC, EpochSetter, HoldoutScore, LogProgress,
                               NaNGuard, SafeBackupAndRestore)
    from lib.distribute import AgreeToStop, SyncFromChief
    from lib.inference import predict_image

    training, testing = config["training settings"], config["testing settings"]
    flips, depth, n_classes = config["augmentation"]["flips"], config["model"]["depth"], config["model"]["n_classes"]
    nan_guard = NaNGuard()
    callbacks = [nan_guard, EpochSetter([train_data])]
    if training["lr_schedule"] == "cosine":
        # Workers' clocks differ: with several, the schedule follows steps only, so their rates agree.
        callbacks.append(CosineSchedule(training["learning_rate"], len(train_data), training["N_epochs"],
                                        time_limit if distribution.workers == 1 else None,
                                        state=run / "backup" / "schedule.json" if distribution.is_chief else None))
    average = AveragedWeights() if training["ema_momentum"] else None
    if average:
        callbacks.append(average)
    if distribution.is_chief:
        if monitor.startswith("holdout_"):
            # Model selection needs no flip or scale TTA; they would multiply the time each epoch's scoring takes.
            scoring = {**testing, "tta_flips": False, "tta_scales": [1.0]}
            callbacks.append(HoldoutScore(prepared.holdout,
                                          lambda m, image: predict_image(m, image, scoring, depth, flips),
                                          training["validate_every"], n_classes, prepared.ignore_index, time_limit))
        mode = "max" if monitor.startswith("holdout_") else "min"
        callbacks += [
            Checkpoints(run, monitor, mode, training["early_stopping_patience"]),
            keras.callbacks.CSVLogger(str(run / "log.csv"), append=True),
        ]
    if average:
        callbacks.append(average.swap_back)  # the backup below must hold the training state, not the average
    if distribution.is_chief:
        callbacks.append(SafeBackupAndRestore(str(run / "backup"), double_checkpoint=True))
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(str(run / "tensorboard"), profile_batch=0))
        if not sys.stdout.isatty():
            callbacks.append(LogProgress())  # Keras prints one line per epoch here (verbose=2)
    # With several workers: start from the chief's (restored) state; stop together.
    # CtrlC last: an interrupted epoch's checkpoints are written before it raises.
    ctrl_c = CtrlC()
    callbacks += [time_limit, SyncFromChief(distribution), AgreeToStop(distribution), ctrl_c]
    return callbacks, nan_guard, ctrl_c


def backed_up_epochs(run: Path) -> int:
    """How many epochs the run's training backup holds, where a resume starts (0 without one)."""
    try:
        return int(json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def training_images(prepared: Prepared) -> list[dict]:
    """The first stored full training images, at least one, up to CALIBRATION_PIXELS: where the label offset
    is found."""
    images, pixels = [], 0
    with open_prepared(prepared.path) as h5:
        for sample in iter_split(h5, "train"):
            pixels += sample["fov"].size
            if images and pixels > CALIBRATION_PIXELS:
                break
            images.append(sample)
    return images


def binary_calibration(config: Config, prepared: Prepared, run: Path, one_model: bool) -> dict:
    """model_info.json's label offset, found with best.keras on the training images, and the best-F1 threshold
    of each checkpoint predict.py may load on the moved maps of the holdout images (0.5 without them)."""
    from lib.alignment import MIN_GAIN, best_offset, offset_text, shift_map
    from lib.folding import load_for_inference
    from lib.inference import predict_image, resolve_tta

    testing, depth, flips = config["testing settings"], config["model"]["depth"], config["augmentation"]["flips"]

    def maps(model: Any, images: list[dict], label: str) -> list[np.ndarray]:
        chosen_with = resolve_tta(testing, model, flips)  # the probabilities predict.py will threshold
        return [predict_image(model, s["image"], chosen_with, depth, flips)[..., 0]
                for s in progress(images, len(images), label)]

    # On the training images, not the holdout ones: a flip reverses the offset, so even the images a model was
    # trained on show it, and more images give a steadier one (DRIVE's vary from image to image).
    model, images = load_for_inference(run / "best.keras"), training_images(prepared)
    # F1 at the threshold predict.py will use; threshold = auto is chosen afterwards, on the moved maps.
    at = 0.5 if testing["threshold"] == "auto" else testing["threshold"]
    offset, before, after = best_offset(maps(model, images, "label offset"), [s["label"] for s in images],
                                        [s["fov"] for s in images], at)
    described = f"the {plural(len(images), 'training image')}"
    moved = f"{offset_words(offset)}, F1 {before:.4f} -> {after:.4f}" if any(offset) else (
        f"F1 {before:.4f}; no move gains {MIN_GAIN} or more")
    print(f"Label offset on {described}: {offset_text(offset)} ({moved})")
    info = {"label_offset": list(offset), "label_offset_source": described, "label_offset_f1": [before, after]}
    if not prepared.holdout:
        return {**info, "threshold": 0.5, "thresholds": {"best": 0.5, "last": 0.5},
                "threshold_source": "default: no holdout images"}
    labels = np.concatenate([s["label"][s["fov"]] for s in prepared.holdout])
    scored = {}  # checkpoint -> (threshold, F1); best.keras is last.keras when one_model
    for name in ("best",) if one_model else ("best", "last"):
        # The best-F1 threshold of each checkpoint: the best epoch's need not suit the last.
        if name != "best":
            model = load_for_inference(run / f"{name}.keras")
        probs = np.concatenate([shift_map(p, offset)[s["fov"]] for p, s in
                                zip(maps(model, prepared.holdout, f"threshold of {name}.keras"), prepared.holdout)])
        scored[name] = best_f1_threshold(probs, labels)
    thresholds = {name: float(scored.get(name, scored["best"])[0]) for name in ("best", "last")}
    return {**info, "threshold": thresholds["best"], "thresholds": thresholds,
            "threshold_source": "best F1 on the holdout images, their maps moved by the label offset",
            "holdout_best_f1": float(scored["best"][1])}


def offset_words(offset: tuple[float, float]) -> str:
    """'maps moved 0.625 px up and 0.25 px left', for an offset (dy, dx) = (-0.625, -0.25)."""
    dy, dx = offset
    parts = [f"{abs(v):g} px {word[v > 0]}" for v, word in ((dy, ("up", "down")), (dx, ("left", "right"))) if v]
    return "maps moved " + " and ".join(parts)


def finish(config: Config, prepared: Prepared, run: Path, monitor: str, minutes: float, ended_before: bool,
           command: str) -> int:
    """Write the run's final files: learning curves, the binary label offsets and thresholds, model_info.json and
    the summary."""
    from lib.callbacks import read_state

    history = read_log(run / "log.csv")
    state = read_state(run)
    save_learning_curves(history, run / "learning_curves.png",
                         None if state["best_epoch"] is None else (monitor, state["best_epoch"]))
    epochs_run = len(history.get("epoch", []))
    info = {"monitor": monitor, "best": state["best"], "best_epoch": state["best_epoch"], "epochs_run": epochs_run,
            "minutes_this_session": round(minutes, 2), "data_digest": prepared.digest}
    if config["model"]["n_classes"] == 1:  # several classes take the argmax
        info.update(binary_calibration(config, prepared, run, state["best_epoch"] in (None, epochs_run)))
    write_json(run / "model_info.json", info)
    write_json(run / FINISHED, {**info, "command": command})
    shutil.rmtree(run / "backup", ignore_errors=True)  # kept until now: a kill before FINISHED resumes at the end
    outcome = (f"no epoch was scored on {monitor}, so best.keras is the last epoch" if state["best"] is None else
               f"best {monitor} = {state['best']:.4f} at epoch {state['best_epoch']}")
    took = "(training had ended before)" if ended_before else f"in {minutes:.1f} min"
    print(f"\nFinished {took}; {outcome}."
          f"\nRun folder: {run} (best.keras, last.keras, log.csv, learning_curves.png)")
    return 0


if __name__ == "__main__":
    run_cli(main)

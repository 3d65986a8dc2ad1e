"""Run folders: create, resume an unfinished run, refuse to overwrite a finished one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from lib.config import Config, load_run_config
from lib.errors import UserError
from lib.fingerprint import describe_differences, setting_differences
from lib.outputs import LEFTOVER, is_prediction_output
from lib.processes import may_be_running, this_host

FINISHED = "training_summary.json"
CONFIG_NAME = "configuration.txt"
LOCK = ".training.lock"  # held by the train.py training the run
# Everything train.py and predict.py write into a run folder: --overwrite deletes a folder that holds nothing else.
RUN_CONTENTS = {CONFIG_NAME, FINISHED, "preprocessing.json", "best.keras", "last.keras", "checkpoint_state.json",
                "log.csv", "learning_curves.png", "model_summary.txt", "model_info.json", "tensorboard", "backup",
                "predictions", LOCK}
# Settings training never reads (predict.py takes them from the current configuration): a resume may change them.
RESUMABLE_CHANGES = {f"testing settings.{key}" for key in ("checkpoint", "threshold", "watershed_seed", "batch_size")}


def _lock_holder(folder: Path) -> str | None:
    """'process PID on HOST since TIME' when a train.py that may still run holds the folder's lock, else None."""
    try:
        holder = json.loads((folder / LOCK).read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a lock cut short by a kill: its process never started training
    if not may_be_running(pid, host):
        return None  # killed without releasing it
    return f"process {pid} on {host} since {holder.get('started', '?')}"


def _refuse_if_in_use(folder: Path) -> None:
    holder = _lock_holder(folder)
    if holder:
        raise UserError(f"{folder} is being trained now by {holder}. Wait for it to finish (or stop it), or choose "
                        "another name with --set experiment.name=NEW_NAME. If no such training runs, delete "
                        f"{folder / LOCK}.")


@contextlib.contextmanager
def run_lock(folder: Path, started: str) -> Iterator[None]:
    """Hold the run folder's lock while training, so a second train.py of the same run is refused."""
    path = folder / LOCK
    text = json.dumps({"pid": os.getpid(), "host": this_host(), "started": started})
    for _ in range(2):
        try:
            with open(path, "x") as handle:  # exclusive: of two processes starting together, one gets it
                handle.write(text)
            break
        except FileExistsError:
            _refuse_if_in_use(folder)
            path.unlink(missing_ok=True)  # left by a process that no longer runs
    else:
        raise UserError(f"{path} keeps being taken by other processes: check that no other train.py uses "
                        f"{folder}, then run the same command again.")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _foreign_files(folder: Path) -> list[str]:
    """Entries of a run folder that train.py and predict.py do not write (relative names)."""
    foreign = [p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())
               if p.name not in RUN_CONTENTS and not LEFTOVER.fullmatch(p.name)]
    tensorboard = folder / "tensorboard"
    foreign += [f"tensorboard/{path.relative_to(tensorboard)}" for path in sorted(tensorboard.rglob("*"))
                if path.is_file() and not path.name.startswith("events.out.tfevents.")]
    predictions = folder / "predictions"
    if predictions.is_symlink() or (predictions.exists() and not predictions.is_dir()):
        return foreign + ["predictions (not a folder of predictions)"]
    for output in sorted(predictions.iterdir()) if predictions.is_dir() else []:  # a folder per prediction
        if output.is_symlink() or not output.is_dir():
            foreign += [] if LEFTOVER.fullmatch(output.name) else [f"predictions/{output.name}"]
            continue
        foreign += [f"predictions/{output.name}/{path.name}" for path in sorted(output.iterdir())
                    if path.is_symlink() or not is_prediction_output(path.name)
                    or (path.is_dir() and not LEFTOVER.fullmatch(path.name))]
    return foreign


def prepare_run_folder(config: Config, overwrite: bool) -> tuple[Path, bool]:
    """Return (run folder, resuming); a finished run is kept unless overwrite is asked for."""
    folder = Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    saved = folder / CONFIG_NAME
    if folder.is_dir():
        _refuse_if_in_use(folder)  # before --overwrite deletes it under the other process
    if folder.exists() and overwrite:
        if folder.is_symlink():
            raise UserError(f"{folder} is a link, so --overwrite will not delete it or what it points to. Remove "
                            "the link yourself, or choose another name with --set experiment.name=NEW_NAME.")
        if not folder.is_dir() or (any(folder.iterdir()) and not saved.exists()):
            raise UserError(f"{folder} exists but is not a run folder (no {CONFIG_NAME} in it), so --overwrite "
                            "will not delete it. Choose another name with --set experiment.name=NEW_NAME, or "
                            "move it away.")
        others = _foreign_files(folder)
        if others:
            raise UserError(f"{folder} holds files that train.py and predict.py do not write ({', '.join(others[:5])}"
                            f"{', ...' if len(others) > 5 else ''}), so --overwrite will not delete it: it may not "
                            "be a run folder. Move those files away, or choose another name with --set "
                            "experiment.name=NEW_NAME.")
        contents = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        print(f"Deleting the earlier run {folder} (--overwrite): {', '.join(contents) or 'empty'}")
        shutil.rmtree(folder)
    if (folder / FINISHED).exists():
        raise UserError(f"{folder} already holds a finished run. Use --overwrite to replace it, or "
                        "choose another name with --set experiment.name=NEW_NAME.")
    if saved.exists():
        differences = setting_differences(load_run_config(saved, config), config)
        differences = {key: values for key, values in differences.items() if key not in RESUMABLE_CHANGES}
        if differences:
            raise UserError(f"{folder} holds an unfinished run made with another configuration: "
                            f"{describe_differences(differences)}. Rerun with the run's settings to resume it, "
                            "with --overwrite to start over, or choose another name with --set "
                            "experiment.name=NEW_NAME.")
        return folder, True
    folder.mkdir(parents=True, exist_ok=True)
    return folder, False


def find_run_folder(config: Config, run: str | None) -> Path:
    """The run folder predict.py reads: --run PATH, or <runs_dir>/<name> from the configuration."""
    folder = Path(run) if run else Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    if not (folder / CONFIG_NAME).is_file():
        raise UserError(f"{folder} is not a run folder (no {CONFIG_NAME} in it). Train first with "
                        "train.py, or pass --run PATH_TO_RUN_FOLDER.")
    return folder

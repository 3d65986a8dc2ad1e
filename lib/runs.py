"""Run folders: create, resume an unfinished run, refuse to overwrite a finished one."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from lib.config import Config, load_run_config
from lib.errors import UserError
from lib.fingerprint import PATCH_KEYS, describe_differences, setting_differences
from lib.locks import exclusive_lock, lock_holder
from lib.outputs import LEFTOVER, earlier_outputs
from lib.progress import listed

FINISHED = "training_summary.json"
CONFIG_NAME = "configuration.txt"
STATE_NAME = "checkpoint_state.json"  # the best checkpoint's score and epoch, and whether training has ended
# Everything train.py and predict.py write into a run folder: --overwrite deletes a folder that holds nothing else.
RUN_CONTENTS = {CONFIG_NAME, FINISHED, STATE_NAME, "preprocessing.json", "best.keras", "last.keras",
                "log.csv", "learning_curves.png", "model_summary.txt", "model_info.json", "tensorboard", "backup",
                "predictions"}
# Settings training never reads: predict.py takes them from the current configuration.
UNREAD_BY_TRAINING = {f"testing settings.{key}" for key in ("checkpoint", "label_offset", "watershed_seed",
                                                            "close_membranes", "batch_size")}
# A resume may change those, the threshold (read only when training ends, to find the label offset) and the patch
# settings: the patches come from dataset.h5, whose settings the run records. A finished run trained on other
# patches, or calibrated at another threshold, is another run.
RESUMABLE_CHANGES = (UNREAD_BY_TRAINING | {"testing settings.threshold"}
                     | {f"training settings.{key}" for key in PATCH_KEYS})


def lock_path(folder: Path) -> Path:
    """The lock file of a run: beside its folder, not in it, because --overwrite deletes the folder under it."""
    return folder.parent / f".{folder.name}.training.lock"


def training_now(folder: Path) -> str | None:
    """Which train.py holds the run's lock ('process PID on HOST (started TIME)'), or None when none does."""
    return lock_holder(lock_path(folder))


def run_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the run's lock while train.py works on it, from before --overwrite may delete it to the end, so a second
    train.py of the same run is refused. A killed process holds no lock: the system drops it."""
    return exclusive_lock(lock_path(folder), f"{folder} is being trained now by {{holder}}. Wait for it to finish "
                          "(or stop it), or choose another name with --set experiment.name=NEW_NAME.")


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
        # Only what a prediction there wrote (its outputs.txt, or its summary for older ones): a file merely named
        # as predictions are, in a folder of the user's, is theirs, as predict.py --overwrite holds too.
        written = earlier_outputs(output) or []
        foreign += [f"predictions/{output.name}/{path.name}" for path in sorted(output.iterdir())
                    if path.is_symlink() or (path.is_dir() and not LEFTOVER.fullmatch(path.name))
                    or (path.is_file() and path.name not in written and not LEFTOVER.fullmatch(path.name))]
    return foreign


def prepare_run_folder(config: Config, overwrite: bool) -> tuple[Path, bool]:
    """Return (run folder, resuming); a finished run is kept unless overwrite is asked for."""
    folder = Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    saved = folder / CONFIG_NAME
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
            raise UserError(f"{folder} holds files that train.py and predict.py do not write ({listed(others, 5)}), "
                            "so --overwrite will not delete it: it may not be a run folder. Move those files away, "
                            "or choose another name with --set experiment.name=NEW_NAME.")
        contents = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        print(f"Deleting the earlier run {folder} (--overwrite): {', '.join(contents) or 'empty'}")
        shutil.rmtree(folder)
    if (folder / FINISHED).exists():
        try:
            changed = _changed_settings(saved, config, UNREAD_BY_TRAINING) if saved.exists() else {}
        except UserError:  # an unreadable saved configuration: the refusal stands without the differences
            changed = {}
        made = f" made with other settings ({describe_differences(changed)})" if changed else ""
        testing = changed and all(key.startswith("testing settings.") for key in changed)
        only = (" To predict with these testing settings, run predict.py alone: it takes them from the "
                "configuration (train.py used the run's own to score its holdout images and find the label "
                "offset)." if testing else "")
        raise UserError(f"{folder} already holds a finished run{made}, which cannot be trained further.{only} To "
                        "train more (e.g. more epochs), choose another name with --set experiment.name=NEW_NAME, or "
                        "replace this one with --overwrite.")
    if saved.exists():
        differences = _changed_settings(saved, config)
        if differences:
            raise UserError(f"{folder} holds an unfinished run made with another configuration: "
                            f"{describe_differences(differences)}. Rerun with the run's settings to resume it, "
                            "with --overwrite to start over, or choose another name with --set "
                            "experiment.name=NEW_NAME.")
        return folder, True
    folder.mkdir(parents=True, exist_ok=True)
    return folder, False


def _changed_settings(saved: Path, config: Config, allowed: set[str] = RESUMABLE_CHANGES) -> dict:
    """The settings of the run saved in that configuration file that config changes, less the allowed ones."""
    differences = setting_differences(load_run_config(saved, config), config)
    return {key: values for key, values in differences.items() if key not in allowed}


def finished_as_configured(config: Config) -> dict | None:
    """The training summary of the configured run when it has finished with these settings (a rerun of its command
    has nothing to do), else None."""
    folder = Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    saved = folder / CONFIG_NAME
    if not (folder / FINISHED).is_file() or not saved.is_file():
        return None
    try:
        if _changed_settings(saved, config, UNREAD_BY_TRAINING):
            return None
        summary = json.loads((folder / FINISHED).read_text(encoding="utf-8"))
    except (UserError, OSError, ValueError):
        return None  # unreadable: prepare_run_folder refuses the folder as before
    return summary if isinstance(summary, dict) else None


def find_run_folder(config: Config, run: str | None) -> Path:
    """The run folder predict.py reads: --run PATH, or <runs_dir>/<name> from the configuration."""
    folder = Path(run) if run else Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    if not (folder / CONFIG_NAME).is_file():
        raise UserError(f"{folder} is not a run folder (no {CONFIG_NAME} in it). Train first with "
                        "train.py, or pass --run PATH_TO_RUN_FOLDER.")
    return folder

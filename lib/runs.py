"""Run folders: create, resume an unfinished run, refuse to overwrite a finished one."""
from __future__ import annotations

import shutil
from pathlib import Path

from lib.config import Config, load_run_config
from lib.errors import UserError

FINISHED = "training_summary.json"
CONFIG_NAME = "configuration.txt"
# Everything train.py and predict.py write into a run folder: --overwrite deletes a folder that holds nothing else.
RUN_CONTENTS = {CONFIG_NAME, FINISHED, "preprocessing.json", "best.keras", "last.keras", "checkpoint_state.json",
                "log.csv", "learning_curves.png", "model_summary.txt", "model_info.json", "tensorboard", "backup",
                "predictions"}


def prepare_run_folder(config: Config, overwrite: bool) -> tuple[Path, bool]:
    """Return (run folder, resuming); a finished run is kept unless overwrite is asked for."""
    folder = Path(config["experiment"]["runs_dir"]) / config["experiment"]["name"]
    saved = folder / CONFIG_NAME
    if folder.exists() and overwrite:
        if not folder.is_dir() or (any(folder.iterdir()) and not saved.exists()):
            raise UserError(f"{folder} exists but is not a run folder (no {CONFIG_NAME} in it), so --overwrite "
                            "will not delete it. Choose another name with --set experiment.name=NEW_NAME, or "
                            "move it away.")
        # Hidden files are the temporary files of writes a kill interrupted.
        others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                        if p.name not in RUN_CONTENTS and not p.name.startswith("."))
        if others:
            raise UserError(f"{folder} holds files that train.py does not write ({', '.join(others[:5])}"
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
        if load_run_config(saved, config) != config:
            raise UserError(f"{folder} holds an unfinished run made with a different configuration "
                            f"(see {saved}). Rerun with --overwrite to start over, or choose another "
                            "name with --set experiment.name=NEW_NAME.")
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

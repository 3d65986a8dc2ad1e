"""Run folders: create, resume an unfinished run, refuse to overwrite a finished one."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from lib.config import Config, load_run_config
from lib.errors import UserError
from lib.fingerprint import describe_differences, setting_differences

FINISHED = "training_summary.json"
CONFIG_NAME = "configuration.txt"
# Everything train.py and predict.py write into a run folder: --overwrite deletes a folder that holds nothing else.
RUN_CONTENTS = {CONFIG_NAME, FINISHED, "preprocessing.json", "best.keras", "last.keras", "checkpoint_state.json",
                "log.csv", "learning_curves.png", "model_summary.txt", "model_info.json", "tensorboard", "backup",
                "predictions"}
# What predict.py writes into its output folder: per image <stem><suffix>, and once per prediction.
OUTPUT_SUFFIXES = ("_probability.png", "_binary.png", "_compare.png", "_overlay.png", "_cells.png",
                   "_classes.png", "_color.png")
MANIFEST = "outputs.txt"  # the files one prediction wrote: what predict.py --overwrite replaces
OUTPUT_FILES = ("summary.txt", "metrics.json", "per_image.csv", "roc.png", "pr.png", "legend.png",
                "confusion_matrix.png", MANIFEST)
MANIFEST_HEADER = "# predict.py wrote these files; predict.py --overwrite replaces them"
# Hidden files a kill can leave: lib.atomic's temporary files and predict.py's unfinished output folders.
_LEFTOVER = re.compile(r"\..*\.tmp(\.\w+)?|\.predicting-.*")


def is_prediction_output(name: str) -> bool:
    """Whether a file name is one predict.py writes (or a leftover of an interrupted write)."""
    return name in OUTPUT_FILES or name.endswith(OUTPUT_SUFFIXES) or bool(_LEFTOVER.fullmatch(name))


def _foreign_files(folder: Path) -> list[str]:
    """Entries of a run folder that train.py and predict.py do not write (relative names)."""
    foreign = [p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())
               if p.name not in RUN_CONTENTS and not _LEFTOVER.fullmatch(p.name)]
    predictions = folder / "predictions"
    if predictions.is_symlink():
        return foreign + ["predictions (a link)"]
    for output in sorted(predictions.iterdir()) if predictions.is_dir() else []:  # a folder per prediction
        if output.is_symlink() or not output.is_dir():
            foreign += [] if _LEFTOVER.fullmatch(output.name) else [f"predictions/{output.name}"]
            continue
        foreign += [f"predictions/{output.name}/{path.name}" for path in sorted(output.iterdir())
                    if path.is_symlink() or not is_prediction_output(path.name)
                    or (path.is_dir() and not _LEFTOVER.fullmatch(path.name))]
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
        # [testing settings] only choose how the model is scored: a resume may change them.
        earlier = {section: keys for section, keys in load_run_config(saved, config).items()
                   if section != "testing settings"}
        differences = setting_differences(earlier, {k: v for k, v in config.items() if k != "testing settings"})
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

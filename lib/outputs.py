"""predict.py's output folder: what a prediction wrote there (outputs.txt), and replacing it only when asked."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterable

from lib.atomic import write_text
from lib.errors import UserError
from lib.progress import listed

# What predict.py writes into its output folder: per image <stem><suffix>, and once per prediction.
OUTPUT_SUFFIXES = ("_probability.png", "_binary.png", "_compare.png", "_overlay.png", "_cells.png",
                   "_classes.png", "_color.png")
MANIFEST = "outputs.txt"  # the files one prediction wrote: what predict.py --overwrite replaces
OUTPUT_FILES = ("summary.txt", "metrics.json", "per_image.csv", "roc.png", "pr.png", "legend.png",
                "confusion_matrix.png", MANIFEST)
MANIFEST_HEADER = "# predict.py wrote these files; predict.py --overwrite replaces them"
# Hidden files a kill can leave: lib.atomic's temporary files and predict.py's unfinished output folders.
LEFTOVER = re.compile(r"\..*\.tmp(\.\w+)?|\.predicting-.*")
# predict.py's unfinished output folder: .predicting-PID@HOST-RANDOM (tempfile's random part has no "-").
STAGING = re.compile(r"\.predicting-(\d+)@([^@]+)-[^-]+")


# What each kind of file shows, for the key at the end of summary.txt: (with labels, without).
_KEY = {
    "_probability.png": ("the probability, 0 ... 1 as gray levels 0 ... 255",) * 2,
    "_binary.png": ("the map at the threshold",) * 2,
    "_compare.png": ("image | label | prediction", "image | prediction"),
    "_overlay.png": ("green: found (true positive), red: false positive, blue: missed (false negative)",
                     "the prediction in green"),
    "_cells.png": ("the watershed's cells, one colour each",) * 2,
    "_classes.png": ("class indices, as the labels hold them",) * 2,
    "_color.png": ("the classes in their colours (legend.png)",) * 2,
    "roc.png": ("ROC curve of the pooled FOV pixels; the dot marks the threshold",) * 2,
    "pr.png": ("precision-recall curve, likewise",) * 2,
    "confusion_matrix.png": ("pooled confusion matrix, rows normalized",) * 2,
    "per_image.csv": ("each image's scores (metrics.json holds them all)",) * 2,
}


def output_key(names: Iterable[str], labelled: bool | None) -> list[str]:
    """Lines saying what each kind of file among names shows (<image>_overlay.png: green ...), in the order
    predict.py writes them. labelled: whether the images had labels (True), none had (False), or not known for
    each (None: both forms are described), since compare and overlay differ."""
    present = set()
    for name in names:
        present.update(kind for kind in _KEY if name.endswith(kind))

    def text(with_label: str, without: str) -> str:
        if labelled is None and with_label != without:
            return f"{with_label} (an image without a label: {without})"
        return with_label if labelled in (True, None) else without

    shown = [(f"<image>{kind}" if kind.startswith("_") else kind, text(*texts))
             for kind, texts in _KEY.items() if kind in present]
    width = max((len(shown_name) for shown_name, _ in shown), default=0)
    return [f"  {shown_name.ljust(width)}  {text}" for shown_name, text in shown]


def staging_prefix() -> str:
    """The name start of this process's hidden folder of unfinished outputs, which names the process."""
    return f".predicting-{os.getpid()}@{socket.gethostname()}-"


def _gone(pid: int, host: str) -> bool:
    """Whether the process that named a folder is known to have ended: it ran on this machine and no longer runs
    (or it had this process's number, before a restart: this one names its folder only after the cleaning)."""
    if host != socket.gethostname() or os.name == "nt":
        return False  # cannot be checked from here (on Windows os.kill would end the process)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False


def remove_abandoned(out: Path) -> list[str]:
    """Delete the hidden folders that predictions killed before they finished left in out (their process is gone);
    return their names. Those of predictions that may still run are kept."""
    removed = []
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        match = STAGING.fullmatch(path.name)
        if match and path.is_dir() and not path.is_symlink() and _gone(int(match[1]), match[2]):
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


def is_prediction_output(name: str) -> bool:
    """Whether a file name is one predict.py writes (or a leftover of an interrupted write)."""
    return name in OUTPUT_FILES or name.endswith(OUTPUT_SUFFIXES) or bool(LEFTOVER.fullmatch(name))


def earlier_outputs(out: Path) -> list[str] | None:
    """The files of the prediction in out, as its outputs.txt lists them (summary.txt first), or None when
    out holds none. Only names predict.py writes count: a file a user named outputs.txt lists nothing."""
    summary, manifest = out / "summary.txt", out / MANIFEST
    if manifest.is_file():
        lines = manifest.read_text(errors="replace").splitlines()
        if lines[:1] == [MANIFEST_HEADER]:
            return ["summary.txt", *(name for name in lines[1:] if is_prediction_output(name)
                                     and Path(name).name == name and name != "summary.txt"), MANIFEST]
    if summary.is_file() and summary.read_text(errors="replace").startswith("run: "):
        # Written before outputs.txt existed: every file named as predict.py names its files.
        return ["summary.txt"] + [path.name for path in sorted(out.iterdir()) if path.is_file()
                                  and is_prediction_output(path.name) and path.name not in ("summary.txt", MANIFEST)]
    return None


def clear_outputs(out: Path) -> int:
    """Delete the files of the earlier prediction in out (see earlier_outputs), summary first; keep anything
    else. Returns how many were deleted."""
    earlier = [out / name for name in earlier_outputs(out) or []]
    earlier = list(dict.fromkeys(path for path in earlier if path.is_file()))
    for path in earlier:
        path.unlink()
    return len(earlier)


def publish(staging: Path, out: Path, earlier: list[str] | None) -> int:
    """Move a finished prediction from staging into out, replacing the earlier one (clear_outputs); summary.txt
    last, so a folder with a summary holds a complete set. earlier: what out held when the run began; another
    prediction finished there since is kept. Returns how many earlier files were deleted."""
    if earlier_outputs(out) != earlier:
        raise UserError(f"another prediction wrote into {out} while this one ran; its files are kept and this "
                        "one's are not written. Run again with another --output.")
    removed = clear_outputs(out)
    names = sorted(path.name for path in staging.iterdir() if path.name != "summary.txt")
    write_text(out / MANIFEST, "".join(f"{line}\n" for line in [MANIFEST_HEADER, *names, "summary.txt"]))
    for name in [*names, "summary.txt"]:
        os.replace(staging / name, out / name)
    return removed


# What a prediction segments, and the digests of the files it is made from: a difference there is said in words of
# its own ("of other images", "made from another best.keras"), not as a setting.
SOURCE_KEYS = ("data", "input", "mask", "made_from")


def recorded_settings(out: Path) -> dict | None:
    """The settings the prediction in out was made with, as its metrics.json records them (None without one: the
    images had no labels)."""
    written = earlier_outputs(out)
    if not written or "metrics.json" not in written:
        return None
    try:
        settings = json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def _as_written(settings: dict) -> dict:
    return json.loads(json.dumps(settings))  # JSON has lists where the settings may hold tuples


def setting_changes(recorded: dict, settings: dict) -> list[str]:
    """'threshold 0.5 (now 0.4)' for each setting that differs from the recorded ones, what is segmented aside."""
    now = _as_written(settings)
    return [f"{key} {json.dumps(recorded.get(key))} (now {json.dumps(now.get(key))})"
            for key in dict.fromkeys([*recorded, *now]) if key not in SOURCE_KEYS and recorded.get(key) != now.get(key)]


def remade_files(recorded: dict, settings: dict) -> list[str]:
    """The files the settings' made_from names (checkpoint, dataset.h5) whose content differs from the recorded."""
    before, now = recorded.get("made_from") or {}, _as_written(settings).get("made_from") or {}
    return [name for name, digest in now.items() if before.get(name) != digest]


def same_prediction(out: Path, settings: dict) -> str | None:
    """The summary of the prediction in out when it was made with these settings (made_from included: the same
    checkpoint and dataset.h5 by content) and all its files are there, so that running its command again has
    nothing to do; else None."""
    recorded = recorded_settings(out)
    if recorded is None or recorded != _as_written(settings):
        return None
    if not all((out / name).is_file() for name in earlier_outputs(out) or []):
        return None  # some of its files were deleted: making them again is work to do
    try:
        return (out / "summary.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _earlier_source(out: Path) -> str | None:
    """What the earlier prediction in out segmented, as its summary.txt records it ('input: ...' or 'data: ...')."""
    try:
        lines = (out / "summary.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((line for line in lines if line.startswith(("input: ", "data: "))), None)


def check_output_folder(out: Path, overwrite: bool, input_path: Path | None, source: str | None = None,
                        changes: Iterable[str] = (), remade: Iterable[str] = (),
                        dataset_dir: Path | None = None) -> list[str] | None:
    """Refuse an output folder that holds earlier predictions (without --overwrite), files named as predictions
    that no earlier prediction wrote, the --input images or a folder of the dataset (the maps would be read as
    images or labels), or that cannot be written. source: what this prediction segments, as summary.txt records
    it, to say when the earlier one segmented something else; changes: the settings it was made with otherwise
    (setting_changes); remade: the files it was made from that have changed since (remade_files).
    Returns the earlier prediction's files (earlier_outputs)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file, not a folder: choose another --output.")
    folder = None if input_path is None else input_path if input_path.is_dir() else input_path.parent
    if folder is not None and folder.resolve() == out.resolve():
        raise UserError(f"--output {out} is the folder of the --input images: write the predictions to another "
                        "folder, so that they are never read, or deleted, as images.")
    if dataset_dir is not None and out.resolve().is_relative_to(dataset_dir.resolve()):
        raise UserError(f"--output {out} is inside the dataset folder ([data paths] dataset_dir = {dataset_dir}): "
                        "the next prepare_datasets.py would read the maps as images or labels. Write the predictions "
                        "to a folder outside it.")
    earlier = earlier_outputs(out) if out.is_dir() else None
    if earlier is not None and not overwrite:
        theirs = _earlier_source(out)
        other = (f" of other images ({theirs.replace(': ', ' ', 1)}, not {source.replace(': ', ' ', 1)})"
                 if theirs and source and theirs != source else "")
        changed = list(changes)
        if changed:
            other += f" made with other settings ({', '.join(changed)})"
        newer = list(remade)
        if newer:
            other += f" made from another {' and another '.join(newer)}"
        raise UserError(f"{out} already holds predictions{other}. Use --overwrite to replace them, "
                        "or --output NEW_FOLDER to keep both.")
    if out.is_dir():
        # --overwrite replaces an earlier prediction's files, never others that only share their names.
        theirs = [path.name for path in sorted(out.iterdir()) if path.is_file() and not path.name.startswith(".")
                  and is_prediction_output(path.name) and path.name not in (earlier or [])]
        if theirs:
            raise UserError(f"{out} holds files named as predictions are ({listed(theirs, 4)}) that no earlier "
                            "prediction there wrote (its outputs.txt lists them): choose another --output, or move "
                            "those files away.")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{out} cannot be written: no permission. Choose another --output, or fix its "
                        "permissions (chmod u+w).")
    return earlier

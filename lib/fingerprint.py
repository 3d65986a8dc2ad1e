"""What a prepared dataset.h5 depends on: the settings and the source files, and how they differ from now."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from lib.readers import CONFIGURED_SPLIT

MULTICLASS_KEYS = ("class_names", "ignore_index", "palette")  # [data attributes] keys of multi-class tasks
# Settings that do not change what a model trained on the file sees or is scored on: train.py notes them.
TRAINING_NEUTRAL = ("seed", "data paths.dataset_dir", "data paths.test_ids", "data paths.test_fraction")
TRAINING_NEUTRAL_SECTIONS = ("patches",)
# [training settings] keys that prepare_datasets.py reads to cut the patches (the fingerprint's "patches").
PATCH_KEYS = ("N_subimgs", "inside_FOV", "foreground_fraction")
PATH_SETTINGS = ("data paths.dataset_dir", "data paths.prepared_dir", "experiment.runs_dir")  # compared normalized
FOV_FOLDER = "fov"  # derived FOV masks are also saved here, in prepared_dir, as <image>_fov.png


def fingerprint(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The settings dataset.h5 depends on; a file made with other values must be redone."""
    paths = config["data paths"]
    data_paths = {k: paths[k] for k in ("dataset", "dataset_dir", "holdout_ids")}
    # Keys added later count only where they change the result, so files prepared before stay valid.
    if paths["dataset"] in CONFIGURED_SPLIT:
        data_paths.update(test_ids=paths["test_ids"], test_fraction=paths["test_fraction"])
    if paths["resize"] != 1.0:
        data_paths["resize"] = paths["resize"]
    attributes = {k: v for k, v in config["data attributes"].items() if k not in MULTICLASS_KEYS}
    result = {
        "data paths": data_paths,
        "data attributes": attributes,
        "preprocessing": dict(config["preprocessing"]),
        # foreground_fraction only where it is on: files prepared before the key existed stay valid.
        "patches": {k: config["training settings"][k] for k in PATCH_KEYS
                    if k != "foreground_fraction" or config["training settings"][k]},
        "seed": config["experiment"]["seed"],
    }
    if config["model"]["n_classes"] > 1:
        result["classes"] = {"n_classes": config["model"]["n_classes"],
                             **{k: config["data attributes"][k] for k in MULTICLASS_KEYS}}
    # As stored in the file (JSON), so that a saved fingerprint compares equal to a fresh one.
    return json.loads(json.dumps(result))


def _as_configured(setting: str, value: Any) -> Any:
    """A fingerprint value as the configuration writes it: foreground_fraction, left out while off, is 0."""
    return 0 if value is None and setting == "patches.foreground_fraction" else value


def with_prepared_settings(config: Mapping[str, Mapping[str, Any]],
                           differences: Mapping[str, tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
    """The configuration with the settings of a dataset.h5 that differ from it (setting_differences) and that a
    model trained on the file used: its patch settings, and the dataset folder and test split its images came
    from. The seed stays the configuration's: it also seeds training."""
    sections = {name: dict(values) for name, values in config.items()}
    for setting, (prepared, _) in differences.items():
        section, _, key = setting.rpartition(".")
        if section == "patches":
            sections["training settings"][key] = _as_configured(setting, prepared)
        elif section == "data paths" and setting in TRAINING_NEUTRAL and prepared is not None:
            sections["data paths"][key] = prepared
    return sections


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def setting_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Setting (section.key) -> (value in the file, value now), for every setting that differs."""
    old, new = _flatten(saved), _flatten(wanted)
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if _comparable(key, old.get(key)) != _comparable(key, new.get(key))}


def _comparable(setting: str, value: Any) -> Any:
    # data/DRIVE/ and data/DRIVE name one folder: a spelling is no reason to prepare again, or to refuse a resume.
    return os.path.normpath(value) if setting in PATH_SETTINGS and isinstance(value, str) and value else value


def matters_for_training(setting: str) -> bool:
    """Whether a differing setting changes what a model trained on the file sees or is scored on."""
    return setting not in TRAINING_NEUTRAL and setting.split(".")[0] not in TRAINING_NEUTRAL_SECTIONS


def _configured_name(setting: str) -> str:
    """The configuration key (section.key, as --set takes it) a fingerprint setting comes from:
    patches.N_subimgs -> training settings.N_subimgs, seed -> experiment.seed."""
    section, _, key = setting.rpartition(".")
    if setting == "seed":
        return "experiment.seed"
    if section == "patches":
        return f"training settings.{key}"
    if section == "classes":
        return f"model.{key}" if key == "n_classes" else f"data attributes.{key}"
    return setting


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """'experiment.seed = 42 (now 7), training_settings.N_epochs = 16 (now 4)' for a message: names as --set takes
    them without quotes."""
    def shown(setting: str, value: Any) -> str:
        value = _as_configured(setting, value)
        return "(none)" if value is None else json.dumps(value) if not isinstance(value, str) else value

    return ", ".join(f"{_configured_name(key).replace(' ', '_')} = {shown(key, old)} (now {shown(key, new)})"
                     for key, (old, new) in differences.items())


def file_digest(path: Path) -> str:
    """A content digest of a file (BLAKE2b, 128 bits): tells a file that was only touched from one that was edited."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_files(root: Path, exclude: Iterable[Path] = (), digests: bool = False) -> dict[str, list]:
    """Relative path -> [size, modification time in ns] (and with digests, the file_digest) of every visible file
    under root, through linked folders, except the paths in exclude (prepare's own outputs, which may lie among the
    sources) and what is under them."""
    root = Path(root)
    skip = {Path(path).resolve() for path in exclude}
    seen: set[Path] = set()  # folders walked, by their real path: a link back up must not loop
    files: dict[str, list[int]] = {}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = Path(folder).resolve()
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                               and (Path(folder) / d).resolve() not in skip)
        for name in sorted(names):
            path = Path(folder) / name
            if name.startswith(".") or path.resolve() in skip or not path.exists():
                continue  # hidden, prepare's own, or a dangling link
            status = path.stat()
            entry: list = [status.st_size, status.st_mtime_ns]
            files[path.relative_to(root).as_posix()] = entry + [file_digest(path)] if digests else entry
    return files


def prepare_outputs(out_path: Path) -> list[Path]:
    """What prepare writes into prepared_dir, which may be the dataset's own folder: never a source file."""
    return [out_path, out_path.parent / FOV_FOLDER]


def source_changes(saved: Mapping[str, list[int]] | None, root: Path, out_path: Path) -> list[str]:
    """The files under root added, removed or changed since out_path (a dataset.h5) was prepared from them, as
    changed_files gives them. None saved (earlier versions kept no list), {} (a version that watched nothing in
    the dataset's own folder) or a removed dataset folder: nothing to compare, so no change."""
    if not saved or not root.is_dir():
        return []
    return changed_files(saved, source_files(root, exclude=prepare_outputs(out_path)), root)


def changed_files(saved: Mapping[str, list], current: Mapping[str, list], root: Path) -> list[str]:
    """'path (added|removed|changed)' for each source file under root that differs from when the file was
    prepared (saved, from source_files with digests) to now (current, without)."""
    changes = []
    for path in sorted(set(saved) | set(current)):
        if path not in current:
            changes.append(f"{path} (removed)")
        elif path not in saved:
            changes.append(f"{path} (added)")
        elif not _unchanged(saved[path], current[path], root / path):
            changes.append(f"{path} (changed)")
    return changes


def _unchanged(saved: list, current: list, path: Path) -> bool:
    if saved[0] != current[0]:
        return False  # another size
    if saved[1] == current[1]:
        return True
    # Touched but perhaps not edited (a copy, a checkout, a re-provisioned disk): the content decides, where it was
    # recorded (files prepared by earlier versions kept size and time only).
    return len(saved) > 2 and file_digest(path) == saved[2]

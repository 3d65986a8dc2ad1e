"""configuration.txt: one schema, loaded once into typed values, with strict checking and overrides."""
from __future__ import annotations

import configparser
import difflib
import math
import os
import re
from pathlib import Path
from typing import AbstractSet, Any, Callable, Mapping, Sequence

from lib.atomic import write_text
from lib.errors import UserError

Config = dict[str, dict[str, Any]]
Parser = Callable[[str], Any]


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _flips(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in ("all", "horizontal", "none"):
        return lowered
    try:
        return "all" if _bool(lowered) else "none"  # true/false: the key's values before it had three
    except ValueError:
        raise ValueError("expected all, horizontal or none") from None


def _bool_or(*words: str) -> Parser:
    """A parser of true/false that also takes these words as themselves (e.g. auto)."""
    def parse(text: str) -> bool | str:
        lowered = text.strip().lower()
        if lowered in words:
            return lowered
        try:
            return _bool(lowered)
        except ValueError:
            raise ValueError(f"expected true, false or {' or '.join(words)}") from None
    parse.__name__ = "|".join(("true", "false", *words))
    return parse


_tta_flips = _bool_or("horizontal", "rotations", "auto")
_auto_bool = _bool_or("auto")


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _id_list(text: str) -> list[int | str]:
    ids: list[int | str] = []
    for part in text.replace(",", " ").split():
        if part.isdigit():
            ids.append(int(part))
        elif re.fullmatch(r"[\w.-]*\d[\w.-]*", part):
            ids.append(part)   # a name with a number, e.g. CHASE_DB1's 01L, HRF's 05_dr, a file's case03
        else:
            raise ValueError(f"'{part}' is neither a number nor an image name with a number (01L, 05_dr, case03); "
                             "for an image whose name has no number, or has spaces, give its number, which "
                             "prepare_datasets.py lists as '1 (Patient 1 scan)'")
    return ids


# Longest file or folder name most file systems take (bytes); a run's lock file adds 15 to its name.
NAME_MAX = 255
MAX_RUN_NAME = NAME_MAX - len(".training.lock") - 1


def _run_name(text: str) -> str:
    name = text.strip()
    # The run folder is runs_dir/name, and --overwrite deletes it: the name must not reach outside runs_dir.
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError("give a plain folder name such as drive_holdout (not empty, no / or \\, not . or ..)")
    if len(name.encode()) > MAX_RUN_NAME:
        raise ValueError(f"{len(name.encode())} bytes long; a run name takes at most {MAX_RUN_NAME}, as file systems "
                         f"take names of {NAME_MAX} and its lock file adds 15")
    return name


_run_name.__name__ = "a run name"


def _folder(text: str) -> str:
    folder = os.path.expanduser(text.strip())  # as the shell does for --set: the same value means the same folder
    long = [part for part in Path(folder).parts if len(part.encode()) > NAME_MAX]
    if long:
        raise ValueError(f"the name '{long[0][:40]}...' in it is {len(long[0].encode())} bytes long; file systems "
                         f"take at most {NAME_MAX}")
    return folder


_folder.__name__ = "a folder path"


def _choice(*options: str) -> Parser:
    def parse(text: str) -> str:
        if text.strip() not in options:
            raise ValueError(_suggest(text.strip(), options).strip() or "none of these")
        return text.strip()
    parse.__name__ = "one of " + "|".join(options)
    return parse


def _int_choice(*options: int) -> Parser:
    def parse(text: str) -> int:
        value = int(text)
        if value not in options:
            raise ValueError("none of these")
        return value
    parse.__name__ = "one of " + "|".join(map(str, options))
    return parse


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _positive(kind: type) -> Parser:
    def parse(text: str) -> Any:
        value = _finite(kind(text))
        if value <= 0:
            raise ValueError("must be positive")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative(kind: type) -> Parser:
    def parse(text: str) -> Any:
        value = _finite(kind(text))
        if value < 0:
            raise ValueError("must be zero or more")
        return value
    parse.__name__ = f"non-negative {kind.__name__}"
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def _scale_list(text: str) -> list[float]:
    scales = [_finite(float(part)) for part in text.replace(",", " ").split()]
    if not scales or min(scales) <= 0:
        raise ValueError("give one or more positive factors")
    if len(set(scales)) != len(scales):
        raise ValueError("a factor is listed twice")
    return scales


def _unquoted(text: str) -> str:
    """text without the quotes around it, as YAML or TOML would have them (INI values take none)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and text[0] not in text[1:-1]:
        return text[1:-1]
    return text


def _name_list(text: str) -> list[str]:
    names = [_unquoted(part) for part in text.split(",") if part.strip()]
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    return names


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise ValueError("must be 0 to 4294967295 (2^32 - 1)")
    return value


def _ignore_index(text: str) -> int:
    value = int(text)
    if not -1 <= value <= 255:
        raise ValueError("must be -1 (none) or a label value 0..255")
    return value


def _palette(text: str) -> list[tuple[int, int, int]]:
    colours = []
    for part in re.split(r"[,;]", text):
        if not part.strip():
            continue
        values = part.split()
        if len(values) != 3 or not all(v.isdigit() and int(v) <= 255 for v in values):
            raise ValueError(f"'{part.strip()}' is not an 'R G B' triple of numbers 0..255")
        colours.append(tuple(int(v) for v in values))
    if len(set(colours)) != len(colours):
        raise ValueError("a colour is listed twice, so it would map to two classes")
    return colours


def _threshold(text: str) -> float | str:
    if text.strip() == "auto":
        return "auto"
    value = float(text)
    if not 0.0 < value < 1.0:
        raise ValueError("must be auto or a number in (0, 1)")
    return value


def _offset(text: str) -> list[float] | str:
    if text.strip() == "auto":
        return "auto"
    parts = [_finite(float(part)) for part in text.replace(",", " ").split()]
    if len(parts) != 2:
        raise ValueError("give auto, or two numbers: the rows and columns to move the maps by")
    if max(abs(v) for v in parts) > 8:
        raise ValueError("an offset of more than 8 pixels is a registration error, not an annotation habit")
    return parts


_bool.__name__ = "true|false"
_flips.__name__ = "all|horizontal|none"
_int_list.__name__ = "comma-separated integers"
_id_list.__name__ = "comma-separated image ids (numbers, or names with a number such as 01L, 05_dr)"
_fraction.__name__ = "number in [0, 1)"
_threshold.__name__ = "auto or a number in (0, 1)"
_offset.__name__ = "auto or two numbers dy, dx in pixels (at most 8)"
_scale_list.__name__ = "comma-separated positive factors"
_name_list.__name__ = "comma-separated unique names"
_ignore_index.__name__ = "-1 or an integer 0..255"
_seed.__name__ = "an integer 0..4294967295"
_palette.__name__ = "'R G B' triples separated by commas"

# section -> key -> (parser, one-line comment). The order here is the order of the written file.
SCHEMA: dict[str, dict[str, tuple[Parser, str]]] = {
    "data paths": {
        "dataset": (_choice("DRIVE", "ISBI2012", "STARE", "CHASE_DB1", "HRF", "folders", "sample", "CamVid"),
                    "dataset reader: DRIVE, ISBI2012, STARE, CHASE_DB1, HRF, folders (your own images/ + labels/), sample (generated DRIVE-like data, created if missing), or CamVid (multi-class, SegNet layout)"),
        "dataset_dir": (_folder, "folder holding the dataset in its original layout (see data/README.md)"),
        "prepared_dir": (_folder, "folder where prepare_datasets.py writes dataset.h5"),
        "holdout_ids": (_id_list, "training image ids kept out of training and scored as full images each epoch (e.g. 37,38,39,40); empty for none"),
        "test_ids": (_id_list, "image ids forming the test split of a dataset without a fixed split (STARE, HRF, folders without test/); empty: use test_fraction"),
        "test_fraction": (_fraction, "fraction of the images drawn with the seed as the test split when test_ids is empty (datasets without a fixed split); 0 for none"),
        "resize": (_positive(float), "resize factor applied when reading (e.g. 0.5 for HRF): images by area averaging, labels and masks by nearest neighbour"),
    },
    "experiment": {
        "name": (_run_name, "run name: the run folder is <runs_dir>/<name>"),
        "runs_dir": (_folder, "folder holding all run folders"),
        "seed": (_seed, "random seed for patch sampling, weight initialization and augmentation"),
    },
    "data attributes": {
        "patch_size": (_positive(int), "side of the square training patches in pixels (divisible by 2^depth)"),
        "channels": (_int_choice(1, 3), "1: convert to gray (see gray_mode), 3: keep RGB"),
        "positive_class": (_choice("membrane", "interior"), "ISBI 2012 only: which class is foreground"),
        "class_names": (_name_list, "multi-class only: names of classes 0 ... n_classes-1, comma-separated; empty: class_0, class_1, ..."),
        "ignore_index": (_ignore_index, "multi-class only: label value left out of loss and metrics (void; n_classes ... 255, e.g. 11 for CamVid); -1 for none"),
        "palette": (_palette, "multi-class only: colour of class 0, 1, ... as R G B triples separated by commas, plus optionally the void colour last; colour labels are mapped with it and predictions drawn in it; empty: index labels, default colours"),
    },
    "preprocessing": {
        "gray_mode": (_choice("luminance", "green"), "how RGB becomes gray: luminance (0.299R+0.587G+0.114B) or the green channel"),
        "standardize": (_bool, "subtract the mean and divide by the std of the training split (inside the FOV)"),
        "rescale": (_bool, "rescale each image to [0, 1] (inside the FOV) after standardization"),
        "clahe": (_bool, "contrast-limited adaptive histogram equalization (needs rescale), over tiles of 1/8 of the median training image, the same size in pixels for every image"),
        "clahe_clip": (_positive(float), "CLAHE clip limit (scikit-image equalize_adapthist clip_limit)"),
        "gamma": (_positive(float), "gamma correction exponent applied last; 1.0 disables it"),
    },
    "model": {
        "depth": (_positive(int), "number of pooling steps in the encoder"),
        "base_filters": (_positive(int), "filters of the first level; doubled at each level down"),
        "batch_norm": (_bool, "batch normalization after each convolution"),
        "dropout": (_fraction, "dropout rate between the two convolutions of each block (0 disables)"),
        "dropout_block": (_positive(int), "side in pixels of the squares dropout zeroes together (DropBlock); 1: single pixels (ordinary dropout)"),
        "residual": (_bool, "add a 1x1-convolution shortcut around the two convolutions of each block (a residual U-Net)"),
        "upsampling": (_choice("transpose", "bilinear"), "decoder upsampling: transposed convolution or bilinear resize + 1x1 conv"),
        "n_classes": (_positive(int), "1: binary task with a sigmoid head; more: softmax head over that many classes"),
        "refinements": (_non_negative(int), "IterNet-style refinement: a U-Net of depth 2 and half the base filters, one set of weights, applied this many times after the U-Net to the previous probabilities and the first level's features; every stage is trained against the labels (deep supervision) and the last one predicts; 0 disables it"),
    },
    "training settings": {
        "N_subimgs": (_positive(int), "number of random training patches written by prepare_datasets.py"),
        "inside_FOV": (_bool, "draw patch centres only inside the field of view"),
        "foreground_fraction": (_fraction, "fraction of the training patches centred on a labelled pixel (binary: foreground; several classes: of a class drawn uniformly among those in the image, so rare classes are seen), as nnU-Net oversamples foreground; the rest are drawn as before; 0 disables it"),
        "N_epochs": (_positive(int), "number of training epochs"),
        "steps_per_epoch": (_non_negative(int), "batches per epoch; 0 means one full pass over the training patches"),
        "batch_size": (_positive(int), "patches per batch: the global batch, split evenly between the devices of the strategy"),
        "learning_rate": (_positive(float), "peak Adam learning rate for the global batch_size (never rescaled with the number of devices)"),
        "weight_decay": (_non_negative(float), "decoupled weight decay of the convolution kernels (as AdamW): each step shrinks them by weight_decay x the current learning rate; 0 disables it"),
        "lr_schedule": (_choice("cosine", "constant"), "cosine: linear warm-up for one epoch, then cosine decay to zero by the last epoch or the time budget, whichever comes first; constant: fixed rate"),
        "ema_momentum": (_fraction, "moving average of the weights kept during training, used for validation, holdout scoring and the saved checkpoints: its momentum per step (e.g. 0.999: about the last tenth of the steps, at most about 1,000); 0 disables it"),
        "loss": (_choice("bce", "dice", "bce_dice", "bce_cldice", "cce", "cce_dice"), "training loss: bce, dice, bce_dice (sum of both), bce_cldice (bce + half the soft clDice loss, which scores centre lines, so thin vessels count as much as wide ones) for one class; cce (categorical cross-entropy) or cce_dice (cce + mean soft Dice) for several"),
        "class_weighting": (_choice("none", "median_frequency"), "multi-class only: cross-entropy class weights: none, or median_frequency (median class frequency / class frequency, from the training labels)"),
        "validation_fraction": (_fraction, "fraction of the training patches held out for validation loss"),
        "early_stopping_patience": (_non_negative(int), "stop after this many epochs without improvement of the monitored score; 0 disables"),
        "validate_every": (_non_negative(int), "score the holdout images every this many epochs and on the epoch training ends with (the last, or where the time budget stops it); 0 disables"),
        "max_train_minutes": (_non_negative(float), "wall-clock budget of train.py in minutes: it stops after the last epoch that fits; 0 means no limit"),
        "strategy": (_choice("auto", "single", "mirrored", "multi_worker"), "devices: auto (all local GPUs if more than one, else single), single, mirrored (all local GPUs) or multi_worker (machines listed in TF_CONFIG); mirrored and multi_worker need TensorFlow"),
        "mixed_precision": (_auto_bool, "mixed precision with float32 weights and output layer: float16 with loss scaling on a GPU, bfloat16 on a CPU with AMX (Intel Sapphire Rapids and later, TensorFlow backend); auto: wherever it is faster (a GPU, or a CPU with AMX: about twice as fast), float32 elsewhere; true: the same, with a warning where it has no effect; false: float32"),
        "jit_compile": (_choice("auto", "true", "false"), "XLA compilation of the training step: auto (Keras' choice: on for one GPU and JAX, off on CPU, with several devices and PyTorch), true or false"),
    },
    "augmentation": {
        "flips": (_flips, "all: random flips and 90-degree rotations; horizontal: left-right mirroring only (scenes with an up, e.g. roads); none"),
        "rotation_degrees": (_non_negative(float), "random rotation of up to this many degrees either way; 0 disables"),
        "scale": (_fraction, "random zoom by a factor in [1/(1+s), 1+s]; 0 disables"),
        "elastic_alpha": (_non_negative(float), "elastic deformation: std of the coarse-grid displacements in pixels; 0 disables"),
        "intensity": (_fraction, "random brightness, contrast and gamma change of about this fraction; 0 disables"),
    },
    "testing settings": {
        "window": (_positive(int), "sliding-window tile size in pixels (divisible by 2^depth)"),
        "stride": (_positive(int), "step between windows (rounded down to a multiple of 2^depth, at least 2^depth); smaller than window means averaged overlap"),
        "blend": (_choice("constant", "gaussian"), "how overlapping windows are averaged: constant or gaussian (centre-weighted)"),
        "batch_size": (_positive(int), "windows per prediction batch"),
        "tta_flips": (_tta_flips, "test-time augmentation: average the predictions of the flipped windows; true: all four flips (left-right only for a model trained with flips = horizontal), rotations: the four flips and their 90-degree rotations (eight views, twice the time of four), horizontal: left-right only (half the time of four), false: none; auto: all four flips where the model runs fast (a GPU, or bfloat16 on a CPU with AMX), none elsewhere or for a model trained with flips = none"),
        "tta_scales": (_scale_list, "test-time augmentation over scales: average the probabilities of the image inferred at each of these factors times zoom (e.g. 1.0, 1.3); 1.0 alone: one scale"),
        "threshold": (_threshold, "probability threshold for binary maps: a number, or auto (the best-F1 threshold found on the holdout images)"),
        "label_offset": (_offset, "binary maps only: move the probability maps by this many pixels (rows down, columns right, e.g. -0.5, 0) before thresholding, to where the labels' annotators drew the edges (ISBI 2012's membranes sit about 0.6 px above the image's); auto: the move train.py found with best.keras on the training images (the best F1 at the threshold, 0.5 for auto, within a pixel; 0, 0 unless it gains 0.001), except with predict.py --data; 0, 0: none"),
        "checkpoint": (_choice("best", "last"), "which checkpoint of the run predict.py uses"),
        "mirror_margin": (_non_negative(int), "pixels of mirrored image added on each side before inference and cropped after, so the model sees context instead of zero padding at the image border (the U-Net paper's overlap-tile; helps where structures reach the border, as in ISBI 2012); 0 disables it"),
        "zoom": (_positive(float), "resize each image by this factor before inference and the probabilities back to its size (another dataset: match vessel widths); 1 = as prepared"),
        "watershed_seed": (_fraction, "ISBI 2012 only: also split each slice into cells by a watershed of the membrane probabilities from seeds where they are below this value, scored as adapted_rand_error_watershed and drawn in NAME_cells.png; 0 disables it"),
        "close_membranes": (_bool, "ISBI 2012 only, with watershed_seed above 0: draw the borders of the watershed cells into the membrane probabilities as certain membrane, closing the gaps of the thresholded membranes, so that their cells are the watershed's; the PNGs and every score but adapted_rand_error_watershed come from the closed map"),
    },
}


def _key_index() -> dict[str, list[str]]:
    """Map each key name to the sections holding it (a few, like batch_size, are in several)."""
    index: dict[str, list[str]] = {}
    for section, keys in SCHEMA.items():
        for key in keys:
            index.setdefault(key, []).append(section)
    return index


def _normalize_section(name: str) -> str:
    return name.strip().replace("_", " ").lower()


def _suggest(word: str, options: Sequence[str]) -> str:
    # Keys are case-sensitive (N_subimgs), so PATCH_SIZE is unknown, yet plainly patch_size.
    by_case = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(by_case), n=1)
    return f" Did you mean '{by_case[close[0]]}'?" if close else ""


def _key_hint(key: str, section: str, value: str | None = None) -> str:
    """For a key unknown in section: the section(s) it belongs to (with the --set to give, for a --set value), else
    the closest key of section."""
    elsewhere = _key_index().get(key)
    if not elsewhere:
        return _suggest(key, list(SCHEMA[section]))
    where = " or ".join(f"[{other}]" for other in elsewhere)
    if value is None:
        return f" '{key}' belongs in {where}: move it there."
    return f" '{key}' belongs in {where}: --set {elsewhere[0].replace(' ', '_')}.{key}={value.strip()}"


def parse_override(text: str) -> tuple[str, str, str]:
    """Split 'section.key=value' (or 'key=value' for a unique key) into (section, key, value)."""
    if "=" not in text:
        raise UserError(f"--set '{text}' must look like section.key=value, e.g. --set training_settings.N_epochs=5")
    name, value = text.split("=", 1)
    name = name.strip()
    if "." in name:
        section, key = name.rsplit(".", 1)
        section = _normalize_section(section)
    else:
        key = name
        index = _key_index()
        sections = index.get(key, [])
        if not sections:
            raise UserError(f"--set '{text}': unknown key '{key}'. Valid keys: {', '.join(index)}."
                            f"{_suggest(key, list(index))}")
        if len(sections) > 1:
            raise UserError(f"--set '{text}': key '{key}' is in several sections ("
                            f"{', '.join(f'[{s}]' for s in sections)}); name the section, e.g. "
                            f"--set {sections[0].replace(' ', '_')}.{key}={value.strip()}")
        section = sections[0]
    if section not in SCHEMA:
        raise UserError(f"--set '{text}': unknown section '{section or name}'. Valid sections: "
                        f"{', '.join(SCHEMA)}.{_suggest(section, list(SCHEMA))}")
    if key not in SCHEMA[section]:
        raise UserError(f"--set '{text}': unknown key '{key}' in [{section}]. Valid keys: "
                        f"{', '.join(SCHEMA[section])}.{_key_hint(key, section, value)}")
    if re.search(r"(^|\s)[#;]|[\n\r]", value.strip()):
        # Saved into the run's configuration.txt, the rest would be read back as a comment or another line.
        raise UserError(f"--set {text!r}: a value cannot hold a line break, ' #' or ' ;' (which start a "
                        "comment in configuration files, also at its start); rename the path or value without them.")
    return section, key, value.strip()


def _indented_setting(value: str) -> str | None:
    """The first continuation line of a value that looks like a setting of its own ('key = value' with a known
    key): INI files join indented lines to the value above, which a long palette may want but a key never does."""
    for line in value.splitlines()[1:]:
        match = re.match(r"\s*([A-Za-z_]\w*)\s*[=:]", line)
        if match and match[1] in _key_index():
            return line.strip()
    return None


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), fallback: Config | None = None,
                from_current: Sequence[str] = ()) -> Config:
    """Read an INI configuration, apply 'section.key=value' overrides, and return typed values."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--config {path} is a folder: pass the configuration file itself (e.g. "
                        f"{path / 'configuration.txt'}).")
    if not path.is_file():
        raise UserError(f"configuration file {path} not found. Pass --config FILE, or copy "
                        "configuration.txt from the repository.")
    if not os.access(path, os.R_OK):
        # configparser skips a file it cannot open, which would surface as a missing key.
        raise UserError(f"configuration file {path} cannot be read: no permission. Fix its permissions "
                        "(e.g. chmod a+r), then run the same command again.")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.optionxform = str  # keys are case-sensitive (N_subimgs)
    try:
        parser.read(str(path), encoding="utf-8-sig")  # -sig: a byte-order mark, as Windows editors write, is no section
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a valid INI file: {exc}. Compare it with configuration.txt "
                        "in the repository.") from exc
    raw: dict[str, dict[str, str]] = {}
    obsolete = []
    named: dict[str, str] = {}
    for header in parser.sections():
        # [training_settings], as --set spells it, or [ Model ] is the section it plainly means.
        normal = _normalize_section(header)
        section = normal if normal in SCHEMA else header
        if section in named:
            raise UserError(f"{path}: [{named[section]}] and [{header}] are the same section; merge them into one "
                            f"[{section}].")
        named[section] = header
        if section in from_current:
            continue
        if section not in SCHEMA and fallback is not None:
            obsolete.append(f"[{section}]")
            continue
        if section not in SCHEMA:
            raise UserError(f"{path}: unknown section [{section}]. Valid sections: "
                            f"{', '.join(SCHEMA)}.{_suggest(section, list(SCHEMA))}")
        for key, value in parser.items(header):
            swallowed = _indented_setting(value)
            if swallowed:
                raise UserError(f"{path}: the line '{swallowed}' is indented, so it is read as part of the value of "
                                f"[{section}] {key} above it; remove the spaces or tabs before it.")
            if key not in SCHEMA[section] and fallback is not None:
                obsolete.append(f"{section}.{key}")  # a run saved by an older version
                continue
            if key not in SCHEMA[section]:
                raise UserError(f"{path}: unknown key '{key}' in [{section}]. Valid keys: "
                                f"{', '.join(SCHEMA[section])}.{_key_hint(key, section)}")
            raw.setdefault(section, {})[key] = value
    overridden = set()
    for override in overrides:
        section, key, value = parse_override(override)
        raw.setdefault(section, {})[key] = value
        overridden.add((section, key))
    if obsolete:
        print(f"note: {path} has settings this version no longer uses ({', '.join(obsolete)}); ignored.")
    return _typed(raw, str(path), fallback, from_current, overridden)


def load_run_config(path: str | os.PathLike, current: Config, from_current: Sequence[str] = ()) -> Config:
    """Load a run folder's saved configuration; newer keys and the `from_current` sections come from `current`."""
    return load_config(path, fallback=current, from_current=from_current)


def _typed(raw: dict[str, dict[str, str]], source: str, fallback: Config | None = None,
           from_current: Sequence[str] = (), overridden: AbstractSet[tuple[str, str]] = frozenset()) -> Config:
    if fallback is None:
        _check_complete(raw, source)
    config: Config = {}
    filled = []
    for section, keys in SCHEMA.items():
        config[section] = {}
        for key, (parse, comment) in keys.items():
            if key not in raw.get(section, {}):
                # A run saved before this key existed, or a section the caller takes from the current
                # configuration: the current configuration supplies it.
                config[section][key] = fallback[section][key]
                if section not in from_current:
                    filled.append(f"{section}.{key}")
                continue
            text = _unquoted(raw[section][key])
            if re.search(r"%\(\w+\)", text):
                raise UserError(f"{_origin(source, overridden, (section, key))}: [{section}] {key} = '{text}': "
                                "values are taken literally, %(name)s is not replaced by another setting. Write "
                                "the value out in full.")
            try:
                value = parse(text)
            except ValueError as exc:
                origin = _origin(source, overridden, (section, key))
                raise UserError(f"{origin}: [{section}] {key} = '{text}' is not valid: expected "
                                f"{parse.__name__} ({exc}). About {key}: {comment}.") from None
            config[section][key] = value
    if filled:
        print(f"note: {source} predates the keys {', '.join(filled)}; using their current values.")
    check_consistency(config, source + "".join(f" with the current [{section}]" for section in from_current),
                      overridden)
    return config


def _check_complete(raw: dict[str, dict[str, str]], source: str) -> None:
    """Refuse a configuration that lacks settings, naming all of them at once."""
    missing = [(section, key, comment) for section, keys in SCHEMA.items()
               for key, (_, comment) in keys.items() if key not in raw.get(section, {})]
    if not missing:
        return
    if not raw:
        raise UserError(f"{source} holds no settings (it needs all {len(missing)}). Start from configuration.txt in the "
                        "repository, or one of the configuration_*.txt profiles.")
    if len(missing) <= 5:
        listed = "; ".join(f"[{section}] {key} ({comment})" for section, key, comment in missing)
    else:
        listed = ", ".join(f"[{section}] {key}" for section, key, _ in missing[:12])
        listed += f" and {len(missing) - 12} more" if len(missing) > 12 else ""
    keys = "key" if len(missing) == 1 else f"{len(missing)} keys"
    raise UserError(f"{source}: missing {keys}: {listed}. Add them (configuration.txt in the repository has "
                    "each with its default and what it does), or start from configuration.txt.")


MAX_DEPTH = 16


def _origin(source: str, overridden: AbstractSet[tuple[str, str]], *keys: tuple[str, str]) -> str:
    """Where the values of keys came from, for a message: the file, the --set options that gave some of them, or only
    those options when they gave all."""
    given = [f"{section.replace(' ', '_')}.{key}" for section, key in keys if (section, key) in overridden]
    if len(given) == len(keys):
        return f"--set {', '.join(given)}"
    return f"{source} with --set {', '.join(given)}" if given else source


def check_consistency(config: Config, source: str,
                      overridden: AbstractSet[tuple[str, str]] = frozenset()) -> None:
    """Raise UserError for values that are valid alone but not together (sizes vs depth, loss vs classes)."""
    def origin(*keys: tuple[str, str]) -> str:
        return _origin(source, overridden, *keys)

    depth = config["model"]["depth"]
    if depth > MAX_DEPTH:
        # Checked before 2 ** depth: a huge depth would hang, or overflow the message's digits.
        raise UserError(f"{origin(('model', 'depth'))}: [model] depth = {depth} is too large: each level halves the "
                        f"patch, so use at most {MAX_DEPTH} (typically 3 to 5).")
    if config["model"]["refinements"] and depth < 2:
        # The refinement U-Net has depth 2 (lib.unet.REFINE_DEPTH): sizes must then divide by 4 whatever depth is.
        raise UserError(f"{origin(('model', 'refinements'), ('model', 'depth'))}: [model] refinements = "
                        f"{config['model']['refinements']} needs depth = 2 or more (the refinement is a U-Net of "
                        f"depth 2), got depth = {depth}. Raise depth, or set refinements = 0.")
    factor = 2 ** depth
    for section, key in (("data attributes", "patch_size"), ("testing settings", "window")):
        size = config[section][key]
        if size % factor:
            raise UserError(f"{origin((section, key), ('model', 'depth'))}: [{section}] {key} = {size} is not "
                            f"divisible by 2^depth = {factor} (depth = {depth}). Use a multiple of {factor}, e.g. "
                            f"{max(factor, size // factor * factor)}.")
    testing = config["testing settings"]
    if testing["stride"] > testing["window"]:
        raise UserError(f"{origin(('testing settings', 'stride'), ('testing settings', 'window'))}: [testing "
                        f"settings] stride = {testing['stride']} is larger than window = {testing['window']}, which "
                        "would leave gaps. Use a stride no larger than the window.")
    if config["augmentation"]["intensity"] and not config["preprocessing"]["rescale"]:
        # The jitter's gamma needs [0, 1] images: it would clip every negative standardized value to 0.
        raise UserError(f"{origin(('augmentation', 'intensity'), ('preprocessing', 'rescale'))}: [augmentation] "
                        f"intensity = {config['augmentation']['intensity']} needs [preprocessing] rescale = true "
                        "(images in [0, 1]); set rescale = true or intensity = 0.")
    n_classes = config["model"]["n_classes"]
    loss = config["training settings"]["loss"]
    where = origin(("training settings", "loss"), ("model", "n_classes"))
    if n_classes > 1 and loss not in ("cce", "cce_dice"):
        raise UserError(f"{where}: [training settings] loss = {loss} is for one class, but n_classes = "
                        f"{n_classes}. Use loss = cce or cce_dice for several classes.")
    if n_classes == 1 and loss in ("cce", "cce_dice"):
        raise UserError(f"{where}: [training settings] loss = {loss} is for several classes, but n_classes = 1. "
                        "Use bce, dice, bce_dice or bce_cldice for a binary task.")
    _check_classes(config["data attributes"], n_classes,
                   origin(*[("data attributes", key) for key in ("class_names", "ignore_index", "palette")],
                          ("model", "n_classes")))


def _check_classes(attributes: dict[str, Any], n_classes: int, source: str) -> None:
    """class_names, ignore_index and palette must fit n_classes."""
    names, ignore, palette = attributes["class_names"], attributes["ignore_index"], attributes["palette"]
    where = f"{source}: [data attributes]"
    if n_classes == 1:
        if names or palette or ignore != -1:
            raise UserError(f"{where} class_names, ignore_index and palette are for several classes, but "
                            "[model] n_classes = 1: leave them empty (-1 for ignore_index), or set n_classes.")
        return
    if names and len(names) != n_classes:
        raise UserError(f"{where} class_names lists {len(names)} names ({', '.join(names)}) but [model] "
                        f"n_classes = {n_classes}: give one name per class, or leave it empty.")
    if 0 <= ignore < n_classes:
        raise UserError(f"{where} ignore_index = {ignore} is a class (n_classes = {n_classes}); the void "
                        f"label must be a value from {n_classes} to 255, or -1 for none.")
    if palette and len(palette) not in (n_classes, n_classes + 1):
        raise UserError(f"{where} palette has {len(palette)} colours for n_classes = {n_classes}: give one "
                        f"'R G B' colour per class ({n_classes}), plus optionally the void colour last "
                        f"({n_classes + 1}).")
    if len(palette) == n_classes + 1 and ignore == -1:
        raise UserError(f"{where} palette ends with a void colour (colour {n_classes + 1} of {len(palette)}) "
                        "but ignore_index = -1: set ignore_index to the void label value, e.g. "
                        f"{n_classes}, or remove the last colour.")


def format_config(config: Config) -> str:
    """Render typed values back to INI text, each key preceded by its one-line comment."""
    lines: list[str] = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for key, (_, comment) in keys.items():
            lines.append(f"# {comment}")
            lines.append(f"{key} = {_value_text(config[section][key])}")
        lines.append("")
    return "\n".join(lines)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return ", ".join(" ".join(str(c) for c in colour) for colour in value)  # palette
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def config_reference(profiles: Mapping[str, Config], files: Mapping[str, str]) -> str:
    """Markdown table of every key (docs/configuration.md): its value in each profile (by column label, with
    files naming each label's file) and its comment."""
    def cell(text: str) -> str:
        return f"`{text}`" if text else ""

    lines = ["# Configuration keys", "",
             "Every key of the configuration files, its value in each shipped profile and what it does (the comment",
             "above it in the files). Generated by `python tests/test_config.py` from `lib/config.py` and the",
             "profiles; a test fails when it is out of date. Profiles: "
             + ", ".join(f"{label} `{files[label]}`" for label in profiles) + ".", ""]
    for section, keys in SCHEMA.items():
        lines += [f"## [{section}]", "", f"| key | {' | '.join(label for label in profiles)} | what |",
                  "|---" * (len(profiles) + 2) + "|"]
        for key, (_, comment) in keys.items():
            values = " | ".join(cell(_value_text(config[section][key])).replace("|", "\\|")
                                for config in profiles.values())
            what = comment.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            lines.append(f"| `{key}` | {values} | {what} |")
        lines.append("")
    return "\n".join(lines)


def write_config(config: Config, path: str | os.PathLike) -> None:
    """Write the effective configuration (atomically) so a run can be reproduced and reused."""
    write_text(path, format_config(config))


def add_config_arguments(parser: Any) -> None:
    """Add the --config and repeatable --set options shared by all scripts to an argparse parser."""
    parser.add_argument("--config", default="configuration.txt",
                        help="configuration file (default: configuration.txt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration value, e.g. --set training_settings.N_epochs=5 "
                             "(repeatable; the section may be omitted)")

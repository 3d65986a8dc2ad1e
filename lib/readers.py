"""Dataset readers: original release layouts in, lists of (image, label, FOV) samples out."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from lib.errors import UserError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".ppm", ".pgm", ".bmp")
_IGNORED_FILES = {"Thumbs.db", "desktop.ini"}


@dataclass
class Sample:
    """One image with its label and field-of-view mask, as read from disk."""

    name: str
    id: int
    image: np.ndarray          # uint8, H x W x C
    label: np.ndarray | None   # bool, H x W (None when the split has no labels)
    fov: np.ndarray            # bool, H x W (all True where the dataset has no FOV masks)


def read_image(path: Path) -> np.ndarray:
    """Read an image file into a uint8 array (H x W or H x W x 3); corrupt files raise UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty (zero-byte) file. Copy it again from the original "
                        "dataset, or remove it together with its label.")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_uint8(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as an image ({exc}). The file is corrupt or not an "
                        "image: copy it again from the original dataset.") from None


def _to_uint8(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
        img = img.convert("RGB" if img.mode in ("RGBA", "CMYK", "YCbCr", "PA") else "L")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img)
        if array.max() > 255:
            raise UserError(f"{path} holds 16-bit values up to {array.max()}; convert it to 8-bit first.")
        return array.astype(np.uint8)
    if img.mode not in ("L", "RGB"):
        raise UserError(f"{path} has image mode {img.mode}, which is not supported; save it as 8-bit "
                        "gray or RGB.")
    return np.asarray(img, dtype=np.uint8).copy()


def read_stack(path: Path) -> list[np.ndarray]:
    """Read every page of a multi-page TIFF into a list of uint8 arrays."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty (zero-byte) file. Copy it again from the original dataset.")
    try:
        with Image.open(path) as img:
            return [_to_uint8(page.copy(), path) for page in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as a TIFF stack ({exc}). The file is corrupt: copy "
                        "it again from the original dataset.") from None


def as_rgb(array: np.ndarray) -> np.ndarray:
    """Return an H x W x C array (gray images get a channel axis of 1)."""
    return array[..., None] if array.ndim == 2 else array


def to_binary(array: np.ndarray, path: Path | str, what: str = "label") -> np.ndarray:
    """Turn a 0/255 or 0/1 single-channel map into bool; any other value is a UserError."""
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise UserError(f"{path}: the {what} is a colour image; a binary {what} must be gray "
                            "with values 0/255 or 0/1.")
        array = array[..., 0]
    values = np.unique(array)
    if set(values.tolist()) <= {0, 255}:
        return array == 255
    if set(values.tolist()) <= {0, 1}:
        return array == 1
    shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    raise UserError(f"{path}: the {what} has values {shown}; a binary {what} must hold only 0/255 "
                    "or only 0/1. Re-export it as a two-level image.")


def _check_same_size(image: np.ndarray, other: np.ndarray, image_path: Path, other_path: Path) -> None:
    if image.shape[:2] != other.shape[:2]:
        raise UserError(f"size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                        f"{other_path} is {other.shape[1]}x{other.shape[0]}. Image, label and mask "
                        "must have the same size.")


def _list_by_id(folder: Path, pattern: str) -> dict[int, Path]:
    """Map image number -> file for every file in folder; unexpected files are a UserError."""
    if not folder.is_dir():
        raise UserError(f"folder {folder} not found. Check [data paths] dataset_dir and the layout "
                        "described in data/README.md.")
    regex = re.compile(pattern)
    found: dict[int, Path] = {}
    unexpected = []
    duplicates = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in _IGNORED_FILES:
            continue
        match = regex.fullmatch(path.name)
        if match is None:
            unexpected.append(path.name)
            continue
        number = int(match.group(1))
        if number in found:  # e.g. 9_training.tif and 09_training.tif: one would be silently dropped
            duplicates.append(f"{found[number].name} and {path.name}")
            continue
        found[number] = path
    if duplicates:
        raise UserError(f"files with the same number in {folder}: {'; '.join(duplicates)}. Keep one "
                        "file per number and move the others away.")
    if unexpected:
        raise UserError(f"unexpected files in {folder}: {', '.join(unexpected)}. Expected only names "
                        f"like '{pattern.replace(chr(92), '').replace('(d+)', 'NN')}'; move the others away.")
    return found


def _pair(images: dict[int, Path], others: dict[int, Path], what: str, folder: Path) -> None:
    missing = sorted(set(images) - set(others))
    extra = sorted(set(others) - set(images))
    problems = []
    if missing:
        problems.append(f"no {what} for image(s) {', '.join(images[i].name for i in missing)}")
    if extra:
        problems.append(f"{what}(s) {', '.join(others[i].name for i in extra)} have no image")
    if problems:
        raise UserError(f"in {folder}: {'; '.join(problems)}. Every image needs exactly one {what} "
                        "with the same number: add the missing files or remove the extra ones.")


_DRIVE_PATTERNS = {
    "train": ("training", r"(\d+)_training\.tif", r"(\d+)_manual1\.gif", r"(\d+)_training_mask\.gif"),
    "test": ("test", r"(\d+)_test\.tif", r"(\d+)_manual1\.gif", r"(\d+)_test_mask\.gif"),
}


def read_drive(root: Path, split: str) -> list[Sample]:
    """Read DRIVE's `training` or `test` folder; files are paired by number, not sort order."""
    folder_name, image_re, label_re, mask_re = _DRIVE_PATTERNS[split]
    folder = Path(root) / folder_name
    images = _list_by_id(folder / "images", image_re)
    masks = _list_by_id(folder / "mask", mask_re)
    _pair(images, masks, "mask", folder / "mask")
    labels: dict[int, Path] | None = None
    if (folder / "1st_manual").is_dir() or split == "train":
        labels = _list_by_id(folder / "1st_manual", label_re)
        _pair(images, labels, "manual label", folder / "1st_manual")
    samples = []
    for number in sorted(images):
        image = as_rgb(read_image(images[number]))
        fov = to_binary(read_image(masks[number]), masks[number], "mask")
        _check_same_size(image, fov, images[number], masks[number])
        label = None
        if labels is not None:
            label = to_binary(read_image(labels[number]), labels[number])
            _check_same_size(image, label, images[number], labels[number])
        samples.append(Sample(images[number].name, number, image, label, fov))
    return samples


def read_isbi(root: Path, split: str, positive_class: str) -> list[Sample]:
    """Read ISBI 2012 from TIFF stacks or per-slice PNG folders; the FOV is the whole image."""
    root = Path(root)
    stack = root / ("train-volume.tif" if split == "train" else "test-volume.tif")
    folder = root / split / "image"
    if stack.is_file():
        images = read_stack(stack)
        names = [f"{stack.name}[{i}]" for i in range(len(images))]
        ids = list(range(len(images)))
        labels: list[np.ndarray] | None = None
        label_stack = root / "train-labels.tif"
        if split == "train":
            labels = read_stack(label_stack)
            if len(labels) != len(images):
                raise UserError(f"{stack} has {len(images)} slices but {label_stack} has {len(labels)}. "
                                "Both stacks must hold the same slices.")
        label_paths = [f"{label_stack}[{i}]" for i in range(len(images))]
        image_paths = [f"{stack}[{i}]" for i in range(len(images))]
    elif folder.is_dir():
        image_files = _list_by_id(folder, r"(\d+)\.png")
        ids = sorted(image_files)
        names = [image_files[i].name for i in ids]
        images = [read_image(image_files[i]) for i in sorted(image_files)]
        image_paths = [str(image_files[i]) for i in sorted(image_files)]
        labels = None
        if (root / split / "label").is_dir() or split == "train":
            label_files = _list_by_id(root / split / "label", r"(\d+)\.png")
            _pair(image_files, label_files, "label", root / split / "label")
            labels = [read_image(label_files[i]) for i in sorted(image_files)]
            label_paths = [str(label_files[i]) for i in sorted(image_files)]
    elif split == "test":
        return []
    else:
        raise UserError(f"ISBI 2012 data not found in {root}: expected train-volume.tif and "
                        "train-labels.tif, or folders train/image/N.png and train/label/N.png.")
    samples = []
    for index, (name, image) in enumerate(zip(names, images)):
        label = None
        if labels is not None:
            _check_same_size(image, labels[index], Path(image_paths[index]), Path(label_paths[index]))
            interior = to_binary(labels[index], label_paths[index])
            label = ~interior if positive_class == "membrane" else interior
        fov = np.ones(image.shape[:2], dtype=bool)
        samples.append(Sample(name, ids[index], as_rgb(image), label, fov))
    return samples


def read_input_images(path: Path) -> list[tuple[Path, np.ndarray]]:
    """Read one image file or every image file in a folder (for predict.py --input)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {path}.")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"--input {path} not found: give an image file or a folder of images.")
    return [(f, as_rgb(read_image(f))) for f in files]


Reader = Callable[[Path, str], list[Sample]]


def read_split(dataset: str, root: Path, split: str, positive_class: str = "membrane") -> list[Sample]:
    """Read one split ('train' or 'test') of a dataset by its configuration name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} not found. Put the dataset there (see data/README.md) "
                        "or set [data paths] dataset_dir in the configuration.")
    if dataset in ("DRIVE", "sample"):
        if split == "test" and not (root / "test").is_dir():
            return []
        return read_drive(root, split)
    if dataset == "ISBI2012":
        return read_isbi(root, split, positive_class)
    raise UserError(f"unknown dataset '{dataset}'.")

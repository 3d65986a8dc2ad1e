"""The prepared-dataset HDF5 file: atomic writing, chunked patch arrays, checked reading."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from lib.atomic import atomic_path
from lib.errors import UserError

FORMAT_VERSION = 1
FILE_NAME = "dataset.h5"
SPLITS = ("train", "val", "test")
PATCH_CHUNK = 64  # patches per HDF5 chunk: one small batch, so streaming reads touch few chunks


def write_prepared(path: str | os.PathLike, splits: Mapping[str, Sequence[Mapping[str, Any]]],
                   attrs: Mapping[str, Any], n_patches: int, patch_size: int, channels: int,
                   fill_patches: Callable[[h5py.Dataset, h5py.Dataset, h5py.Dataset], None]) -> None:
    """Write dataset.h5 atomically: per-split full images, labels, FOVs and names, then patches.

    Each split entry is a mapping with 'name', 'id', 'image' (float32 HxWxC), 'label' (bool, uint8
    class map, or None) and 'fov' (bool). `fill_patches(images, labels, positions)` fills the empty, chunked
    patch datasets block by block, so memory stays flat whatever the number of patches.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for key, value in attrs.items():
                h5.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            h5.attrs["format_version"] = FORMAT_VERSION
            for split, samples in splits.items():
                group = h5.create_group(split)
                group.create_dataset("names", data=np.array([s["name"] for s in samples], dtype=h5py.string_dtype()))
                group.create_dataset("ids", data=np.array([s["id"] for s in samples], dtype=np.int64))
                group.attrs["has_labels"] = all(s["label"] is not None for s in samples) and bool(samples)
                for sub in ("images", "labels", "fovs"):
                    group.create_group(sub)
                for index, sample in enumerate(samples):
                    name = f"{index:05d}"
                    group["images"].create_dataset(name, data=sample["image"].astype(np.float32),
                                                   compression="gzip", compression_opts=1)
                    group["fovs"].create_dataset(name, data=sample["fov"].astype(np.uint8), compression="gzip")
                    if sample["label"] is not None:
                        group["labels"].create_dataset(name, data=sample["label"].astype(np.uint8),
                                                       compression="gzip")
            patches = h5.create_group("patches")
            chunk = min(PATCH_CHUNK, max(n_patches, 1))
            images = patches.create_dataset("images", shape=(n_patches, patch_size, patch_size, channels),
                                            dtype=np.float16, chunks=(chunk, patch_size, patch_size, channels))
            labels = patches.create_dataset("labels", shape=(n_patches, patch_size, patch_size, 1),
                                            dtype=np.uint8, chunks=(chunk, patch_size, patch_size, 1))
            positions = patches.create_dataset("positions", shape=(n_patches, 3), dtype=np.int32)
            fill_patches(images, labels, positions)
            # Written last: a file without it was never finished and is never trusted.
            h5.attrs["complete"] = True


def open_prepared(path: str | os.PathLike, patch_size: int | None = None,
                  channels: int | None = None) -> h5py.File:
    """Open dataset.h5 read-only after checking it is complete and fits the configuration."""
    path = Path(path)
    fix = "Run prepare_datasets.py with the same configuration to (re)create it."
    if not path.is_file():
        raise UserError(f"prepared dataset {path} not found. {fix}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc}); it may be truncated. {fix}") from None
    try:
        problem = _check(h5, patch_size, channels)
    except (KeyError, OSError, ValueError) as exc:
        problem = f"it is damaged or of an unknown layout ({exc})"
    if problem:
        h5.close()
        raise UserError(f"{path} cannot be used: {problem}. {fix}")
    return h5


def _check(h5: h5py.File, patch_size: int | None, channels: int | None) -> str | None:
    if h5.attrs.get("format_version") != FORMAT_VERSION:
        return (f"it was written by another version of this toolkit (format "
                f"{h5.attrs.get('format_version')}, expected {FORMAT_VERSION})")
    if not h5.attrs.get("complete", False):
        return "it was never finished (prepare_datasets.py was interrupted)"
    shape = h5["patches/images"].shape
    if patch_size is not None and shape[1] != patch_size:
        return f"its patches are {shape[1]}x{shape[2]} but the configuration asks for {patch_size}x{patch_size}"
    if channels is not None and shape[3] != channels:
        return f"its images have {shape[3]} channel(s) but the configuration asks for {channels}"
    return None


def read_attr_json(h5: h5py.File, key: str) -> Any:
    """Read a JSON-encoded file attribute (preprocessing settings, statistics)."""
    return json.loads(h5.attrs[key])


def read_source_files(h5: h5py.File) -> dict[str, list] | None:
    """The source files the file was prepared from, as lib.fingerprint.source_files gave them; None for files
    prepared before they were recorded."""
    return read_attr_json(h5, "source_files") if "source_files" in h5.attrs else None


def data_digest(h5: h5py.File) -> str:
    """A digest of what the file was prepared from and with (settings, the source files' digests, statistics): a
    file prepared again from other files or settings gets another, the same preparation the same."""
    import hashlib

    recorded = {name: h5.attrs[name] for name in ("fingerprint", "source_files", "statistics") if name in h5.attrs}
    text = json.dumps({name: str(value) for name, value in recorded.items()}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def read_classes(h5: h5py.File) -> dict[str, Any] | None:
    """The label set of a multi-class file (n_classes, class_names, ignore_index, palette, frequencies,
    median_frequency_weights), or None for a binary one."""
    return read_attr_json(h5, "classes") if "classes" in h5.attrs else None


def class_statistics(labels: Iterable[np.ndarray], n_classes: int, ignore_index: int | None,
                     fovs: Iterable[np.ndarray] | None = None) -> dict[str, list]:
    """Pixel counts, frequencies and median-frequency-balancing weights of training label maps.

    As in Eigen & Fergus (2015) and SegNet: freq(c) = pixels of class c / pixels of the images that
    contain c; weight(c) = median over the classes present of freq / freq(c). Void (ignore_index)
    and pixels outside the FOV count nowhere. A class absent from every label gets weight 1.0.
    """
    counts = np.zeros(n_classes, np.int64)
    image_pixels = np.zeros(n_classes, np.int64)
    fov_list = iter(fovs) if fovs is not None else None
    for label in labels:
        values = np.asarray(label)
        if fov_list is not None:
            values = values[np.asarray(next(fov_list), bool)]
        values = values.ravel()
        if ignore_index is not None:
            values = values[values != ignore_index]
        per_class = np.bincount(values.astype(np.int64), minlength=n_classes)[:n_classes]
        counts += per_class
        image_pixels[per_class > 0] += values.size
    present = image_pixels > 0
    frequencies = np.where(present, counts / np.maximum(image_pixels, 1), 0.0)
    weights = np.ones(n_classes)
    if present.any():
        weights[present] = np.median(frequencies[present]) / frequencies[present]
    return {"pixel_counts": counts.tolist(), "frequencies": frequencies.tolist(),
            "median_frequency_weights": weights.tolist()}


def split_size(h5: h5py.File, split: str) -> int:
    """Number of full images stored for a split (0 if the split is absent)."""
    return len(h5[split]["names"]) if split in h5 else 0


def iter_split(h5: h5py.File, split: str) -> Iterator[dict[str, Any]]:
    """Yield the stored full images of a split one at a time (name, id, image, label, fov).

    Labels are bool for a binary task and uint8 class maps for a multi-class one.
    """
    if split not in h5:
        return
    group = h5[split]
    multiclass = "classes" in h5.attrs
    for index, name in enumerate(group["names"].asstr()[()]):
        key = f"{index:05d}"
        yield {
            "name": name,
            "id": int(group["ids"][index]),
            "image": group["images"][key][()],
            "label": (None if key not in group["labels"] else
                      group["labels"][key][()] if multiclass else group["labels"][key][()].astype(bool)),
            "fov": group["fovs"][key][()].astype(bool),
        }


def image_shapes(h5: h5py.File) -> list[tuple[int, ...]]:
    """The shape of every image of every split in a prepared dataset (read from the file's index, not the pixels)."""
    return [h5[split]["images"][key].shape for split in SPLITS if split in h5 for key in h5[split]["images"]]

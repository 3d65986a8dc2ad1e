"""Tests for the prepared-dataset HDF5 file: round trip, checked opening, atomic writing."""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.errors import UserError  # noqa: E402
from lib.storage import FORMAT_VERSION, iter_split, open_prepared, read_attr_json, split_size, write_prepared  # noqa: E402

PATCH, CHANNELS, N_PATCHES = 8, 2, 150   # more patches than one HDF5 chunk (64)


def _samples(rng: np.random.Generator) -> dict[str, list[dict]]:
    def sample(name: str, number: int, h: int, w: int, labelled: bool) -> dict:
        return {"name": name, "id": number,
                "image": rng.random((h, w, CHANNELS)).astype(np.float32),
                "label": (rng.random((h, w)) < 0.4) if labelled else None,
                "fov": rng.random((h, w)) < 0.8}
    return {
        "train": [sample("21_training.tif", 21, 20, 24, True), sample("23_training.tif", 23, 20, 24, True)],
        "val": [sample("22_training.tif", 22, 20, 24, True)],
        "test": [sample("01_test.tif", 1, 18, 30, False), sample("02_test.tif", 2, 18, 30, False)],
    }


def _expected_patches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known patch contents, exactly representable in float16."""
    index = np.arange(N_PATCHES, dtype=np.float32)[:, None, None]
    pixel = np.arange(PATCH * PATCH, dtype=np.float32).reshape(1, PATCH, PATCH)
    # Channel 0: the patch number (distinct per patch); channel 1: the pixel number / 64.
    images = np.stack([np.broadcast_to(index, (N_PATCHES, PATCH, PATCH)),
                       np.broadcast_to(pixel / 64.0, (N_PATCHES, PATCH, PATCH))], axis=-1)
    labels = ((index.astype(int) + pixel.astype(int)) % 3 == 0).astype(np.uint8)[..., None]
    positions = np.stack([np.arange(N_PATCHES) % 2, np.arange(N_PATCHES) % 13,
                          np.arange(N_PATCHES) % 17], axis=1).astype(np.int32)
    return images, labels, positions


def _fill_known(images, labels, positions) -> None:
    want_images, want_labels, want_positions = _expected_patches()
    for start in range(0, N_PATCHES, 40):   # block by block, as prepare_datasets.py does
        stop = min(start + 40, N_PATCHES)
        images[start:stop] = want_images[start:stop].astype(np.float16)
        labels[start:stop] = want_labels[start:stop]
        positions[start:stop] = want_positions[start:stop]


ATTRS = {"dataset": "DRIVE", "statistics": {"mean": [1.5], "std": [2.0]}, "fingerprint": {"seed": 3},
         "source": "data/DRIVE"}


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    splits = _samples(np.random.default_rng(0))
    path = tmp_path / "prepared" / "dataset.h5"   # the folder does not exist yet
    write_prepared(path, splits, ATTRS, N_PATCHES, PATCH, CHANNELS, _fill_known)
    return path, splits


def test_round_trip_returns_the_written_patches_and_attributes(written) -> None:
    path, _ = written
    want_images, want_labels, want_positions = _expected_patches()
    with open_prepared(path, patch_size=PATCH, channels=CHANNELS) as h5:
        images = h5["patches/images"]
        assert images.shape == (N_PATCHES, PATCH, PATCH, CHANNELS)
        assert images.dtype == np.float16
        np.testing.assert_array_equal(images[()].astype(np.float32), want_images)
        np.testing.assert_array_equal(h5["patches/labels"][()], want_labels)
        np.testing.assert_array_equal(h5["patches/positions"][()], want_positions)
        assert read_attr_json(h5, "statistics") == ATTRS["statistics"]
        assert read_attr_json(h5, "fingerprint") == ATTRS["fingerprint"]
        assert h5.attrs["dataset"] == "DRIVE"
        assert h5.attrs["format_version"] == FORMAT_VERSION
    # Opening without the optional checks works too.
    open_prepared(path).close()


def test_iter_split_returns_what_was_written(written) -> None:
    path, splits = written
    with open_prepared(path) as h5:
        for split, samples in splits.items():
            assert split_size(h5, split) == len(samples)
            read = list(iter_split(h5, split))
            assert len(read) == len(samples)
            for got, want in zip(read, samples):
                assert got["name"] == want["name"] and got["id"] == want["id"]
                assert isinstance(got["name"], str) and isinstance(got["id"], int)
                np.testing.assert_array_equal(got["image"], want["image"])
                assert got["image"].dtype == np.float32
                np.testing.assert_array_equal(got["fov"], want["fov"])
                assert got["fov"].dtype == bool
                if want["label"] is None:
                    assert got["label"] is None
                else:
                    np.testing.assert_array_equal(got["label"], want["label"])
                    assert got["label"].dtype == bool
        assert h5["train"].attrs["has_labels"] and not h5["test"].attrs["has_labels"]
        assert split_size(h5, "missing") == 0
        assert list(iter_split(h5, "missing")) == []


def test_empty_split_round_trips_as_empty(tmp_path: Path) -> None:
    splits = _samples(np.random.default_rng(1))
    splits["val"] = []
    path = tmp_path / "dataset.h5"
    write_prepared(path, splits, ATTRS, N_PATCHES, PATCH, CHANNELS, _fill_known)
    with open_prepared(path) as h5:
        assert split_size(h5, "val") == 0
        assert list(iter_split(h5, "val")) == []
        assert not h5["val"].attrs["has_labels"]


def _open_error(path: Path, **checks) -> str:
    with pytest.raises(UserError) as info:
        open_prepared(path, **checks)
    message = str(info.value)
    assert str(path) in message
    assert "prepare_datasets.py" in message   # says how to fix it
    return message


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    assert "not found" in _open_error(tmp_path / "dataset.h5")


def test_file_without_complete_attribute_is_refused(written) -> None:
    path, _ = written
    with h5py.File(path, "a") as h5:
        del h5.attrs["complete"]
    assert "never finished" in _open_error(path)


def test_truncated_file_is_refused(written) -> None:
    path, _ = written
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _open_error(path, patch_size=PATCH, channels=CHANNELS)


def test_file_that_is_not_hdf5_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dataset.h5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a readable HDF5 file" in _open_error(path)


def test_file_of_another_format_version_is_refused(written) -> None:
    path, _ = written
    with h5py.File(path, "a") as h5:
        h5.attrs["format_version"] = FORMAT_VERSION + 1
    message = _open_error(path)
    assert "another version" in message
    assert f"format {FORMAT_VERSION + 1}" in message and f"expected {FORMAT_VERSION}" in message


def test_hdf5_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dataset.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["complete"] = True
        h5.create_dataset("something", data=np.zeros(3))
    assert "unknown layout" in _open_error(path, patch_size=PATCH)


def test_other_patch_size_is_refused(written) -> None:
    path, _ = written
    message = _open_error(path, patch_size=16, channels=CHANNELS)
    assert f"{PATCH}x{PATCH}" in message and "16x16" in message


def test_other_channel_count_is_refused(written) -> None:
    path, _ = written
    message = _open_error(path, patch_size=PATCH, channels=1)
    assert f"{CHANNELS} channel" in message and "asks for 1" in message


def test_refused_file_is_closed_and_can_be_replaced(written) -> None:
    path, splits = written
    _open_error(path, channels=1)
    write_prepared(path, splits, ATTRS, N_PATCHES, PATCH, 1,
                   lambda images, labels, positions: images.__setitem__(slice(None), 0.5))
    with open_prepared(path, channels=1) as h5:
        assert np.all(h5["patches/images"][()] == 0.5)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_exception_inside_fill_patches_leaves_no_file_behind(tmp_path: Path, error: type) -> None:
    def fail_halfway(images, labels, positions) -> None:
        images[:10] = 1.0
        raise error("stop")

    path = tmp_path / "out" / "dataset.h5"
    with pytest.raises(error):
        write_prepared(path, _samples(np.random.default_rng(2)), ATTRS, N_PATCHES, PATCH, CHANNELS,
                       fail_halfway)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []   # no temporary file either


def test_failed_rewrite_keeps_the_previous_complete_file(written) -> None:
    path, splits = written
    before = path.read_bytes()

    def fail(images, labels, positions) -> None:
        raise _Boom("disk trouble")

    with pytest.raises(_Boom):
        write_prepared(path, splits, ATTRS, N_PATCHES, PATCH, CHANNELS, fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset.h5"]
    with open_prepared(path, patch_size=PATCH, channels=CHANNELS) as h5:
        np.testing.assert_array_equal(h5["patches/positions"][()], _expected_patches()[2])

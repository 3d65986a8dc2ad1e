"""Augmentation and the streaming PatchStream input."""
from __future__ import annotations

import h5py
import numpy as np

from lib.augment import flip_rotate
from lib.pipeline import PatchStream


def test_flip_rotate_applies_the_same_transform_to_image_and_label():
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 2)).astype("float32")
    labels = images[..., :1] > 0.5  # label is a function of the image: must stay so
    out_images, out_labels = flip_rotate(images, labels, np.random.default_rng(1))
    np.testing.assert_array_equal(out_images[..., :1] > 0.5, out_labels)
    # Each output is one of the eight dihedral transforms of its input.
    for original, result in zip(images, out_images):
        variants = [np.rot90(v, k, axes=(0, 1)) for v in (original, original[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(result, v) for v in variants)
    # Over 64 samples, several different transforms were used.
    changed = [not np.array_equal(a, b) for a, b in zip(images, out_images)]
    assert 20 < sum(changed) < 64
    assert set(np.unique(out_labels)) <= {False, True}


def _patch_file(path, n=100, size=8):
    with h5py.File(path, "w") as h5:
        h5["patches/images"] = np.arange(n, dtype=np.float16)[:, None, None, None] * np.ones((1, size, size, 1), np.float16)
        h5["patches/labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None, None, None] * np.ones((1, size, size, 1), np.uint8)


def test_patch_stream_reads_each_training_patch_once_per_pass_in_shuffled_order(tmp_path):
    path = tmp_path / "p.h5"
    _patch_file(path)
    stream = PatchStream(path, 0, 90, batch_size=10, shuffle=True, seed=3)
    assert len(stream) == 9
    seen = []
    for step in range(len(stream)):
        images, labels = stream[step]
        ids = images[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(labels[:, 0, 0, 0], ids % 2)  # pairs stay together
        seen.extend(ids)
    assert sorted(seen) == list(range(90))  # validation part [90, 100) never used
    first_order = [int(stream[s][0][0, 0, 0, 0]) for s in range(9)]
    stream.set_epoch(1)
    second_order = [int(stream[s][0][0, 0, 0, 0]) for s in range(9)]
    assert first_order != second_order and sorted(first_order) == sorted(second_order)
    again = PatchStream(path, 0, 90, batch_size=10, shuffle=True, seed=3)
    assert [int(again[s][0][0, 0, 0, 0]) for s in range(9)] == first_order  # deterministic


def test_patch_stream_steps_per_epoch_walks_on_through_the_data(tmp_path):
    path = tmp_path / "p.h5"
    _patch_file(path)
    stream = PatchStream(path, 90, 100, batch_size=5, steps=1, shuffle=False)
    assert len(stream) == 1
    firsts = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        firsts.append(int(stream[0][0][0, 0, 0, 0]))
    assert firsts == [90, 95]

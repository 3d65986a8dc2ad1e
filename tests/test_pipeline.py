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


from lib.augment import augment_batch, sampling_grids  # noqa: E402

ALL_ON = dict(flips="all", rotation_degrees=20.0, scale=0.2, elastic_alpha=3.0, intensity=0.2)
ALL_OFF = dict(flips="none", rotation_degrees=0.0, scale=0.0, elastic_alpha=0.0, intensity=0.0)


def smooth_images(n=16, size=32, seed=0):
    """Smooth random images: labels derived by thresholding stay meaningful after resampling."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 4, 4))
    fine = np.kron(coarse, np.ones((size // 4, size // 4)))
    from scipy.ndimage import gaussian_filter
    return np.stack([gaussian_filter(f, 3) for f in fine])[..., None].astype("float32")


def test_augmentation_off_is_the_identity():
    images = smooth_images()
    labels = (images > 0.5).astype("float32")
    out_images, out_labels = augment_batch(images, labels, np.random.default_rng(0), ALL_OFF)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_geometric_augmentation_never_creates_new_label_values():
    rng = np.random.default_rng(1)
    images = smooth_images()
    classes = np.array([0, 3, 7], dtype="float32")  # multi-class indices
    labels = classes[rng.integers(0, 3, size=images.shape)]
    _, out_labels = augment_batch(images, labels, rng, ALL_ON)
    assert set(np.unique(out_labels)) <= {0.0, 3.0, 7.0}


def test_image_and_label_move_together_under_rotation_scale_and_elastic():
    images = smooth_images(seed=2)
    labels = (images > np.median(images)).astype("float32")
    geometric = dict(ALL_ON, intensity=0.0)
    out_images, out_labels = augment_batch(images, labels, np.random.default_rng(3), geometric)
    assert not np.allclose(out_images, images)  # something happened
    agreement = np.mean((out_images > np.median(images)) == (out_labels > 0.5))
    assert agreement > 0.97, agreement  # differs only at threshold boundaries (linear vs nearest)


def test_soft_labels_take_fractions_at_warped_edges_and_follow_the_image_closer():
    images = smooth_images(seed=2)
    labels = (images > np.median(images)).astype("float32")
    geometric = dict(ALL_ON, intensity=0.0)
    out_images, hard = augment_batch(images, labels, np.random.default_rng(3), geometric)
    same_images, soft = augment_batch(images, labels, np.random.default_rng(3), geometric, soft_labels=True)
    np.testing.assert_array_equal(same_images, out_images)  # the same warps
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    assert np.mean((soft > 0.01) & (soft < 0.99)) > 0.01  # edge pixels hold fractions
    drawn = out_images > np.median(images)  # the label one would draw on the warped image
    assert np.mean((soft > 0.5) == drawn) > np.mean((hard > 0.5) == drawn)


def test_warped_images_stay_as_sharp_as_the_originals():
    # A linear warp keeps about 0.83 of a 4-pixel wave's amplitude at these angles: a blur the test images lack.
    n, size = 16, 48
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    images = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (x * np.cos(a) + y * np.sin(a)) / 4 + phase)
                       for a, phase in zip(rng.uniform(0, np.pi, n), rng.uniform(0, 6, n))])[..., None]
    images = images.astype("float32")
    labels = (images > 0.5).astype("float32")
    out, _ = augment_batch(images, labels, np.random.default_rng(1), dict(ALL_OFF, rotation_degrees=20.0))
    inside = (slice(None), slice(12, 36), slice(12, 36))
    assert not np.allclose(out, images)
    assert out[inside].std() / images[inside].std() > 0.95


def test_patch_stream_warps_binary_labels_into_fractions_only_when_asked(tmp_path):
    path = tmp_path / "p.h5"
    size = 16
    half = (np.arange(size) < size // 2).astype(np.uint8)[None, None, :, None]  # a vertical edge
    with h5py.File(path, "w") as h5:
        h5["patches/images"] = np.broadcast_to(half, (20, size, size, 1)).astype(np.float16)
        h5["patches/labels"] = np.broadcast_to(half, (20, size, size, 1))
    warp = dict(ALL_OFF, elastic_alpha=1.0)
    _, hard = PatchStream(path, 0, 20, batch_size=20, augment=warp, seed=1)[0]
    _, soft = PatchStream(path, 0, 20, batch_size=20, augment=warp, seed=1, soft_labels=True)[0]
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert np.mean((soft > 0.01) & (soft < 0.99)) > 0.02 and soft.min() >= 0.0 and soft.max() <= 1.0


def test_elastic_displacements_have_the_configured_size_and_are_smooth():
    grids = sampling_grids(200, 48, np.random.default_rng(4), degrees=0.0, scale=0.0, elastic_alpha=4.0)
    identity = np.arange(48, dtype="float32")
    dy = grids[0] - identity[None, :, None]
    assert 2.0 < dy.std() < 6.0
    assert np.abs(np.diff(dy, axis=1)).max() < 2.0  # neighbouring pixels move together


def test_intensity_jitter_keeps_the_image_range_and_leaves_labels_alone():
    images = smooth_images()
    labels = (images > 0.5).astype("float32")
    out_images, out_labels = augment_batch(images, labels, np.random.default_rng(5),
                                           dict(ALL_OFF, intensity=0.3))
    np.testing.assert_array_equal(out_labels, labels)
    assert out_images.min() >= 0.0 and out_images.max() <= 1.0 and not np.allclose(out_images, images)


def test_augmentation_is_deterministic_for_a_seed():
    images = smooth_images()
    labels = (images > 0.5).astype("float32")
    a = augment_batch(images, labels, np.random.default_rng(9), ALL_ON)
    b = augment_batch(images, labels, np.random.default_rng(9), ALL_ON)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_training_log_reader_keeps_the_last_row_of_a_repeated_epoch_and_reads_na(tmp_path):
    from train import read_log
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.0,NA\n1,0.8,0.9\n1,0.7,0.85\n2,0.6,\n")
    history = read_log(log)
    assert history["epoch"] == [0, 1, 2]
    assert history["loss"] == [1.0, 0.7, 0.6]
    assert np.isnan(history["val_loss"][0]) and history["val_loss"][1] == 0.85 and np.isnan(history["val_loss"][2])


def test_horizontal_flips_only_mirror_left_right():
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1)).astype("float32")
    labels = (images > 0.5).astype("float32")
    out_images, out_labels = augment_batch(images, labels, rng, dict(ALL_OFF, flips="horizontal"))
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out_images, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out_images, images)]
    assert all(m or k for m, k in zip(mirrored, kept))  # never upside down or turned
    assert 15 < sum(mirrored) < 49
    np.testing.assert_array_equal(out_images > 0.5, out_labels > 0.5)


def test_patch_stream_close_releases_the_file_and_a_later_read_reopens_it(tmp_path):
    path = tmp_path / "p.h5"
    _patch_file(path)
    stream = PatchStream(path, 0, 90, batch_size=10, shuffle=False)
    first = stream[0][0]
    handle = stream._h5
    stream.close()
    assert not handle.id.valid  # closed, so the file can be replaced (e.g. prepare_datasets.py --overwrite)
    stream.close()  # twice is harmless
    np.testing.assert_array_equal(stream[0][0], first)

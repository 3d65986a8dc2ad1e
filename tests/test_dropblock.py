"""DropBlock: square blocks zeroed while training, the identity at inference, saved and loaded with the model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_dropblock_zeroes_whole_blocks_covering_about_its_rate_and_keeps_the_mean() -> None:
    import keras

    from lib.dropblock import DropBlock

    layer = DropBlock(0.2, 5, seed=3)
    x = np.ones((8, 64, 64, 4), np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    dropped = out == 0
    assert 0.12 < dropped.mean() < 0.25  # overlapping blocks cover a little less than the rate
    np.testing.assert_allclose(out.mean(), 1.0, rtol=1e-5)  # kept pixels scaled up by 1 / fraction kept
    # Every dropped pixel lies in a dropped 5x5 square: opening the mask with that square leaves it whole.
    from skimage.morphology import opening

    for image, channel in ((0, 0), (1, 3)):
        mask = dropped[image, :, :, channel]
        opened = opening(mask, np.ones((5, 5), bool))
        np.testing.assert_array_equal(opened[2:-2, 2:-2], mask[2:-2, 2:-2])  # a block at the edge is cut off
    # Channels drop their own blocks.
    assert not np.array_equal(dropped[..., 0], dropped[..., 1])


def test_a_unet_with_dropblock_trains_saves_and_loads_for_inference(tmp_path: Path) -> None:
    from lib.folding import load_for_inference
    from lib.unet import build_unet

    model = build_unet(depth=2, base_filters=4, batch_norm=False, dropout=0.2, dropout_block=3)
    assert sum("dropblock" in layer.name for layer in model.layers) == 5  # one per conv block
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_for_inference(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_dropblock_refuses_a_rate_of_one() -> None:
    from lib.dropblock import DropBlock

    with pytest.raises(ValueError, match="rate"):
        DropBlock(1.0, 3)

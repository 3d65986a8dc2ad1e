"""DropBlock: dropout of square blocks of a feature map instead of single pixels (Ghiasi et al., 2018)."""
from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="unet")
class DropBlock(layers.Layer):
    """Zero block_size x block_size squares, each channel its own, covering about rate of the map while training.

    Neighbouring pixels of a feature map are strongly correlated, so ordinary dropout of single pixels
    takes little away: the next convolution reads the lost value off its neighbours. A dropped block
    removes a whole stretch of vessel, which the network must infer from the context around it.
    SA-UNet (Guo et al., 2020) reports much of its gain on DRIVE's 20 training images from it.
    """

    def __init__(self, rate: float, block_size: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0 or block_size < 1:
            raise ValueError(f"DropBlock needs 0 <= rate < 1 and block_size >= 1, got {rate} and {block_size}")
        self.rate, self.block_size, self.seed = rate, block_size, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        # Block centres at rate / block_size^2 per pixel, so the blocks cover about rate of the map.
        centres = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) < self.rate / self.block_size ** 2
        dropped = ops.max_pool(ops.cast(centres, "float32"), pool_size=self.block_size, strides=1, padding="same")
        keep = 1.0 - dropped
        # Rescale by the fraction actually kept, so the expected activation is unchanged.
        scale = 1.0 / ops.maximum(ops.mean(keep), 1e-3)
        return inputs * ops.cast(keep * scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "block_size": self.block_size, "seed": self.seed}

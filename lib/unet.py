"""The U-Net: conv-conv-pool encoder, upsampling decoder with concatenated skips, built by a loop; optionally
refined by a small shared-weight U-Net applied to its own probabilities (IterNet)."""
from __future__ import annotations

import random

import keras
from keras import layers, ops

from lib.config import Config
from lib.dropblock import DropBlock

REFINE_DEPTH = 2


class _Block:
    """The layers of one conv-conv block, made once so that applying the block again shares its weights."""

    def __init__(self, filters: int, batch_norm: bool, dropout: float, block: int, name: str, residual: bool):
        # Made in the order the layers are applied, so that a seed draws the same weights and dropout masks.
        self.convs, self.norms, self.drop, self.shortcut = [], [], None, None
        for index in (1, 2):
            self.convs.append(layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                                            kernel_initializer="he_normal", name=f"{name}_conv{index}"))
            self.norms.append(layers.BatchNormalization(name=f"{name}_bn{index}") if batch_norm else None)
            if index == 1 and dropout > 0:
                # The seed Keras would draw itself, given explicitly: without one, the PyTorch backend draws the
                # masks from torch's global generator, which no backup keeps, instead of the layer's own.
                seed = random.randint(1, int(1e9))
                self.drop = (layers.Dropout(dropout, seed=seed, name=f"{name}_dropout") if block == 1 else
                             DropBlock(dropout, block, name=f"{name}_dropblock"))
        if residual:
            # The block's input and output widths always differ here, so the shortcut is a 1x1 projection.
            self.shortcut = layers.Conv2D(filters, 1, use_bias=not batch_norm, kernel_initializer="he_normal",
                                          name=f"{name}_shortcut")
            self.shortcut_norm = layers.BatchNormalization(name=f"{name}_shortcut_bn") if batch_norm else None
            self.add = layers.Add(name=f"{name}_add")
        self.relus = [layers.Activation("relu", name=f"{name}_relu{index}") for index in (1, 2)]

    def __call__(self, x):
        block_input = x
        for index in (0, 1):
            x = self.convs[index](x)
            if self.norms[index] is not None:
                x = self.norms[index](x)
            if index == 1 and self.shortcut is not None:
                shortcut = self.shortcut(block_input)
                if self.shortcut_norm is not None:
                    shortcut = self.shortcut_norm(shortcut)
                x = self.add([x, shortcut])
            x = self.relus[index](x)
            if index == 0 and self.drop is not None:
                x = self.drop(x)
        return x


class _Body:
    """Encoder and decoder of a U-Net without its head; applying it again shares its weights."""

    def __init__(self, depth: int, base_filters: int, batch_norm: bool, dropout: float, dropout_block: int,
                 residual: bool, upsampling: str, prefix: str = ""):
        def block(filters: int, name: str) -> _Block:
            return _Block(filters, batch_norm, dropout, dropout_block, f"{prefix}{name}", residual)

        self.down = [block(base_filters * 2 ** level, f"down{level}") for level in range(depth)]
        self.pools = [layers.MaxPooling2D(2, name=f"{prefix}down{level}_pool") for level in range(depth)]
        self.bottom = block(base_filters * 2 ** depth, "bottom")
        self.up = {}
        for level in reversed(range(depth)):
            filters = base_filters * 2 ** level
            if upsampling == "transpose":
                resample = [layers.Conv2DTranspose(filters, 2, strides=2, name=f"{prefix}up{level}_transpose")]
            else:
                resample = [layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}up{level}_resize"),
                            layers.Conv2D(filters, 1, name=f"{prefix}up{level}_project")]
            self.up[level] = (resample, layers.Concatenate(name=f"{prefix}up{level}_concat"),
                              block(filters, f"up{level}"))

    def __call__(self, x) -> tuple:
        """The last decoder block's features and the first encoder block's (the full-resolution skip)."""
        skips = []
        for down, pool in zip(self.down, self.pools):
            x = down(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for level, (resample, concat, up) in self.up.items():
            for layer in resample:
                x = layer(x)
            x = up(concat([x, skips[level]]))
        return x, skips[0]


@keras.saving.register_keras_serializable(package="unet")
class StageOutputs(layers.Layer):
    """The last stage's probabilities at inference; while training, every stage's, concatenated on the channel
    axis (first stage first), so that the loss can supervise each of them."""

    def call(self, stages, training=None):
        return ops.concatenate(stages, axis=-1) if training else stages[-1]

    def compute_output_shape(self, input_shape):
        return input_shape[-1]


def build_unet(channels: int = 1, n_classes: int = 1, depth: int = 3, base_filters: int = 32,
               batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "transpose",
               dropout_block: int = 1, residual: bool = False, refinements: int = 0) -> keras.Model:
    """Build a fully convolutional U-Net for any input size divisible by 2**depth; dropout_block > 1: DropBlock.

    refinements > 0: a U-Net of depth 2 and half the base filters, one set of weights, is applied that many
    times to the previous stage's probabilities and the first level's features (IterNet, Li et al. 2020).
    """
    activation = "sigmoid" if n_classes == 1 else "softmax"
    inputs = keras.Input(shape=(None, None, channels), name="image")
    features, first_level = _Body(depth, base_filters, batch_norm, dropout, dropout_block, residual, upsampling)(inputs)
    # The head stays float32 under mixed precision so probabilities are exact enough to threshold.
    logits = layers.Conv2D(n_classes, 1, name="logits", dtype="float32")(features)
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(logits)
    name = f"unet_d{depth}_f{base_filters}"
    if refinements == 0:
        return keras.Model(inputs, outputs, name=name)
    refine = _Body(REFINE_DEPTH, max(base_filters // 2, 1), batch_norm, dropout, dropout_block, residual, upsampling,
                   prefix="refine_")
    refine_logits = layers.Conv2D(n_classes, 1, name="refine_logits", dtype="float32")
    refine_activation = layers.Activation(activation, name="refine_probabilities", dtype="float32")
    stages = [outputs]
    for index in range(1, refinements + 1):
        x = layers.Concatenate(name=f"refine{index}_input")([stages[-1], first_level])
        stages.append(refine_activation(refine_logits(refine(x)[0])))
    return keras.Model(inputs, StageOutputs(name="stages", dtype="float32")(stages), name=f"{name}_r{refinements}")


def unet_from_config(config: Config) -> keras.Model:
    """Build the U-Net described by the [model] and [data attributes] sections."""
    model = config["model"]
    return build_unet(channels=config["data attributes"]["channels"], n_classes=model["n_classes"],
                      depth=model["depth"], base_filters=model["base_filters"],
                      batch_norm=model["batch_norm"], dropout=model["dropout"],
                      upsampling=model["upsampling"], dropout_block=model["dropout_block"],
                      residual=model["residual"], refinements=model["refinements"])

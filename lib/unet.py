"""The U-Net: conv-conv-pool encoder, upsampling decoder with concatenated skips, built by a loop."""
from __future__ import annotations

import keras
from keras import layers

from lib.config import Config
from lib.dropblock import DropBlock


def _conv_block(x, filters: int, batch_norm: bool, dropout: float, block: int, name: str, residual: bool):
    block_input = x
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{index}")(x)
        if index == 2 and residual:
            # The block's input and output widths always differ here, so the shortcut is a 1x1 projection.
            shortcut = layers.Conv2D(filters, 1, use_bias=not batch_norm, kernel_initializer="he_normal",
                                     name=f"{name}_shortcut")(block_input)
            if batch_norm:
                shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
        if index == 1 and dropout > 0:
            drop = (layers.Dropout(dropout, name=f"{name}_dropout") if block == 1 else
                    DropBlock(dropout, block, name=f"{name}_dropblock"))
            x = drop(x)
    return x


def build_unet(channels: int = 1, n_classes: int = 1, depth: int = 3, base_filters: int = 32,
               batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "transpose",
               dropout_block: int = 1, residual: bool = False) -> keras.Model:
    """Build a fully convolutional U-Net for any input size divisible by 2**depth; dropout_block > 1: DropBlock."""
    inputs = keras.Input(shape=(None, None, channels), name="image")
    x = inputs
    skips = []
    # Downsampling path
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, batch_norm, dropout, dropout_block, f"down{level}", residual)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _conv_block(x, base_filters * 2 ** depth, batch_norm, dropout, dropout_block, "bottom", residual)
    # Upsampling path
    for level in reversed(range(depth)):
        filters = base_filters * 2 ** level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}_resize")(x)
            x = layers.Conv2D(filters, 1, name=f"up{level}_project")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, batch_norm, dropout, dropout_block, f"up{level}", residual)
    # The head stays float32 under mixed precision so probabilities are exact enough to threshold.
    logits = layers.Conv2D(n_classes, 1, name="logits", dtype="float32")(x)
    activation = "sigmoid" if n_classes == 1 else "softmax"
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{base_filters}")


def unet_from_config(config: Config) -> keras.Model:
    """Build the U-Net described by the [model] and [data attributes] sections."""
    model = config["model"]
    return build_unet(channels=config["data attributes"]["channels"], n_classes=model["n_classes"],
                      depth=model["depth"], base_filters=model["base_filters"],
                      batch_norm=model["batch_norm"], dropout=model["dropout"],
                      upsampling=model["upsampling"], dropout_block=model["dropout_block"],
                      residual=model["residual"])

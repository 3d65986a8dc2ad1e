"""The training optimizer: Adam, optionally with a moving average of the weights and decoupled weight decay."""
from __future__ import annotations

import keras

from lib.averaging import AveragingAdam

# Biases and batch-norm scales and offsets set levels, not the capacity that decay should limit.
UNDECAYED = ["bias", "gamma", "beta"]


def build_optimizer(learning_rate: float, ema_momentum: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """Adam (AveragingAdam when ema_momentum > 0) decaying only the kernels by weight_decay x learning rate per step."""
    decay = weight_decay or None  # None skips Keras' decay step altogether
    optimizer = (AveragingAdam(learning_rate, ema_momentum, weight_decay=decay) if ema_momentum
                 else keras.optimizers.Adam(learning_rate, weight_decay=decay))
    if decay:
        optimizer.exclude_from_weight_decay(var_names=UNDECAYED)
    return optimizer

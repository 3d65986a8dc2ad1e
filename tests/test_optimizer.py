"""The training optimizer's decoupled weight decay: kernels shrink, biases and batch-norm parameters do not."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lib.averaging import AveragingAdam
from lib.optimizer import build_optimizer


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", bias_initializer="ones")(inputs)
    x = keras.layers.BatchNormalization(gamma_initializer="ones", beta_initializer="ones")(x)
    return keras.Model(inputs, keras.layers.Conv2DTranspose(1, 2, strides=2)(x))


def _step_with_zero_gradients(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    # Adam's own update is zero for zero gradients, so whatever changes is the decay.
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])


@pytest.mark.parametrize("ema", [0.0, 0.999])
def test_decay_shrinks_kernels_by_rate_times_learning_rate_and_leaves_the_rest(ema):
    model = _model()
    optimizer = build_optimizer(0.01, ema, weight_decay=0.5)
    assert isinstance(optimizer, AveragingAdam) == bool(ema)
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    _step_with_zero_gradients(model, optimizer)
    kernels = 0
    for v in model.trainable_variables:
        after = keras.ops.convert_to_numpy(v)
        if v.name == "kernel":
            kernels += 1
            np.testing.assert_allclose(after, before[v.path] * (1 - 0.5 * 0.01), rtol=1e-6)
        else:
            np.testing.assert_array_equal(after, before[v.path])
    assert kernels == 2


def test_no_decay_leaves_every_weight_alone():
    model = _model()
    optimizer = build_optimizer(0.01, 0.999, weight_decay=0.0)
    assert optimizer.weight_decay is None
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    _step_with_zero_gradients(model, optimizer)
    for value, v in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), value)

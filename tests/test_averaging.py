"""The moving average of the weights: its warm-up, and the callback that validates and checkpoints it."""
from __future__ import annotations

import keras
import numpy as np

from lib.averaging import AveragedWeights, AveragingAdam

X = np.random.default_rng(0).random((32, 4)).astype("float32")
Y = X @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")


def _model(momentum: float) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=AveragingAdam(0.05, momentum), loss="mse")
    return model


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    return [w.copy() for w in model.get_weights()]


def _averages(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]


def test_the_average_warms_up_instead_of_keeping_the_initial_weights():
    model = _model(momentum=0.9999)
    steps = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(_snapshot(model)))
    model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[record])
    expected = steps[0]
    for t, weights in enumerate(steps[1:], start=1):
        momentum = min(0.9999, (1 + t) / (10 + t))
        expected = [momentum * a + (1 - momentum) * w for a, w in zip(expected, weights)]
    for average, value in zip(_averages(model), expected):
        np.testing.assert_allclose(average, value, rtol=1e-4, atol=1e-6)
    # A fixed momentum of 0.9999 would have left the average at the initial weights; this one follows training.
    start = _model(momentum=0.9999).get_weights()
    assert all(np.abs(a - s).max() > 0.05 for a, s in zip(_averages(model), start))


def _averaging_fit(with_callback: bool) -> tuple[list, list, list]:
    """Fit with the moving average; record the model's weights between and after the two callbacks."""
    model = _model(momentum=0.8)
    inside, after, averages = [], [], []
    record_inside = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: inside.append(_snapshot(model)))
    record_after = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: (after.append(_snapshot(model)), averages.append(_averages(model))))
    callbacks = [record_after]
    if with_callback:
        average = AveragedWeights()
        callbacks = [average, record_inside, average.swap_back, record_after]
    model.fit(X, Y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    return inside, after, averages


def test_averaged_weights_are_in_the_model_between_the_two_callbacks_and_training_is_unchanged():
    inside, after, averages = _averaging_fit(with_callback=True)
    _, plain_after, plain_averages = _averaging_fit(with_callback=False)
    for epoch in range(3):
        for seen, average, raw in zip(inside[epoch], averages[epoch], after[epoch]):
            np.testing.assert_allclose(seen, average, rtol=1e-6)  # between the two: the average
            assert not np.allclose(average, raw)  # and it differs from the training state
        for raw, plain in zip(after[epoch], plain_after[epoch]):
            np.testing.assert_allclose(raw, plain, rtol=1e-5)  # swapping back leaves training as without it
        for average, plain in zip(averages[epoch], plain_averages[epoch]):
            np.testing.assert_allclose(average, plain, rtol=1e-5)


def test_a_saved_model_with_the_averaging_optimizer_loads_again(tmp_path):
    model = _model(momentum=0.9)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, AveragingAdam) and loaded.optimizer.ema_momentum == 0.9
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6)

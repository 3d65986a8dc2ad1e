"""Batch norm folded into the convolution before it: the same predictions from a model without it."""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from lib.folding import compute_dtype, fold_batch_norm, foldable_pairs, load_for_inference, with_policy
from lib.unet import build_unet


def _randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Give every batch norm statistics and an affine map far from the identity it starts as."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, n), rng.normal(0, 0.5, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.2, 3.0, n)])


def _image(shape=(2, 32, 40, 1), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_folded_unet_has_no_batch_norm_and_predicts_the_same() -> None:
    model = build_unet(channels=1, n_classes=1, depth=2, base_filters=8, batch_norm=True)
    _randomize_batch_norms(model)
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)
    assert len(foldable_pairs(model)) == 10  # two convolutions in each of 2 down, 1 bottom and 2 up blocks
    x = _image()
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(folded.predict_on_batch(x), expected, atol=2e-5)
    # The trained model is left as it was.
    assert sum(isinstance(layer, layers.BatchNormalization) for layer in model.layers) == 10
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected)


def test_refolding_into_the_same_copy_follows_new_weights_and_keeps_its_predict_function() -> None:
    # The holdout callback refolds every epoch: a new copy would trace a new predict function each time.
    model = build_unet(channels=1, n_classes=1, depth=2, base_filters=8, batch_norm=True)
    _randomize_batch_norms(model, seed=0)
    folded = fold_batch_norm(model)
    x = _image()
    folded.predict_on_batch(x)
    function = folded.predict_function
    _randomize_batch_norms(model, seed=1)
    first_conv = next(layer for layer in model.layers if isinstance(layer, layers.Conv2D))
    first_conv.kernel.assign(keras.ops.convert_to_numpy(first_conv.kernel) * -1.5)
    again = fold_batch_norm(model, into=folded)
    assert again is folded
    np.testing.assert_allclose(again.predict_on_batch(x), keras.ops.convert_to_numpy(model(x, training=False)),
                               atol=2e-5)
    assert again.predict_function is function


def test_folding_a_softmax_unet_loaded_from_a_keras_file(tmp_path) -> None:
    model = build_unet(channels=3, n_classes=4, depth=2, base_filters=4, batch_norm=True, upsampling="bilinear")
    _randomize_batch_norms(model, seed=3)
    model.save(tmp_path / "best.keras")
    folded = load_for_inference(tmp_path / "best.keras")
    x = _image((1, 24, 16, 3))
    np.testing.assert_allclose(folded.predict_on_batch(x), keras.ops.convert_to_numpy(model(x, training=False)),
                               atol=2e-5)


def test_folding_a_residual_unet_folds_the_shortcut_batch_norms_too() -> None:
    model = build_unet(channels=1, n_classes=1, depth=2, base_filters=4, batch_norm=True, residual=True)
    _randomize_batch_norms(model, seed=4)
    assert len(foldable_pairs(model)) == 15  # two convolutions and a shortcut in each of the five blocks
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)
    x = _image()
    np.testing.assert_allclose(folded.predict_on_batch(x), keras.ops.convert_to_numpy(model(x, training=False)),
                               atol=2e-5)


def test_a_model_without_batch_norm_is_returned_as_it_is() -> None:
    model = build_unet(channels=1, n_classes=1, depth=2, base_filters=4, batch_norm=False)
    assert fold_batch_norm(model) is model


def test_batch_norms_that_cannot_be_folded_stay() -> None:
    inputs = keras.Input((None, None, 1))
    conv = layers.Conv2D(4, 3, padding="same", use_bias=False, name="shared")(inputs)
    after_shared = layers.BatchNormalization(name="bn_shared")(conv)  # the conv output is also used below
    relu_conv = layers.Conv2D(4, 3, padding="same", activation="relu", name="relu_conv")(inputs)
    after_relu = layers.BatchNormalization(name="bn_relu")(relu_conv)  # a ReLU sits between: not affine
    plain = layers.Conv2D(4, 3, padding="same", name="plain")(inputs)
    after_plain = layers.BatchNormalization(name="bn_plain")(plain)
    outputs = layers.Concatenate()([after_shared, conv, after_relu, after_plain])
    model = keras.Model(inputs, outputs)
    _randomize_batch_norms(model, seed=5)
    assert foldable_pairs(model) == {"bn_plain": "plain"}
    folded = fold_batch_norm(model)
    names = {layer.name for layer in folded.layers}
    assert {"bn_shared", "bn_relu"} <= names and "bn_plain" not in names
    x = _image((1, 12, 12, 1))
    np.testing.assert_allclose(folded.predict_on_batch(x), keras.ops.convert_to_numpy(model(x, training=False)),
                               atol=2e-5)


def test_folding_a_compiled_model_in_training_as_the_holdout_callback_does() -> None:
    from lib.losses import loss_and_metrics

    model = build_unet(channels=1, n_classes=1, depth=2, base_filters=4, batch_norm=True)
    loss, metrics = loss_and_metrics("bce_dice", 1)  # a loss Keras cannot rebuild from a compile config
    model.compile(optimizer="adam", loss=loss, metrics=metrics)
    x = _image((4, 16, 16, 1))
    model.fit(x, (x > 0.5).astype(np.float32), epochs=1, verbose=0)
    folded = fold_batch_norm(model)
    np.testing.assert_allclose(folded.predict_on_batch(x), keras.ops.convert_to_numpy(model(x, training=False)),
                               atol=2e-5)


def test_a_model_with_a_shared_layer_is_left_unfolded() -> None:
    inputs = keras.Input((None, None, 2))
    conv = layers.Conv2D(2, 3, padding="same", use_bias=False)
    normed = layers.BatchNormalization()(conv(inputs))
    outputs = layers.Concatenate()([normed, conv(normed)])  # the same convolution used twice
    model = keras.Model(inputs, outputs)
    assert fold_batch_norm(model) is model


def test_a_mixed_precision_model_is_copied_to_another_policy_with_the_same_weights(tmp_path) -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(channels=1, n_classes=1, depth=2, base_filters=8, batch_norm=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _randomize_batch_norms(model)
    assert compute_dtype(model) == "bfloat16"
    copy = with_policy(model, "float32")
    assert compute_dtype(copy) == "float32"
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), model.get_weights()))
    x = _image()
    exact = copy.predict_on_batch(x)
    assert exact.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: the trained policy's answer is near the float32 one, not equal.
    rough = keras.ops.convert_to_numpy(model(x, training=False))
    assert 0 < np.abs(rough - exact).mean() < 0.01
    assert with_policy(model, "mixed_bfloat16") is model  # already there: no copy
    # Saved and loaded for inference here: folded, and in this machine's fastest precision.
    model.save(tmp_path / "m.keras")
    loaded = load_for_inference(tmp_path / "m.keras")
    from lib.backend import machine_policy
    assert loaded.get_layer("down0_conv1").dtype_policy.name == machine_policy()
    assert loaded.get_layer("logits").dtype_policy.name == "float32"  # the head stays float32
    assert np.abs(loaded.predict_on_batch(x) - exact).mean() < 0.01


def test_a_refined_unet_keeps_its_shared_refinement_through_a_policy_copy_and_saving(tmp_path) -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(channels=1, n_classes=1, depth=2, base_filters=8, batch_norm=True, refinements=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _randomize_batch_norms(model)
    assert fold_batch_norm(model) is model  # its refinement layers are called twice: nothing folds
    copy = with_policy(model, "float32")
    # Cloned per call, the refinement would get a second set of weights and the copy more of them.
    assert len(copy.weights) == len(model.weights) and copy.count_params() == model.count_params()
    x = _image()
    exact = copy.predict_on_batch(x)
    assert exact.shape == (2, 32, 40, 1)
    assert 0 < np.abs(keras.ops.convert_to_numpy(model(x, training=False)) - exact).mean() < 0.01
    model.save(tmp_path / "refined.keras")
    loaded = load_for_inference(tmp_path / "refined.keras")
    assert np.abs(loaded.predict_on_batch(x) - exact).mean() < 0.01
    assert keras.ops.convert_to_numpy(loaded(x, training=True)).shape == (2, 32, 40, 3)

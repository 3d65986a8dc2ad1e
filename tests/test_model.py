"""The U-Net builder, the losses and the training metrics (backend-agnostic keras.ops code)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from lib.losses import (CLDICE_WEIGHT, bce_cldice_loss, bce_dice_loss, bce_loss, cldice_loss, dice_coefficient,
                        dice_loss, iou_coefficient, loss_and_metrics, soft_skeleton)
from lib.unet import build_unet


@pytest.mark.parametrize("depth,size", [(1, (6, 10)), (2, (32, 48)), (3, (64, 40)), (4, (48, 80))])
def test_unet_is_fully_convolutional_for_sizes_divisible_by_2_to_depth(depth, size):
    model = build_unet(channels=1, depth=depth, base_filters=4)
    out = model.predict(np.random.rand(2, *size, 1).astype("float32"), verbose=0)
    assert out.shape == (2, *size, 1)
    assert ((out > 0) & (out < 1)).all()


def test_unet_depth_sets_the_number_of_pooling_levels_and_widths_double():
    model = build_unet(depth=3, base_filters=8)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert len(pools) == 3
    bottom = model.get_layer("bottom_conv2")
    assert bottom.filters == 8 * 2 ** 3


def test_softmax_head_sums_to_one_over_classes_and_rgb_input():
    model = build_unet(channels=3, n_classes=4, depth=2, base_filters=4, upsampling="bilinear", dropout=0.2)
    out = model.predict(np.random.rand(1, 16, 24, 3).astype("float32"), verbose=0)
    assert out.shape == (1, 16, 24, 4)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_batch_norm_switch_adds_and_removes_normalization_layers():
    with_bn = build_unet(depth=2, base_filters=4, batch_norm=True)
    without = build_unet(depth=2, base_filters=4, batch_norm=False)
    count = lambda m: sum(isinstance(l, keras.layers.BatchNormalization) for l in m.layers)
    assert count(with_bn) == 2 * 5 and count(without) == 0


@pytest.mark.parametrize("batch_norm", [False, True])
def test_residual_blocks_add_a_projected_shortcut_and_keep_the_output_shape(batch_norm):
    plain = build_unet(depth=2, base_filters=4, batch_norm=batch_norm)
    residual = build_unet(depth=2, base_filters=4, batch_norm=batch_norm, residual=True)
    adds = [layer for layer in residual.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 5 and not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    # each block gains one 1x1 convolution from its input to its width (plus a batch norm when enabled)
    shortcut = residual.get_layer("down1_shortcut")
    assert shortcut.kernel.shape == (1, 1, 4, 8)
    assert residual.count_params() - plain.count_params() == sum(
        layer.count_params() for layer in residual.layers if "shortcut" in layer.name)
    out = residual.predict(np.random.rand(1, 16, 24, 1).astype("float32"), verbose=0)
    assert out.shape == (1, 16, 24, 1)
    # the add feeds the second activation, so a block's output is relu(conv2 + shortcut)
    assert residual.get_layer("bottom_relu2").input is residual.get_layer("bottom_add").output


def test_refined_unet_predicts_its_last_stage_and_gives_every_stage_while_training():
    keras.utils.set_random_seed(0)
    model = build_unet(depth=2, base_filters=8, batch_norm=False, refinements=2)
    x = np.random.rand(2, 16, 24, 1).astype("float32")
    stacked = keras.ops.convert_to_numpy(model(x, training=True))
    assert stacked.shape == (2, 16, 24, 3)  # the U-Net's stage, then the two refinements
    predicted = model.predict(x, verbose=0)
    assert predicted.shape == (2, 16, 24, 1)
    np.testing.assert_allclose(predicted, stacked[..., 2:], atol=1e-6)
    # the first stage is the plain U-Net's head, the refinements differ from it and from each other
    base = keras.Model(model.input, model.get_layer("probabilities").output)
    np.testing.assert_allclose(base.predict(x, verbose=0), stacked[..., :1], atol=1e-6)
    assert np.abs(stacked[..., 1] - stacked[..., 0]).max() > 1e-3 < np.abs(stacked[..., 2] - stacked[..., 1]).max()
    # one set of refinement weights, whatever the number of passes; half the base filters, depth 2
    counts = [build_unet(depth=2, base_filters=8, batch_norm=False, refinements=k).count_params() for k in (0, 1, 3)]
    assert counts[0] < counts[1] == counts[2] == model.count_params()
    assert model.get_layer("refine_bottom_conv2").filters == 4 * 2 ** 2
    assert model.get_layer("refine_down0_conv1").kernel.shape == (3, 3, 1 + 8, 4)  # probabilities + first level


def test_refined_multiclass_unet_stacks_each_stages_softmax():
    model = build_unet(channels=3, n_classes=4, depth=2, base_filters=4, refinements=1)
    stacked = keras.ops.convert_to_numpy(model(np.random.rand(1, 16, 16, 3).astype("float32"), training=True))
    assert stacked.shape == (1, 16, 16, 8)
    np.testing.assert_allclose(stacked.reshape(1, 16, 16, 2, 4).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_stage_loss_is_the_mean_of_each_stages_loss_and_metrics_score_the_last(n_classes):
    rng = np.random.default_rng(0)
    if n_classes == 1:
        y = (rng.random((2, 8, 8, 1)) > 0.7).astype("float32")
        stages = [rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype("float32") for _ in range(3)]
    else:
        y = rng.integers(0, 3, (2, 8, 8, 1)).astype("float32")
        stages = [rng.dirichlet(np.ones(3), (2, 8, 8)).astype("float32") for _ in range(3)]
    plain_loss, plain_metrics = loss_and_metrics("bce", n_classes)
    loss, metrics = loss_and_metrics("bce", n_classes, refined=True)
    expected = np.mean([float(plain_loss(y, stage)) for stage in stages])
    assert float(loss(y, np.concatenate(stages, -1))) == pytest.approx(expected, rel=1e-5)
    assert float(loss(y, stages[1])) == pytest.approx(float(plain_loss(y, stages[1])), rel=1e-6)  # inference output
    for metric, plain in zip(metrics, plain_metrics):
        assert metric.__name__ == plain.__name__  # logged under the same name
        assert float(metric(y, np.concatenate(stages, -1))) == pytest.approx(float(plain(y, stages[2])), rel=1e-6)


def test_a_training_step_of_a_refined_unet_minimizes_the_mean_of_its_stages_losses():
    keras.utils.set_random_seed(0)
    x = np.random.rand(8, 16, 16, 1).astype("float32")
    y = (x > 0.6).astype("float32")
    model = build_unet(depth=2, base_filters=4, batch_norm=False, refinements=2)
    loss, metrics = loss_and_metrics("bce", 1, refined=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, metrics=metrics)
    stacked = keras.ops.convert_to_numpy(model(x, training=True))
    each = [float(bce_loss(y, stacked[..., k:k + 1])) for k in range(3)]
    first = model.train_on_batch(x, y, return_dict=True)
    # the mean of the three, not the last stage's loss alone
    assert abs(first["loss"] - np.mean(each)) * 10 < abs(first["loss"] - each[2])
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * first["loss"]


def test_dice_loss_matches_hand_computation():
    y_true = np.array([[1, 1, 0, 0]], dtype="float32")
    y_pred = np.array([[0.5, 1.0, 0.5, 0.0]], dtype="float32")
    # intersection 1.5, |true| 2, |pred| 2, smooth 1: dice = (3 + 1) / (4 + 1) = 0.8
    assert float(dice_loss(y_true, y_pred)) == pytest.approx(0.2, abs=1e-6)
    bce = -np.mean([np.log(0.5), np.log(1 - 1e-7), np.log(0.5), np.log(1 - 1e-7)])
    assert float(bce_loss(y_true, y_pred)) == pytest.approx(bce, abs=1e-3)
    assert float(bce_dice_loss(y_true, y_pred)) == pytest.approx(bce + 0.2, abs=1e-3)


def test_thresholded_metrics_agree_with_the_numpy_report_metrics():
    from lib.metrics import confusion_counts, scores_from_counts
    rng = np.random.default_rng(0)
    labels = rng.random((2, 8, 8, 1)) < 0.3
    probs = np.clip(labels * 0.6 + rng.random((2, 8, 8, 1)) * 0.5, 0, 1).astype("float32")
    expected = scores_from_counts(confusion_counts(labels, probs >= 0.5))
    assert float(dice_coefficient(labels.astype("float32"), probs)) == pytest.approx(expected["f1"], abs=1e-5)
    assert float(iou_coefficient(labels.astype("float32"), probs)) == pytest.approx(expected["jaccard"], abs=1e-5)


def _bars(widths: list[int], size: int = 48) -> np.ndarray:
    """A batch of one image with horizontal bars of the given widths, 4 px apart, 4 px from the left and right."""
    image = np.zeros((1, size, size, 1), "float32")
    top = 4
    for width in widths:
        image[0, top:top + width, 4:size - 4] = 1
        top += width + 4
    return image


@pytest.mark.parametrize("width", [1, 3, 5, 7, 9])
def test_soft_skeleton_of_a_bar_is_its_centre_line(width):
    bar = _bars([width])
    skeleton = np.asarray(soft_skeleton(keras.ops.convert_to_tensor(bar)))[0, ..., 0]
    assert skeleton.min() >= 0 and skeleton.max() <= 1
    assert np.all(skeleton[bar[0, ..., 0] == 0] == 0)  # never outside the shape
    rows = np.nonzero(skeleton.sum(axis=1))[0]
    assert list(rows) == [4 + width // 2]  # one row, the middle one
    # The line runs along the bar; erosion shortens it by about the half width at each end.
    assert (skeleton > 0.5).sum() >= 40 - width - 2


def test_cldice_loss_counts_a_missed_thin_vessel_like_a_missed_wide_one():
    label = _bars([9, 1])
    assert float(cldice_loss(label, label)) == pytest.approx(0.0, abs=1e-6)
    missed_thin = _bars([9, 0])
    thinned_wide = label.copy()
    thinned_wide[0, 4:7] = 0  # the wide bar's top 3 rows: three times the pixels of the thin bar
    # Pixel overlap barely notices the missed thin vessel, less than the thinned wide one ...
    assert float(dice_loss(label, missed_thin)) < float(dice_loss(label, thinned_wide))
    # ... but its centre line is half of all centre lines, while thinning keeps the wide one's inside the label.
    assert float(cldice_loss(label, missed_thin)) > 0.25
    assert float(cldice_loss(label, thinned_wide)) < 0.05
    broken = label.copy()
    broken[0, :, 20:26] = 0  # both vessels cut
    assert 0.05 < float(cldice_loss(label, broken)) < float(cldice_loss(label, missed_thin))
    probabilities = np.clip(label * 0.9 + 0.05, 0, 1).astype("float32")
    assert float(bce_cldice_loss(label, probabilities)) == pytest.approx(
        float(bce_loss(label, probabilities)) + CLDICE_WEIGHT * float(cldice_loss(label, probabilities)), rel=1e-5)


@pytest.mark.parametrize("loss_name", ["bce_dice", "bce_cldice"])
def test_a_few_training_steps_lower_the_loss_on_a_learnable_task(loss_name):
    keras.utils.set_random_seed(0)
    x = np.random.rand(16, 16, 16, 1).astype("float32")
    y = (x > 0.6).astype("float32")  # learnable from the pixel itself
    model = build_unet(depth=2, base_filters=4)
    loss, metrics = loss_and_metrics(loss_name, 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, metrics=metrics)
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


def test_multiclass_loss_ignores_void_pixels_and_applies_class_weights():
    from lib.losses import multiclass_loss
    probs = np.full((1, 2, 2, 3), 0.1, "float32")
    probs[..., 0] = 0.8  # predicts class 0 everywhere
    labels = np.array([[[0], [1]], [[2], [11]]], "float32")[None]  # 11 = void
    loss = multiclass_loss(3, ignore_index=11)
    expected = -(np.log(0.8) + np.log(0.1) + np.log(0.1)) / 3  # void pixel left out
    assert float(loss(labels, probs)) == pytest.approx(expected, rel=1e-4)
    void_changed = labels.copy()
    void_changed[0, 1, 1, 0] = 11
    probs_changed = probs.copy()
    probs_changed[0, 1, 1] = [0.01, 0.01, 0.98]  # whatever is predicted on void does not matter
    assert float(loss(void_changed, probs_changed)) == pytest.approx(expected, rel=1e-4)
    weighted = multiclass_loss(3, ignore_index=11, class_weights=[1.0, 2.0, 1.0])
    expected_w = -(np.log(0.8) + 2 * np.log(0.1) + np.log(0.1)) / 4
    assert float(weighted(labels, probs)) == pytest.approx(expected_w, rel=1e-4)
    with_dice = multiclass_loss(3, ignore_index=11, dice=True)
    assert float(with_dice(labels, probs)) > float(loss(labels, probs))

"""Moving average of the weights during training (Polyak averaging), used for validation and checkpoints."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="unet")
class AveragingAdam(keras.optimizers.Adam):
    """Adam keeping a moving average of the weights whose momentum warms up: min(m, (1 + t) / (10 + t)) at step t.

    Keras' fixed momentum keeps m ** t of the random initial weights in the average after t steps
    (0.61 after a 500-step epoch at m = 0.999), so the average is useless for the first epochs. With
    the warm-up (as tf.train.ExponentialMovingAverage with num_updates) it spans about the last tenth
    of the steps until that reaches 1 / (1 - m) steps.
    """

    def __init__(self, learning_rate: float = 0.001, ema_momentum: float = 0.999, **kwargs) -> None:
        kwargs["use_ema"] = True  # also present in a saved config
        super().__init__(learning_rate=learning_rate, ema_momentum=ema_momentum, **kwargs)

    def _update_model_variables_moving_average(self, trainable_variables) -> None:
        step = ops.cast(self.iterations, "float32")  # 0 at the first update: the average starts as a copy
        momentum = ops.where(step > 0, ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step)), 0.0)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                weight = ops.cast(momentum, var.dtype)
                average.assign(weight * average + (1.0 - weight) * var)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Validate, score and checkpoint the optimizer's moving average of the weights instead of the raw weights.

    Keras' SwapEMAWeights puts the average into the model for validation only. Here it also stays
    there from this callback's on_epoch_end to that of `swap_back`, so the callbacks placed between
    the two (holdout scoring, checkpoints) see the average, and those placed after it (the backup a
    resumed run starts from) see the training state. Checkpoints written in between hold the average
    as the model's weights and the raw weights in the optimizer's copy.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=False)
        self.swap_back = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self.on_test_end())

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.on_test_begin()  # swaps the average in, unless it is in already

"""Helper run in a subprocess by test_distribute.py: one device vs MirroredStrategy on two logical CPUs.

`python tests/mirrored_check.py` prints the comparison; `python tests/mirrored_check.py train ARGS`
runs train.py ARGS with the CPU split in two (for strategy = mirrored without GPUs).

The CPU must be split into two logical devices before TensorFlow initializes, hence a separate
process. Both runs start from the same initial weights and take the same SGD steps on the same fixed
global batch; the script prints the largest weight differences as JSON.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lib.distribute import make_distribution  # noqa: E402
from lib.losses import loss_and_metrics  # noqa: E402
from lib.unet import build_unet  # noqa: E402

STEPS, BATCH, SIZE = 5, 8, 16


def train(distribution, initial, x, y):
    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = build_unet(channels=1, depth=2, base_filters=4, batch_norm=False)
        model.set_weights(initial)
        loss, metrics = loss_and_metrics("bce", 1)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=distribution.replica_loss(loss),
                      metrics=metrics, jit_compile=False)
    history = model.fit(x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
    return model.get_weights(), history.history["loss"]


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 1)).astype("float32")
    y = (x + 0.5 * rng.normal(size=x.shape) > 0.8).astype("float32")
    keras.utils.set_random_seed(0)
    initial = build_unet(channels=1, depth=2, base_filters=4, batch_norm=False).get_weights()
    mirrored = make_distribution("mirrored")
    single_w, single_loss = train(make_distribution("single"), initial, x, y)
    mirrored_w, mirrored_loss = train(mirrored, initial, x, y)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single_w, initial))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(single_w, mirrored_w))
    rel = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(single_w, mirrored_w))
    print(json.dumps({"replicas": mirrored.replicas, "devices": mirrored.devices, "max_abs_diff": diff,
                      "max_rel_diff": rel, "max_update": moved, "single_loss": single_loss,
                      "mirrored_loss": mirrored_loss}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["train"]:
        # train.py itself on the two logical CPUs: mirrored_check.py train ARGS...
        import runpy
        sys.argv = [str(Path(__file__).resolve().parents[1] / "train.py"), *sys.argv[2:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        main()

"""Helper of test_backends.py: build the U-Net (with DropBlock and one refinement stage), fit a few steps on a
PatchStream over a tiny HDF5 file, predict one full image, and report the backend, the losses, the clDice loss of a
fixed image and the prediction's shape and range.

test_backends.py calls check() in its own process for its own backend, and runs the others as
    python tests/without_tensorflow.py tests/backend_check.py FOLDER [POLICY]
(KERAS_BACKEND=jax|torch), which prints the report as one JSON line. POLICY (default float32) may be
mixed_float16 or mixed_bfloat16, forced even on a CPU to check the losses under it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lib.backend import configure_precision, jit_setting  # noqa: E402
from lib.distribute import make_distribution  # noqa: E402
from lib.folding import fold_batch_norm  # noqa: E402
from lib.inference import predict_image  # noqa: E402
from lib.losses import cldice_loss, loss_and_metrics  # noqa: E402
from lib.pipeline import PatchStream  # noqa: E402
from lib.storage import write_prepared  # noqa: E402
from lib.unet import build_unet  # noqa: E402

N, SIZE = 64, 16


def fill(images, labels, positions) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((N, SIZE, SIZE, 1)).astype(np.float32)
    images[:] = x.astype(np.float16)
    labels[:] = (x > 0.6).astype(np.uint8)  # learnable from the pixel itself
    positions[:] = 0


def cldice_probe() -> float:
    """The soft clDice loss (pooling-based skeletons) of a wide and a thin bar against a blurred copy."""
    bars = np.zeros((1, 24, 24, 1), np.float32)
    bars[0, 4:11, 2:22] = 1
    bars[0, 15, 2:22] = 1
    return float(keras.ops.convert_to_numpy(cldice_loss(bars, bars * 0.8 + 0.1)))


def check(folder: Path, forced_policy: str | None = None) -> dict:
    """Train and predict under the current backend (and forced_policy if given); return the report."""
    path = folder / "dataset.h5"
    write_prepared(path, {}, {"dataset": "backend-check"}, N, SIZE, 1, fill)
    keras.utils.set_random_seed(0)
    distribution = make_distribution("auto")
    policy = configure_precision(False)
    if forced_policy is not None and forced_policy != policy:
        policy = forced_policy
        keras.mixed_precision.set_global_policy(policy)
    with distribution.scope():
        model = build_unet(channels=1, depth=2, base_filters=4, dropout=0.1, dropout_block=3,  # DropBlock too
                           refinements=1)
        loss, metrics = loss_and_metrics("bce_dice", 1, refined=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=distribution.replica_loss(loss),
                      metrics=metrics, jit_compile=jit_setting("auto"))
    stream = PatchStream(path, 0, N, 16, steps=4, shuffle=True, seed=1)
    history = model.fit(stream, epochs=3, verbose=0)
    image = np.random.default_rng(1).random((40, 56, 1)).astype(np.float32)
    testing = {"tta_flips": True, "window": 32, "stride": 24, "batch_size": 2, "blend": "gaussian", "zoom": 1.0,
               "tta_scales": [1.0], "mirror_margin": 0}
    prob = predict_image(fold_batch_norm(model), image, testing, depth=2)
    return {
        "backend": keras.backend.backend(), "policy": policy, "strategy": distribution.name,
        "compute_dtype": model.get_layer("down0_conv1").compute_dtype, "optimizer": type(model.optimizer).__name__,
        "output_dtype": str(prob.dtype),
        "training_channels": int(keras.ops.shape(model(image[None], training=True))[-1]),
        "tensorflow_loaded": "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None,
        "loss": history.history["loss"], "metrics": sorted(history.history),
        "cldice_probe": cldice_probe(), "shape": list(prob.shape), "min": float(prob.min()), "max": float(prob.max()),
    }


if __name__ == "__main__":
    print(json.dumps(check(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)))

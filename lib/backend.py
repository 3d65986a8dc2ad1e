"""Backend-neutral switches for training speed: mixed precision and XLA (jit) compilation.

Nothing here imports TensorFlow unless Keras runs on it, so the same code serves a machine that
has only JAX or only PyTorch.
"""
from __future__ import annotations

import keras


def backend_name() -> str:
    """The Keras backend in use: tensorflow, jax or torch."""
    return keras.backend.backend()


def has_gpu() -> bool:
    """Whether the current backend sees a GPU (CUDA or ROCm)."""
    backend = backend_name()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax
            return any(d.platform in ("gpu", "cuda", "rocm") for d in jax.devices())
        if backend == "torch":
            import torch
            return bool(torch.cuda.is_available())
    except Exception:  # a broken driver is not a reason to fail: train in float32
        return False
    return False


def configure_precision(mixed_precision: bool) -> str:
    """Set the global dtype policy before the model is built; return the policy in force.

    mixed_float16 on a GPU (float16 compute, float32 weights, automatic loss scaling in the
    optimizer; the U-Net head stays float32). On a CPU the switch is ignored with a warning: on the
    project's 2-core Xeon (no native bfloat16) a training step took 303 ms in float32, 591 ms in
    mixed_bfloat16 and 2201 ms in mixed_float16 (README.md, "Multi-device and other backends").
    """
    policy = "float32"
    if mixed_precision:
        if has_gpu():
            policy = "mixed_float16"
        else:
            print("warning: [training settings] mixed_precision = true has no effect without a GPU: "
                  "training in float32 (mixed precision is slower on CPUs).")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def jit_setting(choice: str | bool, distributed: bool = False) -> str | bool:
    """The jit_compile argument for model.compile from the configuration value auto|true|false.

    auto keeps Keras' own choice: XLA on for JAX and for TensorFlow on one GPU; off on CPU-only
    TensorFlow, under tf.distribute and for PyTorch (where true means torch.compile). With a
    tf.distribute strategy, true is turned off with a warning: Keras 3 compiles the step of each
    replica with XLA, which then fails to reach the variables on the other devices.
    """
    value = choice if isinstance(choice, bool) else {"auto": "auto", "true": True, "false": False}[choice]
    if value is True and distributed:
        print("warning: [training settings] jit_compile = true does not work with the mirrored and "
              "multi_worker strategies (XLA cannot reach the other devices' variables): training without XLA.")
        return False
    return value

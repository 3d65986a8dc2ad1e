"""Backend-neutral switches for training speed: mixed precision and XLA (jit) compilation.

Nothing here imports TensorFlow unless Keras runs on it, so the same code serves a machine that
has only JAX or only PyTorch.
"""
from __future__ import annotations

from pathlib import Path

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


def cpu_has_native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX bfloat16 tiles (Intel Sapphire Rapids and later), read from /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux, or no /proc: assume the slow case
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def precision_policy(setting: bool | str, gpu: bool, backend: str, native_bfloat16: bool) -> str:
    """The dtype policy for [training settings] mixed_precision (auto|true|false) on this machine.

    On a GPU: mixed_float16 (float16 compute, float32 weights, loss scaling in the optimizer). On a CPU:
    mixed_bfloat16 where TensorFlow runs bfloat16 on AMX tiles, float32 elsewhere. On a 2-core
    Xeon with AMX the default model trained at 167 patches/s in mixed_bfloat16 and 57 in float32;
    on one without (AVX-512 alone) bfloat16 took twice as long as float32 (README.md, "Mixed
    precision and XLA on a CPU"). auto chooses mixed precision wherever it is
    the faster one; true asks for it and warns where it would be slower; false is float32.
    """
    if setting is False:
        return "float32"
    if gpu:
        return "mixed_float16"
    if native_bfloat16 and backend == "tensorflow":
        return "mixed_bfloat16"
    if setting is True:
        print("warning: [training settings] mixed_precision = true has no effect on this CPU (no AMX bfloat16, "
              "or a backend other than TensorFlow): training in float32 (mixed precision is slower here).")
    return "float32"


def machine_policy(setting: bool | str = "auto") -> str:
    """The dtype policy for mixed_precision = setting on this machine; auto (the default) is the fastest."""
    if setting is False:
        return "float32"  # without asking the devices
    return precision_policy(setting, has_gpu(), backend_name(), cpu_has_native_bfloat16())


def configure_precision(setting: bool | str) -> str:
    """Set the global dtype policy for mixed_precision (auto|true|false) before the model is built; return it."""
    policy = machine_policy(setting)
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

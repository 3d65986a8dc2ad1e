"""Any Keras backend: the model, losses and metrics train under TensorFlow, JAX and PyTorch, and the
scripts run on a machine without TensorFlow. A backend that is not installed is skipped."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, reset_keras, script_env, set_args

BACKENDS = ("tensorflow", "jax", "torch")
WITHOUT_TF = str(REPO / "tests" / "without_tensorflow.py")

SCRIPT_SETTINGS = [
    "dataset=DRIVE", "patch_size=16", "N_subimgs=300", "depth=1", "base_filters=4", "N_epochs=2",
    "steps_per_epoch=3", "training_settings.batch_size=8", "window=32", "stride=32", "validate_every=1",
    "learning_rate=0.003", "max_train_minutes=0", "validation_fraction=0.1", "holdout_ids=27,28",
]


def _need(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed")


def _run(backend: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run a Python file under KERAS_BACKEND=backend; other backends also without TensorFlow."""
    env = dict(script_env(), KERAS_BACKEND=backend)
    # XLA's optimizations took two thirds of the JAX tests' time (dozens of tiny programs compiled): these
    # tests check results, not speed.
    env.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    prefix = [] if backend == "tensorflow" else [WITHOUT_TF]
    return subprocess.run([sys.executable, *prefix, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _check(backend: str, folder: Path, policy: str) -> dict:
    """backend_check's report: in this process for its own backend, else from a child process."""
    keras = pytest.importorskip("keras")
    if backend == keras.backend.backend():
        from backend_check import check
        try:
            return check(folder, policy)
        finally:
            reset_keras()
    result = _run(backend, str(REPO / "tests" / "backend_check.py"), str(folder), policy)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_unet_losses_and_metrics_train_and_predict_under_mixed_float16(backend, tmp_path):
    """A few steps of bce_dice with the dice/iou metrics on a PatchStream, then a full-image prediction."""
    _need(backend)
    report = _check(backend, tmp_path, "mixed_float16")
    assert report["backend"] == backend and report["strategy"] == "single"
    if backend != "tensorflow":
        assert not report["tensorflow_loaded"]
    assert report["compute_dtype"] == "float16" and report["optimizer"] == "LossScaleOptimizer"
    losses = report["loss"]
    assert all(math.isfinite(value) for value in losses) and losses[-1] < losses[0]
    assert {"dice_coefficient", "iou_coefficient", "loss"} <= set(report["metrics"])
    assert report["shape"] == [40, 56, 1] and report["output_dtype"] == "float32"
    assert report["training_channels"] == 2  # both stages while training, the refined one at inference
    assert 0.0 <= report["min"] <= report["max"] <= 1.0
    # The pooling behind the soft skeletons (3x1, 1x3 and 3x3, same padding) agrees across backends.
    from backend_check import cldice_probe
    assert 0.01 < report["cldice_probe"] == pytest.approx(cldice_probe(), abs=1e-5)


@pytest.mark.parametrize("backend", ("jax", "torch"))
def test_prepare_train_predict_run_without_tensorflow(backend, tmp_path, small_drive):
    _need(backend)
    args = ["--config", "configuration_sample.txt",
            *set_args(SCRIPT_SETTINGS + [f"dataset_dir={small_drive}", f"prepared_dir={tmp_path / 'prepared'}",
                                         f"runs_dir={tmp_path / 'runs'}", f"name={backend}"])]
    for script, extra in (("prepare_datasets.py", []), ("train.py", []), ("predict.py", ["--split", "test"])):
        result = _run(backend, str(REPO / script), *args, *extra)
        assert result.returncode == 0, f"{script}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        if script == "train.py":
            assert f"backend {backend}" in result.stdout and "Finished in" in result.stdout
    run = tmp_path / "runs" / backend
    assert (run / "best.keras").is_file() and (run / "training_summary.json").is_file()
    assert not (run / "tensorboard").exists()  # TensorBoard logging is TensorFlow-only
    metrics = json.loads((run / "predictions" / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["pooled"]["auc_roc"] <= 1.0
    # tf.distribute strategies are refused with a clear message rather than ignored.
    refused = _run(backend, str(REPO / "train.py"), *args, "--set", "name=refused", "--set", "strategy=mirrored")
    assert refused.returncode == 2 and "needs the TensorFlow backend" in refused.stderr


def test_precision_policy_uses_mixed_precision_only_where_it_is_faster(capsys):
    from lib.backend import precision_policy
    assert precision_policy(False, gpu=True, backend="tensorflow", native_bfloat16=True) == "float32"
    for setting in (True, "auto"):
        assert precision_policy(setting, gpu=True, backend="jax", native_bfloat16=False) == "mixed_float16"
        assert precision_policy(setting, gpu=False, backend="tensorflow", native_bfloat16=True) == "mixed_bfloat16"
    assert capsys.readouterr().out == ""
    # XLA's CPU backend and PyTorch get no AMX kernels from TensorFlow's oneDNN: float32 there.
    assert precision_policy("auto", gpu=False, backend="jax", native_bfloat16=True) == "float32"
    assert capsys.readouterr().out == ""
    assert precision_policy("auto", gpu=False, backend="tensorflow", native_bfloat16=False) == "float32"
    assert capsys.readouterr().out == ""  # auto asked for nothing: no warning
    assert precision_policy(True, gpu=False, backend="tensorflow", native_bfloat16=False) == "float32"
    assert "no effect on this CPU" in capsys.readouterr().out


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    from lib.backend import cpu_has_native_bfloat16
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n")
    assert cpu_has_native_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\nmodel name\t: amx_bf16 lookalike\n")
    assert not cpu_has_native_bfloat16(cpuinfo)  # AVX-512 bfloat16 alone was slower than float32
    assert not cpu_has_native_bfloat16(tmp_path / "missing")


def test_configure_precision_sets_the_global_policy(capsys):
    keras = pytest.importorskip("keras")
    from lib.backend import configure_precision, jit_setting
    try:
        policy = configure_precision("auto")
        assert keras.mixed_precision.global_policy().name == policy
        assert policy in ("float32", "mixed_float16", "mixed_bfloat16")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert configure_precision(False) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert (jit_setting("auto"), jit_setting("true"), jit_setting("false")) == ("auto", True, False)
    assert jit_setting("true", distributed=True) is False  # XLA fails across tf.distribute replicas
    assert "does not work with the mirrored" in capsys.readouterr().out


def test_unet_trains_and_predicts_under_mixed_bfloat16_on_tensorflow(tmp_path):
    """The CPU mixed precision of machines with AMX: bfloat16 layers, plain Adam (no loss scaling), float32 output."""
    _need("tensorflow")
    report = _check("tensorflow", tmp_path, "mixed_bfloat16")
    assert report["compute_dtype"] == "bfloat16" and report["optimizer"] == "Adam"
    assert all(math.isfinite(value) for value in report["loss"]) and report["loss"][-1] < report["loss"][0]
    assert report["output_dtype"] == "float32" and 0.0 <= report["min"] <= report["max"] <= 1.0

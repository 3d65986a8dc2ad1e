"""The scripts answer --help and errors in the configuration, run name or prepared data before they start
TensorFlow, which takes seconds."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, script_env

WITHOUT_TF = str(REPO / "tests" / "without_tensorflow.py")


def _run_without_tensorflow(*args: str) -> subprocess.CompletedProcess:
    """Run a script where importing TensorFlow fails: whatever needs it (Keras on its default backend) fails too."""
    env = dict(script_env(), KERAS_BACKEND="tensorflow")
    return subprocess.run([sys.executable, WITHOUT_TF, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("script", ["prepare_datasets.py", "train.py", "predict.py"])
def test_help_does_not_start_tensorflow(script):
    result = _run_without_tensorflow(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and "--config" in result.stdout


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
def test_an_unknown_key_is_reported_before_tensorflow_starts(script):
    result = _run_without_tensorflow(script, "--set", "model.base_filter=8")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "base_filter" in result.stderr and "base_filters" in result.stderr  # the key and the likely fix
    assert "Error" not in result.stderr  # a message, not an ImportError's traceback


def test_predict_reports_a_missing_run_before_tensorflow_starts(tmp_path):
    result = _run_without_tensorflow("predict.py", "--set", f"runs_dir={tmp_path}", "--set", "name=nothing_here")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tmp_path / 'nothing_here'} is not a run folder" in result.stderr


def test_train_reports_missing_prepared_data_before_tensorflow_starts(tmp_path):
    result = _run_without_tensorflow("train.py", "--set", f"prepared_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tmp_path / 'dataset.h5'} not found" in result.stderr and "prepare_datasets.py" in result.stderr


def test_predict_refuses_a_dataset_folder_of_images_as_data_before_tensorflow_starts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "case1.png").write_bytes(b"not read")
    result = _run_without_tensorflow("predict.py", "--data", str(tmp_path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"--data {tmp_path} holds no dataset.h5" in result.stderr
    assert "give them with --input" in result.stderr and "Error" not in result.stderr

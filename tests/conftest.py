"""Shared test helpers: run the real scripts as a user would, on small generated datasets."""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.start_up import choose_cpu_kernels  # noqa: E402

# The scripts run in this process (run_script) and must compute as they do in their own, so TensorFlow starts
# here with the kernels they choose, whichever test imports it first.
choose_cpu_kernels()

# A tiny but real configuration: small images, small model, a few dozen steps.
TINY = [
    "dataset=DRIVE", "patch_size=32", "N_subimgs=2400", "depth=2", "base_filters=8",
    "N_epochs=3", "steps_per_epoch=40", "training_settings.batch_size=16", "window=64", "stride=48",
    "validate_every=1", "learning_rate=0.003", "max_train_minutes=0", "validation_fraction=0.1",
    "tta_flips=auto",  # as in configuration.txt: train.py (threshold) and predict.py settle it for the model
]


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one test process per core, at most four (each holds TensorFlow and its own trained run)."""
    return max(1, min(os.cpu_count() or 1, 4))


def script_env() -> dict[str, str]:
    """Environment for child scripts: quiet TensorFlow, repo importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_script(script: str, *args: str, check: bool = True, timeout: float = 600,
               fresh_process: bool = False) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts from the repository root as `python SCRIPT ARGS` would.

    By default it runs inside this process: TensorFlow takes seconds to import, and the suite runs the
    scripts about a hundred times. fresh_process=True (or UNET_TESTS_SUBPROCESS=1 for every call) runs
    it in a child process instead, for what only a process shows (start-up output, exit by signal).
    """
    if fresh_process or os.environ.get("UNET_TESTS_SUBPROCESS") == "1":
        result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=script_env(),
                                capture_output=True, text=True, timeout=timeout)
    else:
        result = _run_in_this_process(script, list(args))
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _run_in_this_process(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """The script as __main__ with its stdout, stderr and exit status captured; global state put back after."""
    path = str(REPO / script)
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        sys.argv = [path, *args]
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # pytest records warnings per test; a script's go to its stderr, as in a process of its own.
            warnings.simplefilter("default")
            warnings.showwarning = _warning_to_stderr
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what the interpreter would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for signum, handler in saved_signals.items():
            signal.signal(signum, handler)
        reset_keras()
    return subprocess.CompletedProcess([sys.executable, path, *args], code, out.getvalue(), err.getvalue())


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def reset_keras() -> None:
    """Drop the models a script built and its dtype policy, as the end of its process would."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def write_tiff_stack(pages: list, path: Path) -> None:
    """Write 2-D uint8 arrays as one multi-page TIFF (the ISBI 2012 layout)."""
    from PIL import Image
    first, *rest = [Image.fromarray(p) for p in pages]
    first.save(path, save_all=True, append_images=rest)


def set_args(pairs: list[str]) -> list[str]:
    """Turn key=value pairs into repeated --set arguments."""
    return [part for pair in pairs for part in ("--set", pair)]


@pytest.fixture(scope="session")
def small_drive(tmp_path_factory) -> Path:
    """A small DRIVE-layout dataset (.tif images, .gif labels and masks): 8 training, 2 test images."""
    from lib.sample_data import write_drive_sample
    root = tmp_path_factory.mktemp("datasets") / "DRIVE"
    return write_drive_sample(root, n_train=8, n_test=2, width=128, height=120, seed=3)


def tiny_settings(tmp: Path, drive: Path, name: str = "tiny", extra: list[str] | None = None) -> list[str]:
    """--set arguments pointing every path of configuration_sample.txt into a temporary folder."""
    pairs = TINY + [f"dataset_dir={drive}", f"prepared_dir={tmp / 'prepared'}", f"runs_dir={tmp / 'runs'}",
                    f"name={name}", "holdout_ids=27,28"] + (extra or [])
    return ["--config", "configuration_sample.txt", *set_args(pairs)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, small_drive):
    """One prepared dataset and one finished tiny run, shared by the tests that need a model."""
    tmp = tmp_path_factory.mktemp("e2e")
    args = tiny_settings(tmp, small_drive)
    prepare = run_script("prepare_datasets.py", *args, fresh_process=True)  # as users run it, once
    train = run_script("train.py", *args)
    return tmp, args, prepare, train

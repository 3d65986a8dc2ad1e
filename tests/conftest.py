"""Shared test helpers: run the real scripts as a user would, on small generated datasets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A tiny but real configuration: small images, small model, a few dozen steps.
TINY = [
    "dataset=DRIVE", "patch_size=32", "N_subimgs=2400", "depth=2", "base_filters=8",
    "N_epochs=3", "steps_per_epoch=40", "training_settings.batch_size=16", "window=64", "stride=48",
    "validate_every=1", "learning_rate=0.003", "max_train_minutes=0", "validation_fraction=0.1",
    "tta_flips=auto",  # as in configuration.txt: train.py (threshold) and predict.py settle it for the model
]


def script_env() -> dict[str, str]:
    """Environment for child scripts: quiet TensorFlow, repo importable."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_script(script: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts in a subprocess from the repository root."""
    result = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=script_env(),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


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
    prepare = run_script("prepare_datasets.py", *args)
    train = run_script("train.py", *args)
    return tmp, args, prepare, train

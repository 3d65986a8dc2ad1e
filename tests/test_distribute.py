"""Strategies without GPUs: two logical CPUs vs one device, two workers on localhost, chief-only writes."""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_script, script_env, set_args

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tf.distribute strategies need the TensorFlow backend")

from lib.distribute import Distribution, check_global_batch, make_distribution  # noqa: E402
from lib.errors import UserError  # noqa: E402

# Weights after 5 SGD steps (lr 0.5, updates of ~0.3) agree to ~6e-8: only float32 summation order
# differs between one device and two. 1e-5 leaves 100x room for other CPUs and BLAS builds while
# catching any real difference (a gradient counted twice moved the weights by ~0.09).
MIRRORED_TOLERANCE = 1e-5

# A tiny but complete training run: holdout scoring, validation patches, three epochs of two steps.
WORKER_SETTINGS = [
    "dataset=DRIVE", "patch_size=16", "N_subimgs=300", "depth=1", "base_filters=4", "N_epochs=3",
    "steps_per_epoch=2", "training_settings.batch_size=8", "window=32", "stride=32", "validate_every=1",
    "learning_rate=0.003", "max_train_minutes=0", "validation_fraction=0.1", "holdout_ids=27,28",
]


def test_single_and_auto_need_no_cluster_and_unknown_names_fail():
    assert make_distribution("single").replicas == 1
    auto = make_distribution("auto")  # no GPU here: one device
    assert auto.name == "single" and auto.is_chief and auto.workers == 1
    with auto.scope():
        pass
    with pytest.raises(UserError, match="one of"):
        make_distribution("horovod")


def test_a_single_device_says_whether_it_is_a_gpu_or_the_cpu():
    import tensorflow as tf

    single = make_distribution("single")
    assert single.gpu == bool(tf.config.list_physical_devices("GPU"))
    assert Distribution("single", gpu=True).describe() == "one GPU"
    # A GPU that CUDA cannot reach must not go unnoticed: the CPU is named, with where to look.
    assert Distribution("single").describe() == "the CPU (no GPU is visible; see README.md, GPU)"


@pytest.mark.parametrize("value,message", [
    ("", "needs the TF_CONFIG"),
    ("{not json", "not valid"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "index 3"),
])
def test_multi_worker_explains_a_missing_or_bad_tf_config(monkeypatch, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(UserError, match=message):
        make_distribution("multi_worker")


def test_global_batch_must_split_evenly_between_replicas():
    check_global_batch(32, Distribution("mirrored", replicas=4))
    with pytest.raises(UserError, match="multiple of 4, e.g. 36 or 32"):
        check_global_batch(34, Distribution("mirrored", replicas=4))


def test_loss_is_divided_between_replicas_only_when_there_are_several():
    def loss(y_true, y_pred):
        return 6.0
    assert Distribution("single").replica_loss(loss) is loss
    scaled = Distribution("mirrored", replicas=3).replica_loss(loss)
    assert scaled(None, None) == pytest.approx(2.0) and scaled.__name__ == "loss"
    import numpy as np
    per_pixel = Distribution("mirrored", replicas=3).replica_loss(lambda y_true, y_pred: np.ones((2, 4)))
    assert per_pixel(None, None).sum() == 8  # Keras scales non-scalar losses itself


def test_mirrored_on_two_logical_cpus_gives_the_weights_of_one_device():
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "tests" / "mirrored_check.py")], cwd=REPO,
                            env=script_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and len(report["devices"]) == 2
    assert report["max_update"] > 0.05  # the steps really moved the weights
    assert report["max_abs_diff"] < MIRRORED_TOLERANCE, report
    assert report["max_rel_diff"] < MIRRORED_TOLERANCE, report
    assert report["mirrored_loss"] == pytest.approx(report["single_loss"], rel=MIRRORED_TOLERANCE)
    print(f"mirrored check: {time.monotonic() - started:.1f} s, max abs diff {report['max_abs_diff']:.2e}")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_workers(args: list[str], logs: list[Path]) -> list[subprocess.Popen]:
    """One train.py process per log file, all on fresh localhost ports, as a TF_CONFIG cluster."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(len(logs))]}
    children = []
    for index, log in enumerate(logs):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(script_env(), TF_CONFIG=json.dumps(task))
        with open(log, "w") as handle:
            children.append(subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                             stdout=handle, stderr=subprocess.STDOUT, text=True))
    return children


def _kill(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _finish(children: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [child.wait(timeout=max(deadline - time.monotonic(), 1)) for child in children]
    except subprocess.TimeoutExpired:
        return [child.poll() if child.poll() is not None else -1 for child in children]
    finally:
        _kill(children)


@pytest.fixture(scope="module")
def worker_data(tmp_path_factory, small_drive):
    tmp = tmp_path_factory.mktemp("multiworker")
    base = ["--config", "configuration_sample.txt",
            *set_args(WORKER_SETTINGS + [f"dataset_dir={small_drive}", f"prepared_dir={tmp / 'prepared'}",
                                         f"runs_dir={tmp / 'runs'}"])]
    run_script("prepare_datasets.py", *base)
    return tmp, base


def test_two_workers_on_localhost_resume_after_a_kill_and_only_the_chief_writes(worker_data):
    """Two MultiWorkerMirroredStrategy workers (127.0.0.1 only): killed mid-run, rerun, finished."""
    tmp, base = worker_data
    args = [*base, "--set", "name=two_workers", "--set", "strategy=multi_worker"]
    run = tmp / "runs" / "two_workers"
    logs = [tmp / "worker0.log", tmp / "worker1.log"]
    started = time.monotonic()
    children = _start_workers(args, logs)
    backup = run / "backup" / "training_metadata.json"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and all(c.poll() is None for c in children):
            if backup.exists() and json.loads(backup.read_text() or "{}").get("epoch", 0) >= 1:
                break
            time.sleep(0.1)
        assert all(c.poll() is None for c in children), "\n".join(log.read_text()[-3000:] for log in logs)
    finally:
        _kill(children)
    killed_at = json.loads(backup.read_text())["epoch"]
    assert killed_at < 3
    first = [log.read_text() for log in logs]
    assert "multi_worker strategy, 2 replica(s)" in first[0] and "this one is worker 1" in first[1]

    codes = _finish(_start_workers(args, logs), timeout=150)
    out = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(text[-4000:] for text in out)
    assert "Resuming run" in out[0]
    for text in out:  # both workers continue from the chief's backup, not from epoch 1
        assert f"Epoch {killed_at + 1}/3" in text and "Epoch 1/3" not in text
    with open(run / "log.csv") as handle:
        assert sorted({int(row["epoch"]) for row in csv.DictReader(handle)}) == [0, 1, 2]
    for name in ("best.keras", "last.keras", "training_summary.json", "model_info.json"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # the chief removes it when training ends
    assert "the chief writes the results" in out[1] and "Finished in" not in out[1]
    print(f"two workers, kill and resume: {time.monotonic() - started:.1f} s")


def test_train_py_with_the_mirrored_strategy_resumes_after_a_kill(worker_data):
    """train.py under MirroredStrategy on two logical CPUs: killed after an epoch, rerun, finished."""
    tmp, base = worker_data
    args = [*base, "--set", "name=mirrored", "--set", "strategy=mirrored"]
    run = tmp / "runs" / "mirrored"
    log = tmp / "mirrored.log"
    command = [sys.executable, str(REPO / "tests" / "mirrored_check.py"), "train", *args]
    started = time.monotonic()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, cwd=REPO, env=script_env(), stdout=handle, stderr=subprocess.STDOUT)
    backup = run / "backup" / "training_metadata.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if backup.exists() and json.loads(backup.read_text() or "{}").get("epoch", 0) >= 1:
                break
            time.sleep(0.1)
        assert child.poll() is None, log.read_text()[-3000:]
    finally:
        _kill([child])
    killed_at = json.loads(backup.read_text())["epoch"]
    assert "mirrored strategy, 2 replica(s)" in log.read_text()
    result = subprocess.run(command, cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Resuming run" in result.stdout
    assert f"Epoch {killed_at + 1}/3" in result.stdout and "Epoch 1/3" not in result.stdout
    with open(run / "log.csv") as handle:
        assert sorted({int(row["epoch"]) for row in csv.DictReader(handle)}) == [0, 1, 2]
    assert (run / "training_summary.json").is_file() and not (run / "backup").exists()
    print(f"mirrored train.py, kill and resume: {time.monotonic() - started:.1f} s")

"""Training callbacks on their own: the Ctrl-C handler, the learning-rate schedule, the time budget, holdout
scoring and checkpoints."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from lib.callbacks import Checkpoints, CosineSchedule, CtrlC, HoldoutScore, LogProgress, SafeBackupAndRestore, TimeLimit
from lib.errors import UserError, stop_requested
from lib.unet import build_unet


def test_ctrl_c_is_deferred_to_the_next_batch_end_and_a_second_one_stops_at_once():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ctrl_c = CtrlC()
        with ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, between bytecodes: must not raise here
            assert ctrl_c.requested
            with pytest.raises(KeyboardInterrupt):
                ctrl_c.on_train_batch_end(3, {"loss": 0.1})
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_kill_stops_training_as_ctrl_c_does_once_the_scripts_handle_it():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with CtrlC():  # left alone where nothing asked for a clean stop: the default ends the process
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, stop_requested)  # as run_cli installs it
        ctrl_c = CtrlC()
        with ctrl_c:
            os.kill(os.getpid(), signal.SIGTERM)  # deferred, like Ctrl-C
            assert ctrl_c.requested
            with pytest.raises(KeyboardInterrupt):
                ctrl_c.on_train_batch_end(3, {"loss": 0.1})
        assert signal.getsignal(signal.SIGTERM) is stop_requested  # restored
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # outside training: stops at once
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_knows_which_epoch_it_left_unfinished():
    ctrl_c = CtrlC()
    ctrl_c.on_epoch_begin(0)
    ctrl_c.on_epoch_end(0)
    assert ctrl_c.unfinished is None
    ctrl_c.on_epoch_begin(1)
    ctrl_c.requested = True  # pressed after the epoch's last training step, during validation
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.on_test_batch_end(0)
    assert ctrl_c.unfinished == 1  # train.py says epoch 2 runs again


def test_ctrl_c_leaves_an_ignored_sigint_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctrl_c = CtrlC()
        with ctrl_c:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not ctrl_c.requested
            ctrl_c.on_epoch_end(0, {})  # nothing requested: no exception
    finally:
        signal.signal(signal.SIGINT, previous)


def test_cosine_schedule_warms_up_over_one_epoch_then_decays_to_zero():
    schedule = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5)
    rates = [schedule.rate(step) for step in range(50)]
    np.testing.assert_allclose(rates[:10], 1e-3 * np.arange(1, 11) / 10)  # linear warm-up, never zero
    assert rates[10] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))  # then strictly decreasing
    assert schedule.rate(50) == pytest.approx(0.0, abs=1e-12)
    assert schedule.rate(30) == pytest.approx(0.5e-3)  # half-way through the decay


def test_a_used_up_time_budget_moves_the_schedule_ahead_of_the_steps():
    schedule = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5)
    assert schedule.rate(12, time_fraction=0.6) == pytest.approx(schedule.rate(30))  # 60% of the time: step 30's rate
    assert schedule.rate(40, time_fraction=0.6) == pytest.approx(schedule.rate(40))  # steps ahead of time: steps rule
    assert schedule.rate(12, time_fraction=1.0) == pytest.approx(0.0, abs=1e-12)
    assert schedule.rate(3, time_fraction=0.9) == pytest.approx(schedule.rate(3))  # warm-up is by steps only


def test_a_resumed_schedule_carries_on_from_the_progress_the_budget_had_reached(tmp_path):
    class Budget:
        used = 0.6

        def fraction_used(self) -> float:
            return self.used

    state = tmp_path / "schedule.json"
    before = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5, budget=Budget(), state=state)
    for epoch in (0, 1):  # two epochs (20 steps) took 60% of the budget
        before.on_epoch_begin(epoch)
        before.on_epoch_end(epoch)
    stopped_at = before.rate(20, time_fraction=0.6)
    assert stopped_at < before.rate(20)  # the clock was ahead of the steps
    resumed_budget = Budget()
    resumed_budget.used = 0.0  # a fresh budget
    after = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5, budget=resumed_budget, state=state)
    after.on_epoch_begin(2)
    assert after.rate(20, after.time_fraction()) == pytest.approx(stopped_at)  # no jump back up
    assert after.rate(20, time_fraction=1.0) == pytest.approx(0.0, abs=1e-12)  # annealed by the new budget's end
    # A state from another epoch (say the backup fell back one epoch) is not taken.
    other = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5, budget=resumed_budget, state=state)
    other.on_epoch_begin(1)
    assert other.offset == 0.0
    state.write_text("{cut short")  # unreadable: the steps' share, as for a fresh run
    broken = CosineSchedule(1e-3, steps_per_epoch=10, epochs=5, budget=resumed_budget, state=state)
    broken.on_epoch_begin(2)
    assert broken.offset == 0.0


def test_cosine_schedule_sets_the_optimizer_rate_during_fit():
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(1.0), loss="mse")
    schedule = CosineSchedule(1e-2, steps_per_epoch=5, epochs=3, every=1)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(model.optimizer.learning_rate.numpy())))
    x = np.random.default_rng(0).random((20, 4)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=3, verbose=0, callbacks=[schedule, record])
    np.testing.assert_allclose(seen, [schedule.rate(step) for step in range(15)], rtol=1e-5)


class _Model:
    stop_training = False


def test_time_limit_stops_when_another_epoch_would_not_fit(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limit = TimeLimit(minutes=10)  # 600 s
    limit.set_model(_Model())
    for epoch, seconds in enumerate([250, 250]):  # after the second epoch, 500 s + another 250 s > 600 s
        limit.on_epoch_begin(epoch)
        clock[0] += seconds
        limit.on_epoch_end(epoch)
        assert limit.model.stop_training == (epoch == 1)
    assert limit.fraction_used() == pytest.approx(500 / 600)
    assert TimeLimit(minutes=0).fraction_used() == 0.0


def test_the_time_limit_says_nothing_after_the_last_planned_epoch(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    for epochs, says in ((3, True), (2, False)):  # out of time after epoch 2: news only if a third was planned
        limit = TimeLimit(minutes=10)
        limit.set_model(_Model())
        limit.set_params({"epochs": epochs})
        for epoch in range(2):
            limit.on_epoch_begin(epoch)
            clock[0] += 250
            limit.on_epoch_end(epoch)
        assert ("Time budget of 10 minutes: stopping after epoch 2" in capsys.readouterr().out) == says
        assert limit.model.stop_training == says


def _fit(callbacks, epochs: int) -> list[dict]:
    """Fit a one-weight model for `epochs` short epochs; return each epoch's logs as the callbacks left them."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((8, 4, 4, 1)).astype("float32")
    logs = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, log: logs.append(dict(log)))
    model.fit(x, (x > 0.5).astype("float32"), batch_size=4, epochs=epochs, verbose=0,
              callbacks=[*callbacks, record])
    return logs


def test_log_progress_prints_steps_within_an_epoch_at_its_interval(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = LogProgress(interval=30, stream=stream)
    progress.set_params({"epochs": 16, "steps": 500})
    progress.on_epoch_begin(2)
    for batch in range(500):
        clock[0] += 0.25  # 125 s per epoch: lines after 30, 60, 90 and 120 s, none at the epoch's end
        progress.on_train_batch_end(batch, {"loss": 0.5 - batch / 1000})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "  epoch 3/16: step 120/500, loss 0.3810, 30 s, about 95 s left in the epoch"
    assert lines[-1].startswith("  epoch 3/16: step 480/500")


def test_log_progress_prints_during_a_real_fit():
    stream = io.StringIO()
    _fit([LogProgress(interval=0, stream=stream)], epochs=1)  # two steps: a line after the first
    assert stream.getvalue().startswith("  epoch 1/1: step 1/2, loss ")


def _holdout() -> list[dict]:
    image = np.random.default_rng(1).random((8, 8, 1)).astype("float32")
    return [{"image": image, "label": image[..., 0] > 0.5, "fov": np.ones((8, 8), bool)}]


def test_holdout_scoring_every_k_epochs_also_scores_the_last_one():
    def predict(model, image):
        return keras.ops.convert_to_numpy(model(image[None]))[0]

    logs = _fit([HoldoutScore(_holdout(), predict, every=2)], epochs=3)
    scored = [math.isfinite(log["holdout_auc_roc"]) for log in logs]
    assert scored == [False, True, True]


def test_the_epoch_a_time_budget_ends_the_run_on_is_scored_between_every_k(monkeypatch):
    def predict(model, image):
        return keras.ops.convert_to_numpy(model(image[None]))[0]

    budget = TimeLimit(minutes=10)
    epochs = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, log: epochs.append(epoch))
    monkeypatch.setattr(budget, "stops_after", lambda extra=0.0: epochs[-1] == 2)  # ends it after epoch 3 of 6
    logs = _fit([record, HoldoutScore(_holdout(), predict, every=2, budget=budget), budget], epochs=6)
    assert [math.isfinite(log["holdout_auc_roc"]) for log in logs] == [False, True, True]


def test_the_time_limit_counts_the_holdout_scoring_still_to_come(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    limit = TimeLimit(minutes=1)
    limit.on_epoch_begin(0)
    clock[0] = 25.0
    assert not limit.stops_after()  # 25 s + another epoch of 25 s fits in 60 s
    assert limit.stops_after(extra_seconds=10.0)  # with 10 s of scoring still to come, 35 + 35 s would not


def test_a_run_with_no_scored_epoch_still_gets_best_keras_and_a_state_file(tmp_path):
    # A run stopped before its first scored epoch: the monitored score is NaN throughout.
    nan_score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, log: log.update(score=float("nan")))
    _fit([nan_score, Checkpoints(tmp_path, "score", "max")], epochs=2)
    assert (tmp_path / "best.keras").is_file() and (tmp_path / "last.keras").is_file()
    assert (tmp_path / "best.keras").read_bytes() == (tmp_path / "last.keras").read_bytes()
    assert json.loads((tmp_path / "checkpoint_state.json").read_text())["best"] is None
    # The first scored epoch then takes over best.keras as usual.
    score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, log: log.update(score=0.7))
    _fit([score, Checkpoints(tmp_path, "score", "max")], epochs=1)
    assert json.loads((tmp_path / "checkpoint_state.json").read_text())["best"] == 0.7


def test_a_backup_write_cut_short_leaves_the_last_whole_backup(tmp_path, monkeypatch):
    backup = tmp_path / "backup"
    _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=1)
    whole = (backup / "latest.weights.h5").read_bytes()

    def cut_short(self, filepath, overwrite=True):
        Path(filepath).write_bytes(whole[:1000])
        raise KeyboardInterrupt  # a second Ctrl-C while the weights are written

    monkeypatch.setattr(keras.Model, "save_weights", cut_short)
    with pytest.raises(KeyboardInterrupt):
        _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=2)
    assert (backup / "latest.weights.h5").read_bytes() == whole
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "latest.weights.h5.bkp",
                                                        "training_metadata.json", "training_metadata.json.bkp"]


def test_an_unreadable_backup_resumes_from_the_one_before_it_or_is_refused_with_the_fix(tmp_path, capsys):
    backup = tmp_path / "backup"
    latest = backup / "latest.weights.h5"
    for cut in (1000, 0.5):  # h5py fails with OSError on the first, Keras with ValueError on the second
        _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=2)  # latest: epoch 2, .bkp: 1
        whole = latest.read_bytes()
        latest.write_bytes(whole[:cut if cut > 1 else int(len(whole) * cut)])  # cut short, as an in-place write was
        logs = _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=3)
        assert len(logs) == 2  # epochs 2 and 3: resumed after epoch 1
        assert "cannot be read (OSError" in (out := capsys.readouterr().out) or "cannot be read (ValueError" in out
        assert "resuming from the one before it, an epoch earlier" in out
        shutil.rmtree(backup)
    _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=2)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        (backup / name).write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="so this run cannot resume: start it over with --overwrite"):
        _fit([SafeBackupAndRestore(str(backup), double_checkpoint=True)], epochs=4)


def _fit_with_dropout(backup: Path, epochs: int, stop_before: int | None = None) -> list[np.ndarray]:
    """Fit a small U-Net with dropout, backed up each epoch, optionally interrupted before epoch `stop_before`
    (0-based); return its weights."""
    keras.utils.set_random_seed(0)
    model = build_unet(depth=1, base_filters=2, batch_norm=False, dropout=0.5)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((32, 4, 4, 1)).astype("float32")

    def interrupt(epoch, logs):
        if epoch == stop_before:
            raise KeyboardInterrupt

    callbacks = [SafeBackupAndRestore(str(backup)), keras.callbacks.LambdaCallback(on_epoch_begin=interrupt)]
    with contextlib.suppress(KeyboardInterrupt):
        model.fit(x, (x > 0.5).astype("float32"), batch_size=4, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=callbacks)
    return model.get_weights()


def test_a_resumed_fit_draws_the_dropout_masks_the_uninterrupted_one_would(tmp_path):
    whole = _fit_with_dropout(tmp_path / "whole", epochs=3)
    _fit_with_dropout(tmp_path / "resumed", epochs=3, stop_before=2)
    metadata = json.loads((tmp_path / "resumed" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2 and len(metadata["random_states"]) == 3  # one per block
    shutil.copytree(tmp_path / "resumed", tmp_path / "without")
    resumed = _fit_with_dropout(tmp_path / "resumed", epochs=3)
    for expected, found in zip(whole, resumed):
        np.testing.assert_array_equal(found, expected)
    # A backup of an earlier version, without the states: it resumes, but draws the first epoch's masks again.
    del metadata["random_states"]
    (tmp_path / "without" / "training_metadata.json").write_text(json.dumps(metadata))
    without = _fit_with_dropout(tmp_path / "without", epochs=3)
    assert not all(np.array_equal(a, b) for a, b in zip(whole, without))


def test_the_backup_outlives_training_so_a_kill_before_the_run_is_finished_resumes_at_its_end(tmp_path):
    backup = tmp_path / "backup"
    logs = _fit([SafeBackupAndRestore(str(backup))], epochs=2)
    assert len(logs) == 2 and backup.is_dir()  # train.py deletes it once the run's final files are written
    # The same command again: no epoch is run twice.
    assert _fit([SafeBackupAndRestore(str(backup))], epochs=2) == []

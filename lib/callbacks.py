"""Training callbacks: holdout scoring, atomic best/last checkpoints with early stopping, guards."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np

from lib.atomic import atomic_path, write_json
from lib.errors import UserError, stop_requested
from lib.folding import fold_batch_norm
from lib.metrics import binary_scores, multiclass_scores
from lib.progress import plural
from lib.runs import STATE_NAME


def _finite_loss(logs: Mapping[str, Any] | None) -> bool:
    return logs is not None and math.isfinite(float(logs.get("loss", 0.0)))


class EpochSetter(keras.callbacks.Callback):
    """Tell streaming datasets which epoch starts, so resumed runs see the same batch order."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        super().__init__()
        self.datasets = datasets

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


class HoldoutScore(keras.callbacks.Callback):
    """Every k epochs and after the last (planned, or the one the time budget ends on), score full holdout images
    as predict.py would (without flip TTA); add holdout_* to the logs.

    Binary: holdout_auc_roc, _f1, _accuracy. Several classes (n_classes > 1): holdout_mean_iou,
    _pixel_accuracy, _mean_accuracy of the argmax class maps, ignore_index pixels left out.
    """

    def __init__(self, samples: Sequence[Mapping[str, Any]], predict: Callable[[keras.Model, np.ndarray], np.ndarray],
                 every: int, n_classes: int = 1, ignore_index: int | None = None,
                 budget: TimeLimit | None = None) -> None:
        super().__init__()
        self.samples, self.predict, self.every, self.budget = samples, predict, every, budget
        self.seconds = 0.0  # how long the last scoring took: the budget's decision comes after it
        self.n_classes, self.ignore_index = n_classes, ignore_index
        self.inference: keras.Model | None = None  # the folded copy, reused so its predict function is too
        self.keys = ("auc_roc", "f1", "accuracy") if n_classes == 1 else ("mean_iou", "pixel_accuracy", "mean_accuracy")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is None:
            return
        # Always scored, so a run's end has a score: its last planned epoch, or the one the time budget will end it
        # on once this scoring is done.
        last = epoch + 1 == self.params.get("epochs") or (self.budget is not None
                                                          and self.budget.stops_after(self.seconds))
        if ((epoch + 1) % self.every and not last) or not _finite_loss(logs):
            # Always present (NaN when not scored): the CSV log fixes its columns at the first epoch.
            # An epoch whose loss went NaN has NaN weights: nothing to score.
            logs.update({f"holdout_{key}": float("nan") for key in self.keys})
            return
        started = time.monotonic()
        self._score(logs)
        self.seconds = time.monotonic() - started

    def _score(self, logs: dict) -> None:
        """Score the holdout images with the current weights into logs (holdout_*), and print the scores."""
        model = self.inference = fold_batch_norm(self.model, self.inference)  # the weights change every epoch
        if self.n_classes > 1:
            predicted = np.concatenate([np.argmax(self.predict(model, s["image"]), axis=-1)[s["fov"]]
                                        for s in self.samples])
            labels = np.concatenate([s["label"][s["fov"]] for s in self.samples])
            scores = multiclass_scores(predicted, labels, self.n_classes, self.ignore_index)
            for key in self.keys:
                logs[f"holdout_{key}"] = float(scores[key])
            print(f" - holdout mean IoU {scores['mean_iou']:.4f}, pixel accuracy {scores['pixel_accuracy']:.4f}, "
                  f"mean class accuracy {scores['mean_accuracy']:.4f}")
            return
        probs = np.concatenate([self.predict(model, s["image"])[..., 0][s["fov"]] for s in self.samples])
        labels = np.concatenate([s["label"][s["fov"]] for s in self.samples])
        scores = binary_scores(probs, labels)
        for key in ("auc_roc", "f1", "accuracy"):
            logs[f"holdout_{key}"] = float("nan") if scores[key] is None else float(scores[key])  # None: undefined
        print(" - holdout AUC {holdout_auc_roc:.4f}, F1 {holdout_f1:.4f}, accuracy {holdout_accuracy:.4f}"
              .format(**logs))


def read_state(folder: Path) -> dict[str, Any]:
    """A run's checkpoint state (best score and epoch, epochs without improvement, ended); {} before its first."""
    path = Path(folder) / STATE_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def training_ended(state: Mapping[str, Any], patience: int) -> str | None:
    """Why a run's training has ended ('all epochs done', 'stopped early, after 3 epochs'), or None if it has not.
    Runs saved before the reason was recorded count as ended when they stopped early."""
    if state.get("ended"):
        return state["ended"]
    return "stopped early" if patience and state.get("wait", 0) >= patience else None


def mark_ended(folder: Path, reason: str) -> None:
    """Record that the run's training has ended, so a rerun writes only its final files."""
    write_json(Path(folder) / STATE_NAME, {**read_state(folder), "ended": reason})


class Checkpoints(keras.callbacks.Callback):
    """Save last.keras each epoch and best.keras on improvement (atomically; until an epoch is scored, the last
    one); stop on a plateau.

    The best value survives restarts (kept in a JSON state file), so after a resume the best
    checkpoint is still the best over the whole run. Epochs with a non-finite loss save nothing.
    """

    def __init__(self, folder: Path, monitor: str, mode: str, patience: int = 0) -> None:
        super().__init__()
        self.folder, self.monitor, self.mode, self.patience = Path(folder), monitor, mode, patience
        self.state_path = self.folder / STATE_NAME
        self.state = {"best": None, "best_epoch": None, "wait": 0}

    def on_train_begin(self, logs=None) -> None:
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())

    def _better(self, value: float) -> bool:
        best = self.state["best"]
        return best is None or (value < best if self.mode == "min" else value > best)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not _finite_loss(logs):
            return
        self._save(self.folder / "last.keras")
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            if self.state["best"] is None:
                # Until an epoch is scored best.keras follows the last one: a run stopped early still has it.
                with atomic_path(self.folder / "best.keras") as tmp:
                    shutil.copyfile(self.folder / "last.keras", tmp)
                write_json(self.state_path, self.state)
            return
        if self._better(float(value)):
            self._save(self.folder / "best.keras")
            self.state.update(best=float(value), best_epoch=epoch + 1, wait=0)
        else:
            self.state["wait"] += 1
            if self.patience and self.state["wait"] >= self.patience:
                print(f"\nNo improvement of {self.monitor} for {plural(self.patience, 'scored epoch')}: stopping "
                      "early.")
                self.model.stop_training = True
        write_json(self.state_path, self.state)

    def _save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp)


def random_states(model: keras.Model) -> list[Any]:
    """The state variables of the model's random generators (dropout's), which Keras saves with no weights file."""
    return [variable for variable in model.variables if variable.name == "seed_generator_state"]


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never backs up an epoch whose loss went NaN, keeps the random generators' states
    with its backup, and keeps its backup when training ends: the caller deletes it once the run is finished,
    so an interruption between the last epoch and the run's final files resumes there instead of starting
    over."""

    def __init__(self, backup_dir: str, **kwargs: Any) -> None:
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if _finite_loss(logs):
            super().on_epoch_end(epoch, logs)

    def on_train_begin(self, logs=None) -> None:
        # Keras' own fallback to the previous backup acts only on OSError and silently; a file cut short (as one
        # written in place by an earlier version could be) may fail with ValueError instead.
        try:
            return self._load_model()
        except (OSError, ValueError) as error:
            failure = error
        if os.path.exists(self._prev_weights_path):
            print(f"note: the backup in {self.backup_dir} cannot be read ({type(failure).__name__}); resuming from the "
                  "one before it, an epoch earlier.")
            for previous, current in ((self._prev_weights_path, self._weights_path),
                                      (self._prev_training_metadata_path, self._training_metadata_path)):
                if os.path.exists(previous):
                    with atomic_path(current) as tmp:
                        shutil.copyfile(previous, tmp)
                elif os.path.exists(current):
                    os.remove(current)
            try:
                return self._load_model()
            except (OSError, ValueError) as error:
                failure = error
        raise UserError(f"the training backup in {self.backup_dir} cannot be read ({type(failure).__name__}: "
                        f"{str(failure).splitlines()[0][:200]}), nor the one before it, so this run cannot resume: "
                        "start it over with --overwrite (or train under another name).") from failure

    def _load_model(self) -> None:
        super()._load_model()
        # Without the saved states a resumed run would draw the dropout masks of its first epochs again, and
        # would not repeat the uninterrupted run. A backup of an earlier version has none: resumed as before.
        if not os.path.exists(self._training_metadata_path):
            return
        with open(self._training_metadata_path) as file:
            saved = json.load(file).get("random_states")
        variables = random_states(self.model)
        if isinstance(saved, list) and len(saved) == len(variables):
            for variable, state in zip(variables, saved):
                variable.assign(np.asarray(state, dtype=variable.dtype))

    def _save_model(self) -> None:
        # Written under temporary names and renamed: a second Ctrl-C or a kill mid-write leaves the last whole
        # backup (and the one before it) in place, never a file cut short.
        os.makedirs(self.backup_dir, exist_ok=True)
        for current, previous in ((self._weights_path, self._prev_weights_path),
                                  (self._training_metadata_path, self._prev_training_metadata_path)):
            if self.double_checkpoint and os.path.exists(current):
                with atomic_path(previous) as tmp:
                    shutil.copyfile(current, tmp)
        with atomic_path(self._weights_path, suffix=".tmp.weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        states = [variable.numpy().tolist() for variable in random_states(self.model)]
        write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen,
                                                  "random_states": states})


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first non-finite batch loss and remember where it happened."""

    def __init__(self) -> None:
        super().__init__()
        self.where: tuple[int, int] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if logs and not math.isfinite(float(logs.get("loss", 0.0))):
            self.where = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class LogProgress(keras.callbacks.Callback):
    """Within each epoch, a line with the step, the running loss and the time left, every interval seconds.

    For a log file or a pipe, where Keras prints one line per epoch (verbose=2) and an epoch can take minutes.
    """

    def __init__(self, interval: float = 30.0, stream: Any = None) -> None:
        super().__init__()
        self.interval, self.stream = interval, stream
        self.epoch, self.epoch_start, self.last = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch, self.epoch_start = epoch, time.monotonic()
        self.last = self.epoch_start

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        now = time.monotonic()
        steps = self.params.get("steps")
        if now - self.last < self.interval or not steps or batch + 1 >= steps:
            return
        self.last = now
        elapsed = now - self.epoch_start
        left = elapsed / (batch + 1) * (steps - batch - 1)
        loss = f", loss {float(logs['loss']):.4f}" if logs and "loss" in logs else ""
        print(f"  epoch {self.epoch + 1}/{self.params.get('epochs')}: step {batch + 1}/{steps}{loss}, "
              f"{elapsed:.0f} s, about {left:.0f} s left in the epoch", file=self.stream or sys.stdout, flush=True)


class TimeLimit(keras.callbacks.Callback):
    """Stop at the end of an epoch when another would not finish within the wall-clock budget (minutes; 0 = none).

    The budget counts from this object's creation: create it first thing, so loading and building count too.
    """

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.minutes = minutes
        self.start = time.monotonic()
        self.epoch_start = self.start

    def stops_after(self, extra_seconds: float = 0.0) -> bool:
        """Whether the budget ends training after the current epoch, as another would not finish within it, were
        the epoch to take extra_seconds more (a callback's work still to come, such as holdout scoring)."""
        now = time.monotonic() + extra_seconds
        return bool(self.minutes) and now - self.start + (now - self.epoch_start) > 60 * self.minutes

    def fraction_used(self) -> float:
        """Share of the budget spent so far (0.0 without a budget)."""
        return (time.monotonic() - self.start) / (60 * self.minutes) if self.minutes else 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        planned = (self.params or {}).get("epochs")
        if (planned is None or epoch + 1 < planned) and self.stops_after():  # the last epoch ends training anyway
            print(f"\nTime budget of {plural(self.minutes, 'minute')}: stopping after epoch {epoch + 1}, as another "
                  "epoch would not finish within it.")
            self.model.stop_training = True


class CosineSchedule(keras.callbacks.Callback):
    """Learning rate: linear warm-up over the first epoch, then cosine decay to zero at the end of the run.

    With a time budget, progress through the decay is the larger of the share of steps done and the
    share of the budget used: a slower or busier machine still anneals before the budget stops training.
    A resumed run gets a fresh budget; with `state` (a JSON file the schedule keeps at each epoch end) it
    carries on from the progress the earlier session reached, instead of falling back to the steps' share.
    """

    def __init__(self, peak: float, steps_per_epoch: int, epochs: int, budget: TimeLimit | None = None,
                 every: int = 10, state: Path | None = None) -> None:
        super().__init__()
        self.peak, self.steps, self.epochs, self.budget, self.every = peak, steps_per_epoch, epochs, budget, every
        self.state = state
        self.epoch = 0
        self.offset = 0.0  # progress an earlier session reached; the budget's share covers the rest
        self.started = False

    def fraction(self, step: int, time_fraction: float = 0.0) -> float:
        """Progress through the run at a global step: the steps' share, or the earlier sessions' progress plus
        this session's share of the budget, whichever is ahead."""
        return max(step / max(self.steps * self.epochs, 1), self.offset + (1.0 - self.offset) * time_fraction)

    def rate(self, step: int, time_fraction: float = 0.0) -> float:
        """The learning rate at a global step, with `time_fraction` of the budget used."""
        total = max(self.steps * self.epochs, 1)
        warmup = max(min(self.steps, total // 2), 1)
        if step < warmup:
            return self.peak * (step + 1) / warmup
        start = warmup / total
        fraction = self.fraction(step, time_fraction)
        progress = min(max((fraction - start) / max(1.0 - start, 1e-12), 0.0), 1.0)
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))

    def time_fraction(self) -> float:
        """Share of this session's budget used (0.0 without one)."""
        return self.budget.fraction_used() if self.budget else 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch
        if not self.started:  # the first epoch of this session: resumed where the state says, or fresh
            self.started = True
            try:
                saved = json.loads(self.state.read_text()) if self.state is not None else {}
                self.offset = min(max(float(saved["progress"]), 0.0), 1.0) if saved.get("epoch") == epoch else 0.0
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.offset = 0.0  # none kept, or unreadable: the steps' share, as for a fresh run

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.state is not None and self.budget is not None:
            progress = self.fraction((epoch + 1) * self.steps, self.time_fraction())
            write_json(self.state, {"epoch": epoch + 1, "progress": min(progress, 1.0)})

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if batch % self.every:
            return
        rate = self.rate(self.epoch * self.steps + batch, self.time_fraction())
        # Within an epoch JAX keeps the training state outside the variables: write it back first, so
        # the new rate (an optimizer variable) is read into the next step, as Keras' own callbacks do.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.model.optimizer.learning_rate = rate


class CtrlC(keras.callbacks.Callback):
    """Turn Ctrl-C into a KeyboardInterrupt raised between batches, where nothing can swallow it.

    Python raises SIGINT's KeyboardInterrupt wherever the main thread is. Inside a destructor (h5py's,
    during garbage collection) it is printed and lost, and training would go on. So the handler only
    records the request, and the next batch or epoch end raises it. A second Ctrl-C stops at once.
    Use as a context manager around fit(), which installs and restores the handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requested = False
        self.unfinished: int | None = None  # the epoch under way, whose end (and checkpoints) has not come
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "CtrlC":
        # Leave an ignored SIGINT (background jobs) or a custom handler alone; SIGTERM (kill PID) stops the same
        # way once run_cli has made it stop at all.
        if threading.current_thread() is threading.main_thread():
            for signum, stops in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, stop_requested)):
                if signal.getsignal(signum) is stops:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write: print() from a signal handler can collide with a print the main thread is in.
        os.write(2, b"\nCtrl-C: stopping after this step (press Ctrl-C again to stop at once).\n"
                 if signum == signal.SIGINT else b"\nStop requested (SIGTERM): stopping after this step.\n")

    def _raise_if_requested(self, *args: Any, **kwargs: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _raise_if_requested

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.unfinished = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.unfinished = None  # last among the callbacks: this epoch's checkpoints are written
        self._raise_if_requested()

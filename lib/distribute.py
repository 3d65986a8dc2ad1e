"""Device strategies for training: one device, all local GPUs (mirrored), or several machines.

`make_distribution(name)` turns the [training settings] `strategy` value into a `Distribution`:
a scope to build and compile the model in, the number of replicas the global batch is split
between, and whether this process is the chief (the one that writes checkpoints and logs).

Rules shared by every strategy (see README.md, "Multi-device and other backends"):
- `batch_size` is the global batch: each of the R replicas gets batch_size / R patches per step,
  and the gradients are averaged over all of them, so one configuration trains the same model on
  1, 2 or 8 devices.
- `learning_rate` is the rate for that global batch and is never rescaled with the number of
  devices. Raise batch_size and you choose the new rate (linear scaling is the usual start).
- Only the chief writes into the run folder. Other workers write nothing there; at the start of
  training they receive the chief's weights, optimizer state and epoch (so a resumed run restarts
  everywhere from the chief's backup, with or without a shared file system), and at every epoch end
  all workers agree to stop as soon as any of them wants to (time limit, early stopping).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import keras

from lib.backend import has_gpu
from lib.errors import UserError

STRATEGIES = ("auto", "single", "mirrored", "multi_worker")


@dataclass
class Distribution:
    """The resolved strategy: where the model lives and who writes files."""

    name: str                      # single, mirrored or multi_worker (auto is resolved)
    strategy: Any = None           # the tf.distribute.Strategy, None for single
    replicas: int = 1              # replicas the global batch is split between (all workers)
    is_chief: bool = True          # this process writes checkpoints, logs and the summary
    workers: int = 1               # processes taking part
    task: str = "chief"            # e.g. "worker 1", for messages
    devices: list[str] = field(default_factory=list)
    gpu: bool = False              # single: whether the device is a GPU

    def scope(self) -> contextlib.AbstractContextManager:
        """Context manager to build and compile the model in (a no-op for a single device)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self) -> str:
        """Where training runs, for the log: one GPU, the CPU, or the strategy with its replicas and workers."""
        if self.name == "single":
            # Said plainly: a GPU that CUDA cannot reach would otherwise leave a run on the CPU, hours slower.
            return "one GPU" if self.gpu else "the CPU (no GPU is visible; see README.md, GPU)"
        where = f" on {', '.join(self.devices)}" if self.devices else ""
        text = f"{self.name} strategy, {self.replicas} replica(s){where}"
        if self.workers > 1:
            text += f"; {self.workers} workers, this one is {self.task}{' (chief)' if self.is_chief else ''}"
        return text

    def replica_loss(self, loss_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """The loss to compile with: the batch loss divided by the number of replicas.

        tf.distribute sums the replicas' gradients. Keras divides a loss by the number of replicas
        only when it reduces per-sample values itself; the U-Net losses are already batch means
        (soft Dice is not a per-sample sum), which Keras passes through unscaled, so without this
        every extra replica would multiply the step size. Keras still reports the unscaled loss.
        A loss that returns per-pixel values is left to Keras, which scales those itself.
        """
        if self.replicas <= 1:
            return loss_fn
        scale = 1.0 / self.replicas

        def loss(y_true, y_pred):
            value = loss_fn(y_true, y_pred)
            return value * scale if len(getattr(value, "shape", ())) == 0 else value

        loss.__name__ = loss_fn.__name__
        return loss

    def prepare_model(self, model: keras.Model) -> keras.Model:
        """Work around Keras building a distributed model from an all-reduced first batch.

        Before the first step, Keras (3.15, TensorFlow trainer) takes one batch and calls
        strategy.reduce("MEAN", ...) on it eagerly, only to learn its shapes. Under
        MultiWorkerMirroredStrategy that call fails ("Attempt to convert a value (PerReplica...)").
        The shapes of this worker's first replica are all the build needs.
        """
        if self.strategy is None:
            return model
        import tensorflow as tf
        strategy = self.strategy

        def local(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        def maybe_symbolic_build(iterator=None, data_batch=None):
            if iterator is not None:
                for _, _, batches in iterator:
                    data_batch = tf.nest.map_structure(local, next(batches))
                    break
            with strategy.scope():
                model._symbolic_build(data_batch=data_batch)

        if hasattr(model, "_maybe_symbolic_build"):
            model._maybe_symbolic_build = maybe_symbolic_build
        return model

    def abort(self, code: int) -> None:
        """Leave now, after training failed or was interrupted under a strategy.

        Threads that wait in collective operations (for a worker that died, say) would keep the
        process alive forever at a normal exit. Every file is written atomically, so nothing is lost.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # Collectives between workers: every worker must call these at the same points, in the same order.

    def agree(self, flag: bool) -> bool:
        """True on every worker if it is True on any (a no-op without several workers)."""
        if self.workers <= 1:
            return flag
        import tensorflow as tf
        value = tf.constant(1.0 if flag else 0.0)
        reduced = self._all_reduce([value], tf.distribute.ReduceOp.SUM)[0]  # the number that said yes
        return bool(float(reduced) > 0.5)

    def broadcast_from_chief(self, variables: list[Any], extra: list[float]) -> list[float]:
        """Give every worker the chief's values of `variables` (assigned in place) and `extra` numbers.

        Implemented as a sum over replicas where only global replica 0 (the chief's first device)
        contributes, so it needs nothing but the all-reduce the strategy already uses.
        """
        if self.workers <= 1:
            return list(extra)
        import tensorflow as tf
        # One dtype for the packed all-reduce; float32 weights and integer step counters survive
        # the round trip through float64 exactly.
        tensors = [tf.cast(v.value if hasattr(v, "value") else v, tf.float64) for v in variables]
        tensors += [tf.constant(float(x), tf.float64) for x in extra]
        reduced = self._all_reduce(tensors, tf.distribute.ReduceOp.SUM, only_first=True)
        for variable, value in zip(variables, reduced):
            variable.assign(tf.cast(value, variable.dtype))
        return [float(x) for x in reduced[len(variables):]]

    def _all_reduce(self, tensors: list[Any], op: Any, only_first: bool = False) -> list[Any]:
        import tensorflow as tf
        strategy = self.strategy

        @tf.function
        def run():
            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                values = [tf.identity(t) for t in tensors]
                if only_first:
                    first = tf.equal(ctx.replica_id_in_sync_group, 0)
                    values = [tf.where(first, v, tf.zeros_like(v)) for v in values]
                return ctx.all_reduce(op, values)
            return strategy.run(replica_fn)

        out = run()
        return [strategy.experimental_local_results(t)[0] for t in out]


def _tf_config() -> dict[str, Any]:
    text = os.environ.get("TF_CONFIG", "")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text.strip():
        raise UserError("strategy = multi_worker needs the TF_CONFIG environment variable on every "
                        f"machine, e.g. {example} (index 1 on the second machine). See README.md, "
                        "'Multi-device and other backends'.")
    try:
        config = json.loads(text)
        workers = config["cluster"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
        addresses = workers[kind]
        if not 0 <= index < len(addresses):
            raise ValueError(f"task index {index} but only {len(addresses)} {kind} address(es)")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"TF_CONFIG is not valid ({type(exc).__name__}: {exc}). It must be JSON like "
                        f"{example}.") from None
    return config


def _is_chief(config: dict[str, Any]) -> tuple[bool, str]:
    kind, index = config["task"]["type"], int(config["task"]["index"])
    if kind == "chief":
        return True, "chief"
    if kind == "worker" and index == 0 and "chief" not in config["cluster"]:
        return True, "worker 0"
    return False, f"{kind} {index}"


def _patch_keras_multi_worker_reduction() -> None:
    """Make Keras' TensorFlow trainer average per-step metric values across workers correctly.

    Keras 3 reduces each step's outputs (scalar metric results) under MultiWorkerMirroredStrategy
    with strategy.reduce("MEAN", value, axis=0), which fails for scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions"; tensorflow/tensorflow#72388). axis=None is the mean
    over replicas that was meant. Other strategies and reductions keep Keras' own code.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer
    if getattr(tf_trainer.reduce_per_replica, "_unet_multi_worker_fix", False):
        return
    import tensorflow as tf
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            def mean(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.reduce("MEAN", value, axis=None)
                return value
            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    reduce_per_replica._unet_multi_worker_fix = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def make_distribution(name: str) -> Distribution:
    """Create the strategy named in the configuration. Call it first: before any TensorFlow work.

    MultiWorkerMirroredStrategy must exist before TensorFlow initializes its runtime, so train.py
    calls this right after reading the configuration.
    """
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy '{name}': use one of {', '.join(STRATEGIES)}.")
    backend = keras.backend.backend()
    if backend != "tensorflow":
        if name in ("auto", "single"):
            return Distribution("single", gpu=has_gpu())
        raise UserError(f"[training settings] strategy = {name} needs the TensorFlow backend (tf.distribute), "
                        f"but KERAS_BACKEND is {backend}. Use strategy = single or auto with {backend}, "
                        "or run with KERAS_BACKEND=tensorflow.")
    import tensorflow as tf

    if name == "multi_worker":
        config = _tf_config()
        is_chief, task = _is_chief(config)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_multi_worker_reduction()
        workers = sum(len(v) for k, v in config["cluster"].items() if k in ("chief", "worker"))
        return Distribution("multi_worker", strategy, strategy.num_replicas_in_sync, is_chief, workers, task)

    gpus = tf.config.list_physical_devices("GPU")
    if name == "single" or (name == "auto" and len(gpus) <= 1):
        return Distribution("single", gpu=bool(gpus))
    if gpus:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    else:
        # No GPU: mirror over the logical CPU devices (one unless they were split, as the tests do).
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) == 1:
            print("warning: strategy = mirrored but no GPU is visible: training on one CPU device.")
    strategy = tf.distribute.MirroredStrategy(devices)
    return Distribution("mirrored", strategy, strategy.num_replicas_in_sync, devices=devices)


def check_global_batch(batch_size: int, distribution: Distribution) -> None:
    """The global batch must split evenly between replicas."""
    replicas = distribution.replicas
    if batch_size % replicas:
        low, high = batch_size // replicas * replicas, (batch_size // replicas + 1) * replicas
        raise UserError(f"[training settings] batch_size = {batch_size} is the global batch and must split "
                        f"evenly between the {replicas} replicas of the {distribution.name} strategy. Use "
                        f"a multiple of {replicas}, e.g. {high}" + (f" or {low}." if low else "."))


class SyncFromChief(keras.callbacks.Callback):
    """At the start of training, copy the chief's weights, random states, optimizer state and epoch to every worker.

    Placed after the backup callback: the chief has restored its backup by then (if any), and the
    other workers, which read no files, start from exactly the same state and epoch.
    """

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        self.distribution = distribution

    def on_train_begin(self, logs=None) -> None:
        if self.distribution.workers <= 1:
            return
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        from lib.callbacks import random_states
        variables = (list(model.weights) + random_states(model)
                     + (list(model.optimizer.variables) if model.optimizer else []))
        epoch = float(getattr(model, "_initial_epoch", None) or 0)
        (epoch,) = self.distribution.broadcast_from_chief(variables, [epoch])
        model._initial_epoch = int(round(epoch)) or None


class AgreeToStop(keras.callbacks.Callback):
    """Put last: at each epoch end, stop every worker if any callback on any worker asked to stop."""

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        self.distribution = distribution

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.distribution.workers > 1:
            self.model.stop_training = self.distribution.agree(bool(self.model.stop_training))



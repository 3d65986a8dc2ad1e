"""Shared helpers of the bench/ scripts: timing, tables, machine description, child peak RSS, U-Net FLOPs.

Nothing here imports TensorFlow directly (only a guarded device-name lookup), so every script also runs
under KERAS_BACKEND=jax (or torch).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.atomic import write_text  # noqa: E402  (lib is importable once ROOT is on the path)


# ----------------------------------------------------------------------------- paths and command line

def command_line() -> str:
    """The command that is running, as one could paste it again (with KERAS_BACKEND when it is set)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = sys.argv[0]
    prefix = f"KERAS_BACKEND={os.environ['KERAS_BACKEND']} " if os.environ.get("KERAS_BACKEND") else ""
    return prefix + shlex.join(["python", shown, *sys.argv[1:]])


def repo_path(path: str | os.PathLike) -> Path:
    """A path as the toolkit's scripts see it from the repository root: absolute, or relative to the
    current folder when it exists there, else relative to the repository root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (ROOT / path).resolve()


# ----------------------------------------------------------------------------- timing

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ----------------------------------------------------------------------------- machine description

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers restrict), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def accelerator_name() -> str:
    """The device Keras computes on: the first GPU/TPU of the backend if there is one, else the CPU model."""
    import keras
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"{device.platform}: {getattr(device, 'device_kind', str(device))}"
        elif backend == "tensorflow":
            import tensorflow as tf  # only to name the device; the benchmarks use keras.ops
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"gpu: {details.get('device_name', gpus[0].name)}"
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                return f"gpu: {torch.cuda.get_device_name(0)}"
    except Exception as exc:  # a failed lookup must not stop a benchmark
        return f"unknown ({type(exc).__name__})"
    return f"cpu: {_cpu_model()}"


def machine_line() -> str:
    import keras
    return (f"machine: {cpu_count()} CPUs ({_cpu_model()}), keras {keras.__version__} backend "
            f"{keras.backend.backend()}, device {accelerator_name()}, python {platform.python_version()}")


# ----------------------------------------------------------------------------- output

def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain Markdown table (readable in a terminal, pasteable into an issue)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:
                return "-"
            size = abs(value)
            return (f"{value:,.0f}" if size >= 1000 else f"{value:.1f}" if size >= 100
                    else f"{value:.2f}" if size >= 1 else f"{value:.4f}")
        return "-" if value is None else str(value)
    rows = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = (),
           json_path: str | None = None, extra: dict | None = None) -> None:
    """Print the table with the command line and the machine; optionally save everything as JSON."""
    text = "\n".join([f"## {title}", "", f"command: {command_line()}", machine_line(), "",
                      format_table(headers, rows), *([""] + list(notes) if notes else [])])
    print("\n" + text, flush=True)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {"title": title, "command": command_line(), "machine": machine_line(),
                   "headers": list(headers), "rows": [list(r) for r in rows], "notes": list(notes),
                   **(extra or {})}
        write_text(json_path, json.dumps(payload, indent=2, default=str) + "\n")
        print(f"(saved {json_path})")


def add_common_arguments(parser) -> None:
    parser.add_argument("--json", metavar="FILE", help="also save the table and settings as JSON "
                        "(bench/results/ is ignored by git)")


def quiet_logs() -> None:
    """Start Keras without TensorFlow's start-up lines, as the scripts do (lib.start_up)."""
    from lib.start_up import import_keras
    import_keras()


# ----------------------------------------------------------------------------- child processes

def run_measured(args: Sequence[str], log_path: Path, env: dict | None = None,
                 cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run a command as a child; return its wall time, exit code and peak RSS (MiB).

    os.wait4 returns the resource usage of that one child (and of its own waited-for children), so each
    measurement is isolated from the others and from this process. Output goes to log_path.
    """
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped above; keep Popen consistent
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return {"seconds": seconds, "returncode": process.returncode, "peak_rss_mib": kib / 1024,
            "log": str(log_path)}


def tail(path: str | os.PathLike, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- FLOPs

def conv_flops(model, patch_size: int, channels: int | None = None) -> dict[str, Any]:
    """Forward FLOPs per patch of the convolutions of a Keras model, counted from its layers.

    2 FLOPs per multiply-add: a Conv2D costs 2*kh*kw*Cin*Cout per output position, a Conv2DTranspose
    2*kh*kw*Cin*Cout per input position. Spatial sizes come from running the model symbolically on a
    (1, patch, patch, C) input, so the count follows the real graph. Pooling, activations, batch norm and
    resizing are not counted (they are a few percent and not matmul work).
    """
    import keras

    channels = channels or model.inputs[0].shape[-1]
    convs = [layer for layer in model.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
    probe = keras.Model(model.inputs, [t for layer in convs for t in (layer.input, layer.output)])
    specs = probe.compute_output_spec(keras.KerasTensor((1, patch_size, patch_size, channels)))
    per_layer = {}
    total = 0
    for index, layer in enumerate(convs):
        in_shape, out_shape = specs[2 * index].shape, specs[2 * index + 1].shape
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1) or 1
        if isinstance(layer, keras.layers.Conv2DTranspose):
            cin, cout = in_shape[-1], layer.filters
            positions = in_shape[1] * in_shape[2]
        else:
            cin, cout = in_shape[-1] // groups, layer.filters
            positions = out_shape[1] * out_shape[2]
        flops = 2 * kh * kw * cin * cout * positions
        per_layer[layer.name] = flops
        total += flops
    return {"forward": total, "train": 3 * total, "per_layer": per_layer}


# ----------------------------------------------------------------------------- models

def classic_unet():
    """The classic retina-unet model as this toolkit builds it: 32-64-128 (depth 2), no batch norm,
    dropout 0.2, transposed-convolution upsampling, sigmoid head; trained on 48x48 patches."""
    from lib.unet import build_unet
    return build_unet(channels=1, n_classes=1, depth=2, base_filters=32, batch_norm=False, dropout=0.2,
                      upsampling="transpose")


def orobix_unet():
    """The original retina-unet graph (orobix, 2016), for comparison with the issue's 511 MFLOP/patch:
    nearest upsampling concatenated with the skip (192->64 and 96->32 convolutions), 2-class softmax head."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, None, 1))

    def block(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Dropout(0.2)(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu")(x)

    c1 = block(inputs, 32)
    c2 = block(layers.MaxPooling2D(2)(c1), 64)
    c3 = block(layers.MaxPooling2D(2)(c2), 128)
    c4 = block(layers.Concatenate()([c2, layers.UpSampling2D(2)(c3)]), 64)
    c5 = block(layers.Concatenate()([c1, layers.UpSampling2D(2)(c4)]), 32)
    outputs = layers.Conv2D(2, 1, activation="softmax")(c5)
    return keras.Model(inputs, outputs, name="orobix_retina_unet")

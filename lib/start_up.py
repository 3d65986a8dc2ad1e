"""Start Keras with TensorFlow's start-up log lines left out of stderr.

TensorFlow prints a dozen native log lines on import (oneDNN, CPU instructions, "could not find cuda
drivers", and on a machine without an NVIDIA driver an E-line "failed call to cuInit") before its log
level setting applies. They say nothing a user can act on, and the E-line reads like a failure, so the
scripts import Keras here: stderr passes through a filter that drops only those lines, live, so any
other message (a real error, a Python warning, a fatal F-line before an abort) still reaches the terminal
as it happens. The filter is a small child process, so whatever this process writes last before it dies
still gets through. TF_CPP_MIN_LOG_LEVEL = 0 turns the filter off and shows everything.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, Iterator

# absl's native log prefix: severity letter, MMDD, time, thread id, file:line]
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")
_BANNERS = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "To enable the following instructions:")
_NO_DRIVER = "Could not find cuda drivers on your machine"
_WAIT_SECONDS = 5  # for the filter to pass on the last lines before the script prints its own
_RUNNING: list[subprocess.Popen] = []  # filters still held open by a child process: kept, not reported as leaked


class StartUpFilter:
    """Decides line by line which of TensorFlow's start-up lines to drop: its banners and INFO lines, and the
    cuInit error once TensorFlow has said that the machine has no CUDA driver (the expected case on a CPU)."""

    def __init__(self) -> None:
        self.no_driver = False

    def keep(self, line: str) -> bool:
        """Whether this line of stderr should reach the terminal."""
        if line.startswith(_BANNERS):
            return False
        match = _NATIVE_LINE.match(line)
        if not match:
            return True
        if _NO_DRIVER in line:
            self.no_driver = True
        severity = match.group(1)
        if severity == "I":
            return False
        return not (severity == "E" and self.no_driver and "cuInit" in line)


def forward(source: BinaryIO, target: BinaryIO) -> None:
    """Copy source to target line by line, as they come, leaving out what StartUpFilter drops."""
    line_filter = StartUpFilter()
    for line in iter(source.readline, b""):
        if line_filter.keep(line.decode("utf-8", "replace").rstrip("\n")):
            target.write(line)
            target.flush()


def _stderr_usable() -> bool:
    if sys.stderr is None:  # started with 2>&-
        return False
    try:
        os.fstat(2)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within this block, TensorFlow's start-up lines are dropped from stderr (file descriptor 2)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or not _stderr_usable():
        yield  # the user asked to see everything, or there is no stderr to filter
        return
    sys.stderr.flush()
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            "from lib.start_up import forward; forward(sys.stdin.buffer, sys.stdout.buffer)")
    try:
        # The filter writes to the real stderr and ends when every copy of the pipe's write end is closed. -I: a
        # user's re.py in the current folder must not shadow the standard library there. Its own session: a
        # Ctrl-C in the terminal is this script's to handle, not the filter's.
        process = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=2, stderr=2,
                                   start_new_session=True)
    except OSError:  # no process to spare: unfiltered is better than not starting
        yield
        return
    real_stderr = os.dup(2)
    os.dup2(process.stdin.fileno(), 2)
    process.stdin.close()
    # Later INFO lines (e.g. tf.data's "Memory patch applied") obey the level once the log is set up.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a filter that died must not keep stderr on its broken pipe
            sys.stderr.flush()
        os.dup2(real_stderr, 2)  # this process's last write end: the filter reads to the end and stops
        os.close(real_stderr)
        try:
            process.wait(timeout=_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            _RUNNING.append(process)  # a child started meanwhile holds the pipe: the filter runs on for it


def choose_cpu_kernels() -> None:
    """Ask TensorFlow, before it is imported, for its oneDNN kernels on every x86 CPU (a user's setting is kept)."""
    # TensorFlow turns them on by itself only on CPUs with AVX-512 or newer; on the others (AVX2: most AMD and
    # older Intel CPUs) they train the default U-Net 1.7 times as fast as its own, and the sample model 3 times.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def import_keras() -> ModuleType:
    """Import Keras and let its backend find the devices, without TensorFlow's start-up lines; return keras."""
    choose_cpu_kernels()
    with filtered_stderr():
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            # The cuInit line comes when TensorFlow first looks for GPUs; listing devices does not start its
            # runtime, so a multi-worker strategy can still be created after this.
            tf.config.list_physical_devices()
    return keras

"""Start Keras with TensorFlow's start-up log lines left out of stderr.

TensorFlow prints a dozen native log lines on import (oneDNN, CPU instructions, "could not find cuda
drivers", and on a machine without an NVIDIA driver an E-line "failed call to cuInit") before its log
level setting applies. They say nothing a user can act on, and the E-line reads like a failure, so the
scripts import Keras here: stderr passes through a filter that drops only those lines, live, so any
other message (a real error, a Python warning) still reaches the terminal as it happens. Setting
TF_CPP_MIN_LOG_LEVEL yourself (0 shows everything) turns the filter off.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from types import ModuleType
from typing import Iterator

# absl's native log prefix: severity letter, MMDD, time, thread id, file:line]
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")
_BANNERS = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            "To enable the following instructions:")
_NO_DRIVER = "Could not find cuda drivers on your machine"


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


def _forward(read_fd: int, write_fd: int, line_filter: StartUpFilter) -> None:
    """Copy the pipe to the real stderr a line at a time, leaving out what the filter drops."""
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe, contextlib.suppress(OSError):
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line_filter.keep(line.decode("utf-8", "replace")):
                    os.write(write_fd, line + b"\n")
        if pending and line_filter.keep(pending.decode("utf-8", "replace")):
            os.write(write_fd, pending)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within this block, TensorFlow's start-up lines are dropped from stderr (file descriptor 2)."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield  # the user chose what to see
        return
    # Later INFO lines (e.g. tf.data's "Memory patch applied") obey the level once the log is set up.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_forward, args=(read_fd, real_stderr, StartUpFilter()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last write end, so the thread reads to its end
        thread.join(timeout=5)
        os.close(real_stderr)


def import_keras() -> ModuleType:
    """Import Keras and let its backend find the devices, without TensorFlow's start-up lines; return keras."""
    with filtered_stderr():
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            # The cuInit line comes when TensorFlow first looks for GPUs; listing devices does not start its
            # runtime, so a multi-worker strategy can still be created after this.
            tf.config.list_physical_devices()
    return keras

"""Training callbacks that need no training run: the Ctrl-C handler."""
from __future__ import annotations

import os
import signal

import pytest

from lib.callbacks import CtrlC


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

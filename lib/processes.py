"""Whether a process that left a mark in a folder (a lock, an unfinished output) may still be running."""
from __future__ import annotations

import os
import socket


def this_host() -> str:
    """The name of this machine, as written into locks and temporary folder names."""
    return socket.gethostname()


def may_be_running(pid: int, host: str) -> bool:
    """False only when the process is known to be gone: it ran on this machine and no longer exists."""
    if host != this_host():
        return True  # cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True

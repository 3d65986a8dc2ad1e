"""Exclusive locks on files that the system releases when their process ends, however it ends (flock)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Iterator

from lib.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _try_lock(handle: IO[str]) -> bool:
    """Take an exclusive lock on an open file without waiting."""
    if fcntl is None:
        return True  # Windows: no lock (the README says to run one script per folder there)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read())
        return f"process {holder['pid']} on {holder['host']} (started {holder['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"  # it has locked the file but not yet written its name


def lock_holder(path: Path) -> str | None:
    """Which process holds the lock on path ('process PID on HOST (started TIME)'), or None when none does."""
    if not Path(path).is_file():
        return None
    with open(path) as handle:
        return None if _try_lock(handle) else _holder(handle)


@contextlib.contextmanager
def exclusive_lock(path: Path, refusal: str) -> Iterator[None]:
    """Hold the lock on path (a file created for it, removed after) for the block; when another process holds it,
    raise UserError with refusal, whose {holder} names that process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        if not _try_lock(handle):
            holder = _holder(handle)
            handle.close()
            raise UserError(refusal.format(holder=holder))
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # its holder removed the file as we opened it: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield
    finally:
        if fcntl is None:  # Windows cannot remove an open file
            handle.close()
        path.unlink(missing_ok=True)  # while still held, so no one locks a file that is gone
        handle.close()

"""User-facing errors: one exception type the scripts turn into a clean message and exit status 2."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad setting); the message says how."""


def stop_requested(signum: int, frame: object) -> None:
    """SIGTERM handler: stop as Ctrl-C does (temporary files removed, train.py's resume command printed)."""
    raise KeyboardInterrupt


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a script's main(); turn user errors into a message on stderr and exit status 2."""
    # `kill PID` (how a background job is stopped) would end the process without a word or any clean-up.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop_requested)
    try:
        code = main()
    except UserError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            print(f"\nerror: no space left on the device while writing {exc.filename or 'output'}. "
                  "Nothing half-written was kept; free some space (or point the output folder "
                  "elsewhere) and run the same command again.", file=sys.stderr)
            # Temporary files are already removed; HDF5 can crash tearing down after a failed
            # write, so leave without the interpreter's clean-up.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_USER_ERROR)
        if exc.errno == errno.EROFS:
            print(f"\nerror: {exc.filename or 'the output'} is on a read-only file system. Choose a folder "
                  "you can write to, then run the same command again.", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if exc.errno in (errno.EACCES, errno.EPERM):
            # The same error number serves reads and writes: say which paths to check, not which way.
            print(f"\nerror: no permission to read or write {exc.filename or 'a file'}. Fix its permissions "
                  "(or those of its folder), or choose a folder you can write to, then run the same command "
                  "again.", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            print(f"\nerror: {exc.filename or 'a path'} is in the way: a file stands where a folder is needed (or "
                  "the other way round). Check the folder settings ([data paths] prepared_dir, [experiment] "
                  "runs_dir, --output), then run the same command again.", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    except KeyboardInterrupt:
        # train.py handles Ctrl-C itself (checkpoints, resume command); elsewhere every write is atomic.
        print("\nInterrupted. Files are written under temporary names and renamed when complete, so nothing "
              "half-written was kept; run the same command again to redo the work.", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

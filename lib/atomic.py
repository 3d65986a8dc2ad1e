"""Atomic file writes: write to a temporary name in the same folder, then rename into place; folders a failed
run made are not left behind."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real extension last: some writers (Keras, PIL) choose the format from it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=suffix or (".tmp" + final.suffix),
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp makes owner-only files; give results the usual permissions instead.
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write a JSON file atomically (indented, keys in insertion order)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def new_folders_removed_if_empty(folder: str | os.PathLike) -> Iterator[None]:
    """Run the block; afterwards remove folder and those of its parents that did not exist before it, when empty."""
    made, path = [], Path(folder).absolute()
    while not path.exists() and path != path.parent:
        made.append(path)  # deepest first
        path = path.parent
    try:
        yield
    finally:
        for path in made:
            try:
                path.rmdir()  # only when empty
            except OSError:
                break  # it holds files, and so do its parents

"""Progress for the console: a dependency-free bar for long loops (redraws in a terminal, sparse lines in logs)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def plural(count: float, word: str) -> str:
    """'1 epoch', '3 epochs', '0.5 minutes', '1,200,000 pixels'."""
    shown = f"{int(count):,}" if float(count).is_integer() else f"{count:g}"
    return f"{shown} {word}{'' if count == 1 else 's'}"


def listed(values: Iterable, limit: int = 12) -> str:
    """'a, b, c' for a message; beyond limit the first ones and '..., (N in all)'."""
    values = list(values)
    return ", ".join(str(v) for v in values[:limit]) + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def progress(items: Iterable[T], total: int, label: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield items while drawing `label [#####.....] k/total elapsed` on stderr."""
    stream = stream or sys.stderr
    interactive = stream.isatty()
    start = time.monotonic()
    last_print = -1.0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        # In a log file, print at most every 10 s (and at the end) instead of redrawing.
        if interactive or now - last_print >= 10.0 or done == total:
            last_print = now
            filled = int(30 * done / max(total, 1))
            line = f"{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {now - start:5.1f}s"
            stream.write(("\r" + line) if interactive else (line + "\n"))
            stream.flush()
    if interactive:
        stream.write("\n")
        stream.flush()

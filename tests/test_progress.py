"""Message helpers and the progress bar: counts and lists as a reader wants them."""
from __future__ import annotations

import io

from lib.progress import listed, plural, progress


def test_plural_writes_whole_counts_in_full_and_fractions_short():
    assert [plural(1, "epoch"), plural(3, "epoch"), plural(0.5, "minute")] == ["1 epoch", "3 epochs", "0.5 minutes"]
    assert plural(1_200_000, "pixel") == "1,200,000 pixels"  # not 1.2e+06
    assert plural(2.0, "minute") == "2 minutes"


def test_listed_shows_the_first_items_and_how_many_there_are():
    assert listed(["a", "b"]) == "a, b"
    assert listed(range(5), limit=3) == "0, 1, 2, ... (5 in all)"


def test_progress_yields_every_item_and_draws_the_bar():
    stream = io.StringIO()
    assert list(progress(iter("abc"), 3, "read", stream=stream)) == ["a", "b", "c"]
    assert "read" in stream.getvalue() and "3/3" in stream.getvalue()

"""Folders a failed run made are removed when it leaves them empty; folders that were there, or hold files, stay."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.atomic import new_folders_removed_if_empty  # noqa: E402


def test_the_empty_new_folders_are_removed_and_the_old_one_kept(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(RuntimeError):
        with new_folders_removed_if_empty(deep):
            deep.mkdir(parents=True)
            raise RuntimeError("the run failed")
    assert tmp_path.is_dir() and not (tmp_path / "a").exists()


def test_a_new_folder_that_holds_a_file_is_kept_with_its_parents(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    with new_folders_removed_if_empty(deep):
        deep.mkdir(parents=True)
        (tmp_path / "a" / "b" / "notes.txt").write_text("mine")
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/notes.txt"]


def test_an_existing_empty_folder_is_not_removed(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with new_folders_removed_if_empty(tmp_path / "out"):
        pass
    assert (tmp_path / "out").is_dir()

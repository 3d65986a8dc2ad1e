"""Run folders: resume, refuse to replace a finished run, and --overwrite deletes only a run."""
from __future__ import annotations

import json

import pytest

from lib.config import load_config
from lib.errors import UserError
from lib.runs import CONFIG_NAME, FINISHED, prepare_run_folder

from conftest import REPO


def _config(tmp_path, name: str = "r"):
    return load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", f"name={name}"])


def test_overwrite_deletes_a_finished_run_and_lists_what_went(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "predictions" / "test").mkdir(parents=True)
    (run / CONFIG_NAME).write_text("x")
    (run / FINISHED).write_text(json.dumps({}))
    with pytest.raises(UserError, match="--overwrite"):
        prepare_run_folder(_config(tmp_path), overwrite=False)
    folder, resuming = prepare_run_folder(_config(tmp_path), overwrite=True)
    assert folder == run and not resuming and list(run.iterdir()) == []
    assert "predictions/" in capsys.readouterr().out


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "my_notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a run folder"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    assert (tmp_path / "r" / "my_notes.txt").read_text() == "keep me"


def test_overwrite_never_deletes_a_folder_with_files_a_run_does_not_hold(tmp_path):
    # A project folder with a configuration.txt (this repository's root has one) is not a run.
    project = tmp_path / "r"
    (project / "src").mkdir(parents=True)
    (project / CONFIG_NAME).write_text("x")
    (project / "src" / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match=r"holds files that train.py does not write \(src/\)"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    assert (project / "src" / "thesis.tex").read_text() == "keep me"

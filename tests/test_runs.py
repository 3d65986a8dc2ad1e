"""Run folders: resume, refuse to replace a finished run, and --overwrite deletes only a run."""
from __future__ import annotations

import json

import pytest

from lib.config import load_config
from lib.errors import UserError
from lib.runs import CONFIG_NAME, FINISHED, LOCK, prepare_run_folder, run_lock

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
    with pytest.raises(UserError, match=r"holds files that train.py and predict.py do not write \(src/\)"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    assert (project / "src" / "thesis.tex").read_text() == "keep me"


def test_overwrite_refuses_user_files_among_the_predictions_and_a_linked_run(tmp_path):
    run = tmp_path / "r"
    (run / "predictions" / "test").mkdir(parents=True)
    (run / CONFIG_NAME).write_text("x")
    (run / "predictions" / "test" / "01_probability.png").write_text("x")
    (run / "predictions" / "test" / "summary.txt").write_text("x")
    (run / ".last.abcd1234.tmp.keras").write_text("x")  # a write a kill interrupted: the run's own
    (run / "predictions" / "mywork").mkdir()
    (run / "predictions" / "mywork" / "notes.txt").write_text("keep me")
    (run / "tensorboard" / "train").mkdir(parents=True)
    (run / "tensorboard" / "train" / "events.out.tfevents.1.vm.1.0.v2").write_text("x")
    (run / "tensorboard" / "analysis.ipynb").write_text("keep me")
    with pytest.raises(UserError, match="predictions/mywork/notes.txt"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    (run / "predictions" / "mywork" / "notes.txt").unlink()
    (run / "predictions" / "mywork").rmdir()
    with pytest.raises(UserError, match="tensorboard/analysis.ipynb"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    (run / "tensorboard" / "analysis.ipynb").unlink()
    prepare_run_folder(_config(tmp_path), overwrite=True)
    assert list(run.iterdir()) == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / CONFIG_NAME).write_text("x")
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(UserError, match="is a link"):
        prepare_run_folder(_config(tmp_path, "linked"), overwrite=True)
    assert (elsewhere / CONFIG_NAME).exists()


def test_a_resume_with_other_settings_names_them_and_other_testing_settings_are_fine(tmp_path):
    from lib.config import write_config

    config = _config(tmp_path)
    (tmp_path / "r").mkdir()
    write_config(config, tmp_path / "r" / CONFIG_NAME)
    changed = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "N_epochs=3"])
    with pytest.raises(UserError, match=r"another configuration: training settings.N_epochs = 16 \(now 3\)"):
        prepare_run_folder(changed, overwrite=False)
    # Settings training never reads may change; those its holdout scoring uses may not.
    scored = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "threshold=auto"])
    assert prepare_run_folder(scored, overwrite=False) == (tmp_path / "r", True)
    windows = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "stride=100"])
    with pytest.raises(UserError, match="testing settings.stride = 768 \\(now 100\\)"):
        prepare_run_folder(windows, overwrite=False)


def _lock(folder, pid: int, host: str | None = None) -> None:
    import socket
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "then"}))


def test_a_run_another_train_py_is_training_is_refused_and_overwrite_deletes_nothing(tmp_path):
    import os
    run = tmp_path / "r"
    run.mkdir()
    (run / CONFIG_NAME).write_text("x")
    (run / "last.keras").write_text("weights")
    _lock(run, os.getpid())  # this process is alive, as the other train.py would be
    for overwrite in (False, True):
        with pytest.raises(UserError, match=f"is being trained now by process {os.getpid()}"):
            prepare_run_folder(_config(tmp_path), overwrite=overwrite)
    assert (run / "last.keras").read_text() == "weights"
    with pytest.raises(UserError, match="being trained now"):
        with run_lock(run, "now"):
            pass
    _lock(run, os.getpid(), host="another-machine")  # its process cannot be checked from here: kept
    with pytest.raises(UserError, match="on another-machine"):
        prepare_run_folder(_config(tmp_path), overwrite=True)


def test_the_lock_of_a_killed_train_py_is_taken_over_and_released_at_the_end(tmp_path):
    import subprocess
    import sys
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    run = tmp_path / "r"
    run.mkdir()
    _lock(run, int(finished.stdout))  # that process has exited, as after a kill -9
    with run_lock(run, "now"):
        holder = json.loads((run / LOCK).read_text())
        assert holder["pid"] != int(finished.stdout) and holder["started"] == "now"
    assert not (run / LOCK).exists()
    (run / LOCK).write_text("")  # cut short by a kill before its process wrote it
    with run_lock(run, "now"):
        pass
    assert not (run / LOCK).exists()

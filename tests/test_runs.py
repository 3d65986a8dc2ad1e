"""Run folders: resume, refuse to replace a finished run, and --overwrite deletes only a run."""
from __future__ import annotations

import json

import pytest

from lib.config import load_config
from lib.errors import UserError
from lib.runs import (CONFIG_NAME, FINISHED, finished_as_configured, lock_path, prepare_run_folder, run_lock,
                      training_now)

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
    (run / "predictions" / "test" / "summary.txt").write_text("run: runs/r\nimages: 1 (test)\n")
    (run / ".last.abcd1234.tmp.keras").write_text("x")  # a write a kill interrupted: the run's own
    (run / "predictions" / "test" / ".outputs.txt.ab12.tmp").write_text("x")  # likewise, in a prediction
    (run / "predictions" / "mywork").mkdir()
    (run / "predictions" / "mywork" / "notes.txt").write_text("keep me")
    # Hand-corrected maps named as predictions are, in a folder no prediction wrote, are the user's too.
    (run / "predictions" / "corrected").mkdir()
    (run / "predictions" / "corrected" / "01_binary.png").write_text("keep me")
    with pytest.raises(UserError, match="predictions/corrected/01_binary.png"):
        prepare_run_folder(_config(tmp_path), overwrite=True)
    (run / "predictions" / "corrected" / "01_binary.png").unlink()
    (run / "predictions" / "corrected").rmdir()
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
    with pytest.raises(UserError, match=r"another configuration: training_settings.N_epochs = 16 \(now 3\)"):
        prepare_run_folder(changed, overwrite=False)
    # Settings training never reads may change; those its holdout scoring uses may not.
    for unread in ("threshold=auto", "label_offset=0,0"):
        scored = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", unread])
        assert prepare_run_folder(scored, overwrite=False) == (tmp_path / "r", True)
    windows = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "stride=100"])
    with pytest.raises(UserError, match="testing_settings.stride = 768 \\(now 100\\)"):
        prepare_run_folder(windows, overwrite=False)


def test_a_finished_run_counts_as_done_only_for_its_own_training_settings(tmp_path):
    from lib.config import write_config

    config = _config(tmp_path)
    assert finished_as_configured(config) is None  # no run yet
    (tmp_path / "r").mkdir()
    write_config(config, tmp_path / "r" / CONFIG_NAME)
    assert finished_as_configured(config) is None  # not finished: train.py resumes it
    (tmp_path / "r" / FINISHED).write_text(json.dumps({"best": 0.98, "best_epoch": 5}))
    assert finished_as_configured(config) == {"best": 0.98, "best_epoch": 5}
    # Testing settings training never reads may differ; a training setting may not.
    checkpoint = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "checkpoint=last"])
    assert finished_as_configured(checkpoint) is not None
    # The threshold is read at the end of training (the label offset is found at it): another threshold is
    # another calibration. Testing settings alone are refused with the way to use them: predict.py.
    threshold = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "threshold=0.3"])
    assert finished_as_configured(threshold) is None
    with pytest.raises(UserError, match=r"testing_settings.threshold = 0.5 \(now 0.3\).*run predict.py alone"):
        prepare_run_folder(threshold, overwrite=False)
    epochs = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "N_epochs=3"])
    assert finished_as_configured(epochs) is None
    # Other patches (data prepared again) make another run, though a resume may take them.
    patches = load_config(REPO / "configuration.txt", [f"runs_dir={tmp_path}", "name=r", "N_subimgs=500"])
    assert finished_as_configured(patches) is None
    with pytest.raises(UserError, match=r"other settings \(training_settings.N_subimgs = 100000 \(now 500\)\)"):
        prepare_run_folder(patches, overwrite=False)
    with pytest.raises(UserError, match=r"finished run made with other settings \(training_settings.N_epochs = 16 "
                                        r"\(now 3\)\)"):
        prepare_run_folder(epochs, overwrite=False)
    (tmp_path / "r" / FINISHED).write_text("{broken")
    assert finished_as_configured(config) is None


def test_a_run_another_train_py_holds_is_refused_until_that_process_is_gone(tmp_path):
    import signal
    import subprocess
    import sys
    run = tmp_path / "r"
    hold = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
            f"from lib.runs import run_lock\nwith run_lock(Path({str(run)!r})):\n print('held', flush=True); "
            "time.sleep(120)")
    with subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout.readline().strip() == "held"
        assert f"process {other.pid} on " in training_now(run)
        with pytest.raises(UserError, match=f"is being trained now by process {other.pid} on .* \\(started "):
            with run_lock(run):
                pass
        other.send_signal(signal.SIGKILL)  # as kill -9: the process never releases the lock itself
        other.wait()
    assert training_now(run) is None
    with run_lock(run):
        assert training_now(run) is not None  # held by this process now
    assert training_now(run) is None and lock_path(run).parent == tmp_path  # beside the run folder
    assert not lock_path(run).exists()  # removed when released


def test_the_resume_command_leaves_out_overwrite_and_its_abbreviations():
    import shlex
    import sys
    from train import resume_command
    argv = ["train.py", "--overwrite", "--set", "name=a b", "--overw", "--set", "seed=7"]
    assert shlex.split(resume_command(argv)) == [sys.executable, "train.py", "--set", "name=a b", "--set", "seed=7"]

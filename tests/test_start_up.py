"""TensorFlow's start-up log lines are left out of stderr; everything else written there still shows."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO, script_env
from lib.start_up import StartUpFilter, filtered_stderr

INFO = "I0000 00:00:1796051706.769027   23056 port.cc:153] oneDNN custom operations are on."
NO_DRIVER = ("I0000 00:00:1796051706.770808   23056 cudart_stub.cc:31] Could not find cuda drivers on your "
             "machine, GPU will not be used.")
CUINIT = ("E0000 00:00:1796051708.467514   23056 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
          "error: Failed call to cuInit: UNKNOWN ERROR (303)")
OTHER_ERROR = "E0000 00:00:1796051708.467514   23056 some_op.cc:7] OOM when allocating tensor"
WARNING = "W0000 00:00:1796051708.467514   23056 gpu_device.cc:2] Cannot dlopen some GPU libraries."


def test_the_filter_drops_banners_info_and_the_expected_cuinit_error_only():
    line_filter = StartUpFilter()
    assert not line_filter.keep("WARNING: All log messages before absl::InitializeLog() is called are written to "
                                "STDERR")
    assert not line_filter.keep("To enable the following instructions: AVX2 AVX512F FMA, in other operations, "
                                "rebuild TensorFlow with the appropriate compiler flags.")
    assert not line_filter.keep(INFO)
    assert line_filter.keep(CUINIT)  # a driver is there but failed: the user needs this line
    assert line_filter.keep(WARNING) and line_filter.keep(OTHER_ERROR)
    assert line_filter.keep("Traceback (most recent call last):") and line_filter.keep("")
    assert not line_filter.keep(NO_DRIVER)
    assert not line_filter.keep(CUINIT)  # no driver at all: the error is the expected consequence
    assert line_filter.keep(OTHER_ERROR)


def test_filtered_stderr_passes_other_lines_through_as_written(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "x")  # so that monkeypatch restores what the filter sets
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    with filtered_stderr():
        for line in (INFO, "a message of our own", NO_DRIVER, CUINIT, OTHER_ERROR):
            os.write(2, (line + "\n").encode())
        os.write(2, b"no newline at the end")
    os.write(2, (INFO + "\n").encode())  # after the block nothing is filtered
    assert capfd.readouterr().err == (f"a message of our own\n{OTHER_ERROR}\nno newline at the end{INFO}\n")


def test_log_level_0_turns_the_filter_off_and_a_higher_one_is_kept(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    with filtered_stderr():
        os.write(2, (INFO + "\n").encode())
    assert capfd.readouterr().err == INFO + "\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet asked for: TensorFlow ignores it for these lines
    with filtered_stderr():
        os.write(2, (INFO + "\n").encode())
    assert capfd.readouterr().err == "" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_the_last_lines_before_a_crash_still_get_through():
    fatal = "F0000 00:00:1796051708.467514   23056 cpu_check.cc:9] Check failed: the CPU lacks AVX"
    code = (f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from lib.start_up import filtered_stderr\n"
            f"with filtered_stderr():\n os.write(2, {(INFO + chr(10) + fatal + chr(10)).encode()!r}); os.abort()")
    env = script_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stderr == fatal + "\n"


def test_importing_keras_prints_none_of_tensorflows_start_up_lines():
    env = script_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]
    code = ("import sys; from lib.start_up import import_keras; keras = import_keras(); "
            "print('backend', keras.backend.backend(), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend " in result.stderr
    lines = result.stderr.splitlines()
    assert not [line for line in lines if line.startswith(("I0", "WARNING: All log messages", "To enable"))
                or "cuInit" in line], lines


def test_a_module_in_the_current_folder_cannot_break_the_filter(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "re.py").write_text("raise SystemExit('a user module named re')\n")
    script = tmp_path / "script.py"
    script.write_text(f"import os, sys; sys.path.insert(0, {str(REPO)!r}); from lib.start_up import filtered_stderr\n"
                      f"with filtered_stderr():\n os.write(2, b'a real error\\n' + {(INFO + chr(10)).encode()!r})\n")
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path / "work", env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "a real error\n"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's x86 kernels")
def test_the_scripts_start_tensorflow_with_its_onednn_kernels_unless_the_user_turned_them_off():
    env = script_env()
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the filter off: TensorFlow's own line says whether the kernels are on
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    code = "from lib.start_up import import_keras; import_keras()"
    for setting, expected in ((None, True), ("0", False)):
        if setting is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = setting
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("oneDNN custom operations are on" in result.stderr) == expected, result.stderr[-2000:]

"""Every bad input gets exit status 2, a message naming the file or key and the fix, and no partial output.

Run as a script (`python tests/test_bad_inputs.py`) to print the table in docs/errors.md.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, run_script, script_env, tiny_settings  # noqa: E402


def copy_drive(drive: Path, tmp: Path) -> Path:
    target = tmp / "DRIVE"
    shutil.copytree(drive, target)
    return target


def gray_gif(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8), mode="L").save(path, optimize=False)


# Each case: name -> function(tmp, drive, trained) returning (script, args, expected text in the message).
def case_missing_dataset_folder(tmp, drive, trained):
    return "prepare_datasets.py", tiny_settings(tmp, tmp / "no_such_folder"), "no_such_folder"


def case_image_without_label(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    (root / "training" / "1st_manual" / "22_manual1.gif").unlink()
    return "prepare_datasets.py", tiny_settings(tmp, root), "22_training.tif"


def case_label_without_image(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    (root / "training" / "images" / "23_training.tif").unlink()
    return "prepare_datasets.py", tiny_settings(tmp, root), "23_training_mask.gif"


def case_corrupt_image(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    (root / "training" / "images" / "24_training.tif").write_bytes(os.urandom(5000))
    return "prepare_datasets.py", tiny_settings(tmp, root), "24_training.tif cannot be read"


def case_zero_byte_file(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    (root / "training" / "mask" / "25_training_mask.gif").write_bytes(b"")
    return "prepare_datasets.py", tiny_settings(tmp, root), "25_training_mask.gif is an empty"


def case_empty_fov_mask(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    gray_gif(root / "test" / "mask" / "01_test_mask.gif", np.zeros((120, 128)))
    return "prepare_datasets.py", tiny_settings(tmp, root), "01_test_mask.gif of image 01_test.tif is empty (all zero)"


def case_size_mismatch(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    gray_gif(root / "training" / "1st_manual" / "26_manual1.gif", np.zeros((100, 100)))
    return "prepare_datasets.py", tiny_settings(tmp, root), "26_manual1.gif is 100x100"


def case_label_with_unexpected_values(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    label = np.zeros((120, 128))
    label[:10] = 128
    label[-10:] = 255
    gray_gif(root / "training" / "1st_manual" / "21_manual1.gif", label)
    return "prepare_datasets.py", tiny_settings(tmp, root), "0, 128, 255"


def case_labels_without_foreground(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    for label in (root / "training" / "1st_manual").glob("*.gif"):
        gray_gif(label, np.zeros((120, 128)))  # e.g. labels exported blank, or the wrong files
    return "prepare_datasets.py", tiny_settings(tmp, root), "no training label in"


def case_image_smaller_than_patch(tmp, drive, trained):
    expected = "training image 21_training.tif is 128x120 pixels, smaller than the"
    return "prepare_datasets.py", tiny_settings(tmp, drive, extra=["patch_size=192", "window=192"]), expected


def case_unknown_section(tmp, drive, trained):
    config = tmp / "bad.txt"
    config.write_text((REPO / "configuration_sample.txt").read_text() + "\n[trainig settings]\nN_epochs = 3\n")
    return "train.py", ["--config", str(config)], "unknown section [trainig settings]"


def case_unknown_key(tmp, drive, trained):
    return "train.py", tiny_settings(tmp, drive, extra=["training_settings.N_epoch=3"]), "unknown key 'N_epoch'"


def case_wrong_type(tmp, drive, trained):
    return "train.py", tiny_settings(tmp, drive, extra=["depth=two"]), "depth = 'two'"


def case_patch_not_divisible(tmp, drive, trained):
    return "prepare_datasets.py", tiny_settings(tmp, drive, extra=["patch_size=30"]), "patch_size = 30 is not divisible"


def case_missing_hdf5(tmp, drive, trained):
    return "train.py", tiny_settings(tmp, drive), "not found"


def case_truncated_hdf5(tmp, drive, trained):
    source = trained[0] / "prepared" / "dataset.h5"
    (tmp / "prepared").mkdir()
    data = source.read_bytes()
    (tmp / "prepared" / "dataset.h5").write_bytes(data[: len(data) // 2])
    return "train.py", tiny_settings(tmp, drive), "dataset.h5"


def case_hdf5_for_another_patch_size(tmp, drive, trained):
    shutil.copytree(trained[0] / "prepared", tmp / "prepared")
    return "train.py", tiny_settings(tmp, drive, extra=["patch_size=64"]), "patches are 32x32"


def case_holdout_without_vessels(tmp, drive, trained):
    root = copy_drive(drive, tmp)
    for n in (27, 28):  # the holdout images of tiny_settings
        gray_gif(root / "training" / "1st_manual" / f"{n}_manual1.gif", np.zeros((120, 128)))
    run_script("prepare_datasets.py", *tiny_settings(tmp, root))
    return "train.py", tiny_settings(tmp, root), "have no foreground pixels"


def case_train_with_other_preprocessing(tmp, drive, trained):
    shutil.copytree(trained[0] / "prepared", tmp / "prepared")
    return "train.py", tiny_settings(tmp, drive, extra=["clahe=false"]), "preprocessing.clahe = true (now false)"


def case_run_name_outside_runs_dir(tmp, drive, trained):
    return "train.py", tiny_settings(tmp, drive, extra=["name=../elsewhere"]), "name = '../elsewhere' is not valid"


def _copy_run(tmp, trained) -> Path:
    shutil.copytree(trained[0] / "prepared", tmp / "prepared")
    shutil.copytree(trained[0] / "runs", tmp / "runs")
    return tmp / "runs" / "tiny"


def case_missing_model_file(tmp, drive, trained):
    (_copy_run(tmp, trained) / "best.keras").unlink()
    return "predict.py", tiny_settings(tmp, drive), "best.keras not found"


def case_corrupt_model_file(tmp, drive, trained):
    (_copy_run(tmp, trained) / "best.keras").write_bytes(os.urandom(3000))
    return "predict.py", tiny_settings(tmp, drive), "best.keras is not a Keras model archive"


def case_predict_on_data_prepared_again_differently(tmp, drive, trained):
    saved = _copy_run(tmp, trained) / "configuration.txt"
    saved.write_text(saved.read_text().replace(str(trained[0] / "prepared"), str(tmp / "prepared")))
    run_script("prepare_datasets.py", *tiny_settings(tmp, drive, extra=["gamma=2"]), "--overwrite")
    return "predict.py", tiny_settings(tmp, drive), "prepared again since"


def case_input_folder_with_a_mask_missing(tmp, drive, trained):
    _copy_run(tmp, trained)
    masks = tmp / "masks"
    masks.mkdir()
    for mask in sorted((drive / "test" / "mask").iterdir())[:-1]:  # the last image has none
        (masks / mask.name).write_bytes(mask.read_bytes())
    last = sorted((drive / "test" / "images").iterdir())[-1]
    args = ["--input", str(drive / "test" / "images"), "--mask", str(masks)]
    return "predict.py", tiny_settings(tmp, drive) + args, f"no FOV mask for {last.name}"


def _own_folders(tmp, drive) -> Path:
    """A dataset = folders copy of the DRIVE training images and labels (images/, labels/) in tmp/mine."""
    root = tmp / "mine"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for image in (drive / "training" / "images").iterdir():
        number = image.name.split("_")[0]
        (root / "images" / f"case{number}.tif").write_bytes(image.read_bytes())
        (root / "labels" / f"case{number}.gif").write_bytes(
            (drive / "training" / "1st_manual" / f"{number}_manual1.gif").read_bytes())
    return root


def case_images_in_a_subfolder(tmp, drive, trained):
    root = _own_folders(tmp, drive)
    (root / "images" / "extra").mkdir()
    first = sorted((root / "images").glob("*.tif"))[0]
    first.rename(root / "images" / "extra" / first.name)  # would be left out of training without a word
    args = tiny_settings(tmp, root, extra=["dataset=folders", "holdout_ids="])
    return "prepare_datasets.py", args, "has images in subfolders, which are not read: extra/ (1 image)"


def case_labels_in_a_masks_folder(tmp, drive, trained):
    root = _own_folders(tmp, drive)
    (root / "labels").rename(root / "masks")  # the Kaggle layout, where masks are the structures
    args = tiny_settings(tmp, root, extra=["dataset=folders", "holdout_ids="])
    return "prepare_datasets.py", args, "labels not found, but"


def case_data_given_a_dataset_folder(tmp, drive, trained):
    _copy_run(tmp, trained)
    return "predict.py", tiny_settings(tmp, drive) + ["--data", str(drive)], "holds no dataset.h5: --data takes"


def case_input_with_an_empty_mask(tmp, drive, trained):
    _copy_run(tmp, trained)
    masks = tmp / "masks"
    masks.mkdir()
    for mask in sorted((drive / "test" / "mask").iterdir()):
        (masks / mask.name).write_bytes(mask.read_bytes())
    last = sorted(masks.iterdir())[-1]
    gray_gif(last, np.zeros((120, 128)))  # the last image's: refused before the first image is segmented
    args = ["--input", str(drive / "test" / "images"), "--mask", str(masks)]
    return "predict.py", tiny_settings(tmp, drive) + args, f"{last.name} is empty (all zero)"


def _one_input_image(tmp, drive, trained) -> Path:
    """The trained run copied into tmp, and a folder tmp/images holding the first test image."""
    _copy_run(tmp, trained)
    images = tmp / "images"
    images.mkdir()
    first = sorted((drive / "test" / "images").iterdir())[0]
    (images / first.name).write_bytes(first.read_bytes())
    return images / first.name


def case_input_images_with_the_same_name(tmp, drive, trained):
    first = _one_input_image(tmp, drive, trained)
    first.with_suffix(".png").write_bytes(first.read_bytes())  # the same stem: the outputs would clash
    args = tiny_settings(tmp, drive) + ["--input", str(first.parent)]
    return "predict.py", args, "images whose outputs would have the same name"


def case_output_folder_of_the_input_images(tmp, drive, trained):
    images = _one_input_image(tmp, drive, trained).parent
    args = ["--input", str(images), "--output", str(images)]
    return "predict.py", tiny_settings(tmp, drive) + args, "is the folder of the --input images"


def case_dataset_files_in_subfolders(tmp, drive, trained):
    # A CHASE_DB1 mirror that sorted the flat release into images/ and 1st_label/.
    root = tmp / "CHASE_DB1"
    for folder, name in (("images", "Image_01L.jpg"), ("1st_label", "Image_01L_1stHO.png")):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / folder / name)
    args = tiny_settings(tmp, root, extra=["dataset=CHASE_DB1"])
    return "prepare_datasets.py", args, "Its subfolders hold images (1st_label/ (1 image), images/ (1 image))"


CASES = {name[5:]: func for name, func in sorted(globals().items()) if name.startswith("case_")}


def run_case(name, tmp, drive, trained):
    script, args, expected = CASES[name](tmp, drive, trained)
    before = sorted(p for p in tmp.rglob("*"))
    result = run_script(script, *args, check=False)
    return result, expected, before


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_a_clear_error_and_no_partial_output(name, tmp_path, small_drive, trained):
    result, expected, before = run_case(name, tmp_path, small_drive, trained)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.split("error:", 1)[-1]
    assert expected in message, message
    assert len(message.strip()) > 40  # a sentence with the fix, not a bare code
    after = sorted(p for p in tmp_path.rglob("*"))
    created = [p for p in after if p not in before]
    assert not [p for p in created if p.suffix in (".h5", ".keras", ".png", ".json", ".csv")], created


def test_overwrite_with_a_refused_configuration_keeps_the_finished_run(tmp_path, small_drive, trained):
    run = _copy_run(tmp_path, trained)
    args = tiny_settings(tmp_path, small_drive, extra=["training_settings.batch_size=100000"])
    result = run_script("train.py", *args, "--overwrite", check=False)
    assert result.returncode == 2 and "batch size of 100000" in result.stderr
    assert (run / "best.keras").is_file() and (run / "training_summary.json").is_file()


def _limited_file_size():
    # Writes past 2 MiB fail as on a full disk (EFBIG instead of a signal).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))


def test_disk_full_while_writing_hdf5_leaves_nothing(tmp_path, small_drive):
    args = tiny_settings(tmp_path, small_drive)
    result = subprocess.run([sys.executable, str(REPO / "prepare_datasets.py"), *args], cwd=REPO,
                            env=script_env(), capture_output=True, text=True, preexec_fn=_limited_file_size)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no space left" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "prepared").glob("*"))


def test_output_folder_without_write_permission(tmp_path, trained):
    _, args, _, _ = trained
    if os.geteuid() == 0:
        # root ignores file modes; sysfs refuses new folders even to root.
        target = Path("/sys/unet-permission-test/out")
        if not Path("/sys").is_dir():
            pytest.skip("needs /sys to get an unwritable folder as root")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        os.chmod(locked, 0o555)
        target = locked / "out"
    result = run_script("predict.py", *args, "--output", str(target), check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no permission to read or write" in result.stderr and "Traceback" not in result.stderr


def prepare_while_writing(tmp_path, drive) -> tuple[subprocess.Popen, list[str]]:
    """Start a long prepare_datasets.py and return once it is writing its HDF5 file, with its arguments."""
    args = tiny_settings(tmp_path, drive, extra=["N_subimgs=400000"])
    # A shell starts background jobs with SIGINT ignored; the child must get Ctrl-C as a terminal would.
    child = subprocess.Popen([sys.executable, str(REPO / "prepare_datasets.py"), *args], cwd=REPO,
                             env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "prepared").glob(".dataset.*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert child.poll() is None, "prepare finished before it could be stopped"
    return child, args


def test_sigkill_during_prepare_leaves_no_file_train_would_accept(tmp_path, small_drive):
    child, args = prepare_while_writing(tmp_path, small_drive)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert not (tmp_path / "prepared" / "dataset.h5").exists()
    result = run_script("train.py", *args, check=False)
    assert result.returncode == 2 and "not found" in result.stderr
    # The next prepare removes the interrupted temporary file and succeeds.
    again = run_script("prepare_datasets.py", *tiny_settings(tmp_path, small_drive))
    assert "interrupted" in again.stdout
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == ["dataset.h5"]


def test_ctrl_c_during_prepare_says_so_and_leaves_no_file(tmp_path, small_drive):
    child, _ = prepare_while_writing(tmp_path, small_drive)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130 and "Traceback" not in stderr
    assert "Interrupted" in stderr and "nothing half-written was kept" in stderr
    assert not list((tmp_path / "prepared").glob("*dataset*"))
    assert not (tmp_path / "prepared").exists()  # made by this prepare, and left empty: removed


if __name__ == "__main__":
    import tempfile
    from lib.sample_data import write_drive_sample
    # Regenerate docs/errors.md: every case with its exact message.
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        drive = write_drive_sample(work / "drive", n_train=8, n_test=2, width=128, height=120, seed=3)
        base = work / "trained"
        base.mkdir()
        args = tiny_settings(base, drive)
        run_script("prepare_datasets.py", *args)
        run_script("train.py", *args)
        print("| case | script | message (exit status 2) |\n|---|---|---|")
        for name in sorted(CASES):
            tmp = work / name
            tmp.mkdir()
            result, _, _ = run_case(name, tmp, drive, (base, args))
            message = result.stderr.split("error:", 1)[-1].strip().replace(str(work), "…").replace("|", "\\|")
            message = message.replace("\n", "<br>")  # one table row, however many lines
            print(f"| {name.replace('_', ' ')} | {result.args[1].split('/')[-1]} | {message} |")

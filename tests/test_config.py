"""Tests for configuration loading: schema, strict checking, overrides, round trip, fuzzing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lib.config import SCHEMA, config_reference, format_config, load_config, parse_override  # noqa: E402
from lib.errors import UserError  # noqa: E402

CONFIG_FILES = sorted(REPO.glob("configuration*.txt"))  # every shipped profile
DEFAULT_LINES = (REPO / "configuration.txt").read_text(encoding="utf-8").splitlines()


def _edited(tmp_path: Path, old: str, new: str | None, name: str = "edited.txt") -> Path:
    """Copy configuration.txt with the single line `old` replaced by `new` (None deletes it)."""
    lines = list(DEFAULT_LINES)
    matches = [i for i, line in enumerate(lines) if line.strip() == old]
    assert len(matches) == 1, f"{old!r} is not a unique line of configuration.txt"
    if new is None:
        del lines[matches[0]]
    else:
        lines[matches[0]] = new
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _set_in_section(tmp_path: Path, section: str, key: str, value: str) -> Path:
    """Copy configuration.txt with `key` of [section] set to `value` (for keys in two sections)."""
    lines = list(DEFAULT_LINES)
    current = None
    done = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
        elif current == section and stripped.split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            done = True
    assert done
    path = tmp_path / "edited.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assigned_keys(lines: list[str]) -> dict[tuple[str, str], int]:
    """(section, key) -> line index of its assignment, parsed independently of configparser."""
    found = {}
    section = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        elif "=" in stripped and not stripped.startswith("#"):
            found[(section, stripped.split("=", 1)[0].strip())] = i
    return found


# --- the shipped files ---------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_configuration_files_load_with_typed_values(path: Path) -> None:
    config = load_config(path)
    assert list(config) == list(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(config[section]) == set(keys)
    assert isinstance(config["training settings"]["batch_size"], int)
    assert isinstance(config["preprocessing"]["standardize"], bool)
    assert isinstance(config["training settings"]["learning_rate"], float)
    assert isinstance(config["data paths"]["holdout_ids"], list)
    assert config["data attributes"]["patch_size"] % 2 ** config["model"]["depth"] == 0


def test_sample_profile_differs_where_documented() -> None:
    default, sample = (load_config(REPO / name) for name in ("configuration.txt", "configuration_sample.txt"))
    assert default["data paths"]["dataset"] == "DRIVE"
    assert sample["data paths"]["dataset"] == "sample"
    assert sample["data paths"]["holdout_ids"] == [29, 30]
    assert default["data paths"]["holdout_ids"] == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_schema_key_has_its_comment_on_the_line_above(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    assigned = _assigned_keys(lines)
    expected = {(section, key) for section, keys in SCHEMA.items() for key in keys}
    assert set(assigned) == expected
    for (section, key), index in assigned.items():
        above = lines[index - 1]
        assert above.startswith("# "), f"[{section}] {key} has no comment line above it"
        assert above[2:].strip() == SCHEMA[section][key][1], f"[{section}] {key}: comment differs from SCHEMA"


# --- strict checking -----------------------------------------------------------------------

def test_unknown_section_is_a_user_error_listing_valid_sections(tmp_path: Path) -> None:
    path = _edited(tmp_path, "[experiment]", "[experimment]")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "experimment" in message
    assert "Did you mean 'experiment'" in message
    for section in SCHEMA:
        assert section in message


def test_unknown_key_names_it_lists_valid_keys_and_suggests_the_close_match(tmp_path: Path) -> None:
    path = _edited(tmp_path, "N_subimgs = 100000", "N_subimg = 100000")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "'N_subimg'" in message
    assert "Did you mean 'N_subimgs'?" in message
    for key in SCHEMA["training settings"]:
        assert key in message


def test_a_key_in_the_wrong_section_is_answered_with_its_section(tmp_path: Path) -> None:
    path = _edited(tmp_path, "N_epochs = 16", "")
    path.write_text(path.read_text().replace("[model]", "[model]\nN_epochs = 16"))
    with pytest.raises(UserError, match=r"unknown key 'N_epochs' in \[model\]\. .*'N_epochs' belongs in "
                                        r"\[training settings\]: move it there\."):
        load_config(path)


def test_hand_edits_from_other_editors_and_formats_read_as_meant(tmp_path: Path) -> None:
    # A byte-order mark (Windows editors), a quoted value (as in YAML or TOML) and ~ for the home folder.
    path = _edited(tmp_path, "name = drive", 'name = "my run"')
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"runs_dir = runs", b"runs_dir = ~/unet_runs"))
    config = load_config(path)
    assert config["experiment"]["name"] == "my run"
    assert config["experiment"]["runs_dir"] == str(Path.home() / "unet_runs")
    assert load_config(REPO / "configuration.txt", ["runs_dir=~/x"])["experiment"]["runs_dir"] == str(Path.home() / "x")
    names = ",".join(f'"class {i}"' for i in range(11))  # each name of a list quoted
    config = load_config(REPO / "configuration_camvid.txt", [f"class_names={names}"])
    assert config["data attributes"]["class_names"] == [f"class {i}" for i in range(11)]


def test_an_indented_key_is_named_not_read_into_the_value_above(tmp_path: Path) -> None:
    path = _edited(tmp_path, "N_epochs = 16", "  N_epochs = 16")
    with pytest.raises(UserError, match=r"the line 'N_epochs = 16' is indented, so it is read as part of the value of "
                                        r"\[training settings\] foreground_fraction above it"):
        load_config(path)


def test_names_longer_than_a_file_system_takes_are_refused_up_front() -> None:
    with pytest.raises(UserError, match=r"name = 'n+' is not valid: .*246 bytes long; a run name takes at most 240"):
        load_config(REPO / "configuration.txt", ["name=" + "n" * 246])
    with pytest.raises(UserError, match=r"prepared_dir = .* is 300 bytes long; file systems take at most 255"):
        load_config(REPO / "configuration.txt", ["prepared_dir=/tmp/" + "p" * 300 + "/x"])


def test_missing_key_is_a_user_error_naming_it(tmp_path: Path) -> None:
    path = _edited(tmp_path, "clahe_clip = 0.01", None)
    with pytest.raises(UserError) as info:
        load_config(path)
    assert "missing key: [preprocessing] clahe_clip (" in str(info.value)


def test_all_missing_keys_are_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "minimal.txt"
    path.write_text("[data paths]\ndataset = folders\ndataset_dir = data/mine\nprepared_dir = data/prepared/mine\n")
    total = sum(len(keys) for keys in SCHEMA.values())
    with pytest.raises(UserError, match=rf"missing {total - 3} keys: \[data paths\] holdout_ids, \[data paths\] "
                                        rf"test_ids, .* and {total - 3 - 12} more\. Add them"):
        load_config(path)
    path.write_text("# nothing yet\n")
    with pytest.raises(UserError, match=rf"holds no settings \(it needs all {total}\)"):
        load_config(path)


def test_a_section_spelled_as_set_spells_it_is_that_section_and_may_not_appear_twice(tmp_path: Path) -> None:
    path = _edited(tmp_path, "[training settings]", "[training_settings]")
    assert load_config(path) == load_config(REPO / "configuration.txt")
    path.write_text(path.read_text() + "\n[ Model ]\ndepth = 4\n")
    with pytest.raises(UserError, match=r"\[model\] and \[ Model \] are the same section; merge them"):
        load_config(path)


def test_a_folder_a_duplicate_key_and_interpolation_are_explained(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is a folder: pass the configuration file itself"):
        load_config(tmp_path)
    path = _edited(tmp_path, "clahe_clip = 0.01", "clahe_clip = 0.01\nclahe_clip = 0.02")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert f"'{path}' [line" in str(info.value) and "PosixPath" not in str(info.value)
    path = _edited(tmp_path, "clahe_clip = 0.01", "clahe_clip = 0.01")
    with pytest.raises(UserError, match=r"prepared_dir = '%\(dataset_dir\)s/p': values are taken literally"):
        load_config(path, ["prepared_dir=%(dataset_dir)s/p"])


@pytest.mark.parametrize("section, key, bad", [
    ("training settings", "batch_size", "abc"),
    ("testing settings", "batch_size", "0"),
    ("model", "depth", "-1"),
    ("testing settings", "blend", "fancy"),
    ("preprocessing", "standardize", "maybe"),
    ("model", "dropout", "1.0"),
    ("testing settings", "threshold", "1.5"),
    ("data paths", "holdout_ids", "1,two"),
    ("data attributes", "channels", "2"),
    ("training settings", "learning_rate", "nan"),
    ("training settings", "max_train_minutes", "inf"),
    ("augmentation", "flips", "vertical"),
    ("testing settings", "tta_flips", "vertical"),
    ("testing settings", "tta_scales", "1.0, 0"),
    ("testing settings", "tta_scales", "1.0, 1.0"),
    ("testing settings", "tta_scales", ""),
    ("testing settings", "label_offset", "0.5"),
    ("testing settings", "label_offset", "9, 0"),
    ("testing settings", "label_offset", "0, nan"),
    ("experiment", "seed", "-1"),
    ("experiment", "seed", "4294967296"),
])
def test_wrong_value_is_a_user_error_naming_key_and_value(tmp_path: Path, section: str, key: str,
                                                         bad: str) -> None:
    path = _set_in_section(tmp_path, section, key, bad)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert f"[{section}] {key} = '{bad}'" in message


def test_patch_size_not_divisible_by_two_to_the_depth_is_rejected(tmp_path: Path) -> None:
    path = _edited(tmp_path, "patch_size = 64", "patch_size = 60")   # depth 3: needs a multiple of 8
    with pytest.raises(UserError) as info:
        load_config(path)
    assert "patch_size = 60" in str(info.value)
    assert "2^depth = 8" in str(info.value)
    # 64 with depth 7 (128) fails too, 64 with depth 6 is fine.
    with pytest.raises(UserError, match="patch_size"):
        load_config(REPO / "configuration.txt", ["model.depth=7", "window=256"])
    assert load_config(REPO / "configuration.txt", ["model.depth=6"])["model"]["depth"] == 6


def test_a_conflict_names_the_set_options_it_comes_from_and_not_only_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_config(REPO / "configuration.txt", ["depth=7", "window=256"])
    assert str(info.value).startswith(f"{REPO / 'configuration.txt'} with --set model.depth: ")
    path = _edited(tmp_path, "patch_size = 64", "patch_size = 60")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: [data attributes] patch_size = 60")  # the file's own value
    with pytest.raises(UserError, match="--set training_settings.loss: .*loss = cce is for several classes"):
        load_config(REPO / "configuration.txt", ["loss=cce"])


def test_refinements_need_a_depth_of_two_since_the_refinement_unet_has_depth_two() -> None:
    with pytest.raises(UserError, match=r"refinements = 3 needs depth = 2 or more .* got depth = 1"):
        load_config(REPO / "configuration.txt", ["depth=1", "refinements=3"])
    assert load_config(REPO / "configuration.txt", ["depth=2", "refinements=3"])["model"]["refinements"] == 3
    assert load_config(REPO / "configuration.txt", ["depth=1"])["model"]["refinements"] == 0


def test_huge_depth_is_a_user_error_not_a_hang(tmp_path: Path) -> None:
    path = _edited(tmp_path, "depth = 3", "depth = " + "9" * 4000)
    with pytest.raises(UserError, match="depth"):
        load_config(path)


@pytest.mark.parametrize("written, meant", [("true", "all"), ("false", "none"), ("horizontal", "horizontal")])
def test_flips_accepts_its_choices_and_the_true_false_of_earlier_versions(written: str, meant: str) -> None:
    assert load_config(REPO / "configuration.txt", [f"flips={written}"])["augmentation"]["flips"] == meant


@pytest.mark.parametrize("written, meant", [("true", True), ("off", False), ("Horizontal", "horizontal"),
                                            ("rotations", "rotations"), ("Auto", "auto")])
def test_tta_flips_accepts_true_false_horizontal_rotations_and_auto(written: str, meant: bool | str) -> None:
    assert load_config(REPO / "configuration.txt", [f"tta_flips={written}"])["testing settings"]["tta_flips"] == meant


@pytest.mark.parametrize("written, meant", [("auto", "auto"), ("true", True), ("no", False)])
def test_mixed_precision_accepts_auto_true_and_false(written: str, meant: bool | str) -> None:
    config = load_config(REPO / "configuration.txt", [f"mixed_precision={written}"])
    assert config["training settings"]["mixed_precision"] == meant


def test_stride_larger_than_window_is_rejected() -> None:
    window = load_config(REPO / "configuration.txt")["testing settings"]["window"]
    with pytest.raises(UserError, match="stride"):
        load_config(REPO / "configuration.txt", [f"stride={window + 8}"])


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.txt")


# --- overrides ------------------------------------------------------------------------------

@pytest.mark.parametrize("override", [
    "training settings.batch_size=8",
    "training_settings.batch_size=8",
    "Training_Settings.batch_size = 8",
])
def test_override_with_section_sets_only_that_section(override: str) -> None:
    base = load_config(REPO / "configuration.txt")
    config = load_config(REPO / "configuration.txt", [override])
    assert config["training settings"]["batch_size"] == 8
    assert config["testing settings"]["batch_size"] == base["testing settings"]["batch_size"] == 4
    assert config["training settings"]["batch_size"] != base["training settings"]["batch_size"]


def test_short_override_of_a_unique_key_finds_its_section() -> None:
    config = load_config(REPO / "configuration.txt", ["N_epochs=3", "dataset_dir=somewhere/else"])
    assert config["training settings"]["N_epochs"] == 3
    assert config["data paths"]["dataset_dir"] == "somewhere/else"
    assert parse_override("gamma=2") == ("preprocessing", "gamma", "2")


def test_short_override_of_a_key_in_two_sections_is_ambiguous() -> None:
    sections = [s for s, keys in SCHEMA.items() if "batch_size" in keys]
    assert len(sections) == 2
    with pytest.raises(UserError) as info:
        load_config(REPO / "configuration.txt", ["batch_size=8"])
    message = str(info.value)
    assert "batch_size" in message
    for section in sections:
        assert section in message


def test_later_override_wins_and_overrides_are_type_checked() -> None:
    config = load_config(REPO / "configuration.txt", ["N_epochs=3", "training_settings.N_epochs=5"])
    assert config["training settings"]["N_epochs"] == 5
    with pytest.raises(UserError, match="N_epochs = 'x'"):
        load_config(REPO / "configuration.txt", ["N_epochs=x"])
    # A bad value from --set is blamed on --set, one from the file on the file.
    with pytest.raises(UserError, match=r"^--set training_settings\.N_epochs: "):
        load_config(REPO / "configuration.txt", ["N_epochs=1.5"])


def test_intensity_jitter_needs_rescaled_images() -> None:
    with pytest.raises(UserError, match="intensity = 0.1 needs \\[preprocessing\\] rescale = true"):
        load_config(REPO / "configuration.txt", ["intensity=0.1", "rescale=false", "clahe=false"])
    assert load_config(REPO / "configuration.txt", ["intensity=0.1"])["augmentation"]["intensity"] == 0.1


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "a/b", "a\\b"])
def test_run_names_cannot_reach_outside_runs_dir(name: str) -> None:
    with pytest.raises(UserError, match="not valid: expected a run name"):
        load_config(REPO / "configuration.txt", [f"name={name}"])


@pytest.mark.parametrize("override, expected", [
    ("N_subimg=5", "Did you mean 'N_subimgs'?"),
    ("training_settings.N_subimg=5", "Did you mean 'N_subimgs'?"),
    ("data_attributes.PATCH_SIZE=48", "Did you mean 'patch_size'?"),  # keys are case-sensitive
    ("dataset=drive", "(Did you mean 'DRIVE'?)"),
    ("trainin_settings.N_subimgs=5", "Did you mean 'training settings'?"),
    ("model.N_subimgs=5", "'N_subimgs' belongs in [training settings]: --set training_settings.N_subimgs=5"),
    ("dataset=folder", "expected one of DRIVE|ISBI2012|STARE|CHASE_DB1|HRF|folders|sample|CamVid (Did you mean "
                       "'folders'?)"),
    ("N_subimgs", "section.key=value"),
    # Would be cut at the comment when the run's saved configuration is read back.
    ("prepared_dir=data/prep #2", "cannot hold a line break, ' #' or ' ;'"),
    ("name=a\nb", "cannot hold a line break"),
    ("data_paths.dataset_dir=;data", "cannot hold a line break, ' #' or ' ;'"),
])
def test_bad_override_is_a_user_error_with_a_suggestion(override: str, expected: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(REPO / "configuration.txt", [override])
    assert expected in str(info.value)


# --- round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_format_config_round_trip_gives_identical_typed_values(tmp_path: Path, path: Path) -> None:
    config = load_config(path, ["threshold=auto", "holdout_ids=3, 5,7", "learning_rate=3e-4",
                                "label_offset=-0.625, 0.25"])
    written = tmp_path / "written.txt"
    written.write_text(format_config(config), encoding="utf-8")
    again = load_config(written)
    assert again == config
    for section in config:
        for key, value in config[section].items():
            assert type(again[section][key]) is type(value), (section, key)
    assert again["data paths"]["holdout_ids"] == [3, 5, 7]
    assert again["testing settings"]["threshold"] == "auto"
    assert again["testing settings"]["label_offset"] == [-0.625, 0.25]


def test_formatted_config_has_a_comment_above_every_key() -> None:
    lines = format_config(load_config(REPO / "configuration.txt")).splitlines()
    for (section, key), index in _assigned_keys(lines).items():
        assert lines[index - 1] == f"# {SCHEMA[section][key][1]}"


# --- fuzzing --------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=24)
_INTERESTING = st.sampled_from([
    "", " ", "0", "-1", "1", "3", "2.5", "1e999", "nan", "-inf", "999999999999", "9" * 5000, "true", "auto",
    "[x]", "[model]", "= =", "#", "; x", "%(x)s", "0x10", "1_000", "１２", "a = b", " indented = 1",
])
_VALUES = st.one_of(_INTERESTING, _TEXT, st.integers().map(str), st.floats().map(str))
_ASSIGNMENTS = [i for i, line in enumerate(DEFAULT_LINES) if "=" in line and not line.startswith("#")]


@st.composite
def _edit(draw: st.DrawFn) -> list[str]:
    lines = list(DEFAULT_LINES)
    kind = draw(st.sampled_from(["value", "delete", "insert", "rename"]))
    if kind == "value":
        i = draw(st.sampled_from(_ASSIGNMENTS))
        lines[i] = lines[i].split("=", 1)[0] + "= " + draw(_VALUES)
    elif kind == "rename":
        i = draw(st.sampled_from(_ASSIGNMENTS))
        lines[i] = draw(st.one_of(_TEXT, st.sampled_from([k for keys in SCHEMA.values() for k in keys])))\
            + " =" + lines[i].split("=", 1)[1]
    elif kind == "delete":
        del lines[draw(st.integers(0, len(lines) - 1))]
    else:
        lines.insert(draw(st.integers(0, len(lines))), draw(_VALUES))
    return lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_edit())
def test_single_line_edits_either_load_or_raise_user_error(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "fuzzed.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        config = load_config(path)
    except UserError as exc:
        assert str(exc)
        return
    assert list(config) == list(SCHEMA)
    assert config["data attributes"]["patch_size"] % 2 ** config["model"]["depth"] == 0


def test_a_run_saved_before_a_key_existed_takes_it_from_the_current_configuration(tmp_path, capsys):
    from lib.config import load_run_config
    current = load_config(REPO / "configuration.txt")
    text = (REPO / "configuration.txt").read_text()
    old = "\n".join(line for line in text.splitlines() if not line.startswith("flips ="))
    old = old.replace("seed = 42", "seed = 7").replace("[model]", "[model]\nretired_key = 1")
    (tmp_path / "old.txt").write_text(old)
    loaded = load_run_config(tmp_path / "old.txt", current)
    assert loaded["augmentation"]["flips"] == current["augmentation"]["flips"]
    assert loaded["experiment"]["seed"] == 7  # saved values still win
    out = capsys.readouterr().out
    assert "augmentation.flips" in out and "model.retired_key" in out
    with pytest.raises(UserError, match="unknown key 'retired_key'"):
        load_config(tmp_path / "old.txt")  # a user's own file must be complete


def test_sections_taken_from_the_current_configuration_are_not_read_from_the_run(tmp_path, capsys):
    """predict.py uses the current [testing settings]: a run's older or missing ones raise no note."""
    from lib.config import load_run_config
    current = load_config(REPO / "configuration.txt", ["testing settings.window=512", "testing settings.stride=384"])
    text = (REPO / "configuration.txt").read_text()
    old = "\n".join(line for line in text.splitlines() if not line.startswith(("zoom =", "flips =")))
    (tmp_path / "old.txt").write_text(old.replace("window = 1024", "window = 128"))
    loaded = load_run_config(tmp_path / "old.txt", current, from_current=("testing settings",))
    assert loaded["testing settings"] == current["testing settings"]  # 512, not the run's 128
    out = capsys.readouterr().out
    assert "augmentation.flips" in out and "testing settings" not in out


def _reference() -> str:
    labels = {"configuration": "DRIVE", "configuration_gpu": "GPU", "configuration_isbi": "ISBI",
              "configuration_camvid": "CamVid", "configuration_sample": "sample"}
    files = {labels.get(path.stem, path.stem): path.name for path in CONFIG_FILES}
    return config_reference({labels.get(path.stem, path.stem): load_config(path) for path in CONFIG_FILES},
                            files) + "\n"


def test_the_key_reference_in_docs_is_up_to_date() -> None:
    assert (REPO / "docs" / "configuration.md").read_text(encoding="utf-8") == _reference(), (
        "docs/configuration.md is out of date: regenerate it with python tests/test_config.py")


if __name__ == "__main__":
    (REPO / "docs" / "configuration.md").write_text(_reference(), encoding="utf-8")
    print("wrote docs/configuration.md")

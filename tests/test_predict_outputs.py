"""predict.py's binary outputs on images it cannot fully score: no vessels, no label, unrescaled input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import predict


def _dark_is_vessel(image: np.ndarray) -> np.ndarray:
    """A fixed model: probability sigmoid(-4 x), so dark (negative) pixels are vessels."""
    return 1.0 / (1.0 + np.exp(4.0 * image))


def _sample(name: str, image: np.ndarray, label: np.ndarray | None) -> dict:
    return {"name": name, "image": image[..., None].astype("float32"), "label": label,
            "fov": np.ones(image.shape, bool)}


def _predict(samples: list[dict], out) -> list[str]:
    out.mkdir()
    return predict.predict_binary(_dark_is_vessel, samples, len(samples), 0.5, out, {"split": "test"}, "DRIVE", None)


def test_an_image_without_vessels_is_scored_with_undefined_scores_left_empty(tmp_path):
    rng = np.random.default_rng(0)
    # Standardized values (rescale = false): negative and above 1, which the panels must stretch, not refuse.
    vessels = rng.normal(0.0, 2.0, (32, 32))
    blank = np.abs(rng.normal(0.0, 2.0, (32, 32)))
    lines = _predict([_sample("with", vessels, vessels < 0), _sample("without", blank, np.zeros((32, 32), bool))],
                     tmp_path / "out")
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "out" / "per_image.csv"))}
    assert rows["without"]["auc_roc"] == "" and float(rows["with"]["auc_roc"]) == pytest.approx(1.0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["per_image"][1]["auc_roc"] is None and metrics["pooled"]["auc_roc"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "roc.png").is_file() and (tmp_path / "out" / "without_compare.png").is_file()
    assert any(line.startswith("pooled inside the FOV") for line in lines)


def test_no_vessel_in_any_image_gives_n_a_and_no_curves(tmp_path):
    blank = np.abs(np.random.default_rng(1).normal(0.0, 1.0, (32, 32)))
    lines = _predict([_sample("a", blank, np.zeros((32, 32), bool))], tmp_path / "out")
    assert "auc_roc n/a" in lines[0]
    assert not (tmp_path / "out" / "roc.png").exists()
    assert "no ROC / PR curves" in lines[-1]


def test_some_images_without_labels_are_counted_in_the_message(tmp_path):
    image = np.random.default_rng(2).normal(0.0, 1.0, (32, 32))
    lines = _predict([_sample("a", image, image < 0), _sample("b", image, None)], tmp_path / "out")
    assert lines == [predict.unscored(1, 2)] and lines[0].startswith("1 of 2 images have no label")
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert (tmp_path / "out" / "b_probability.png").is_file()


def test_overwrite_clears_the_earlier_outputs_and_keeps_other_files(tmp_path):
    for name in ("summary.txt", "metrics.json", "roc.png", "old_probability.png", "old_compare.png", "notes.txt",
                 "old_probability.png.bak"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    assert predict.clear_outputs(tmp_path) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "old_probability.png.bak", "sub"]

"""Watershed cells of a membrane probability map (ISBI 2012), and predict.py's use of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_script, set_args, write_tiff_stack


def membrane_grid(cells_per_side: int = 3, cell: int = 20, wall: int = 3) -> np.ndarray:
    """Boolean membrane map of a square grid of cells, walls `wall` pixels thick."""
    side = cells_per_side * (cell + wall) + wall
    membrane = np.zeros((side, side), bool)
    for k in range(cells_per_side + 1):
        start = k * (cell + wall)
        membrane[start:start + wall, :] = True
        membrane[:, start:start + wall] = True
    return membrane


def test_watershed_keeps_cells_apart_across_a_gap_in_the_membrane() -> None:
    from lib.cells import watershed_cells
    from lib.metrics import adapted_rand, cells_rand_error

    membrane = membrane_grid()
    prob = np.where(membrane, 0.9, 0.02).astype(np.float32)
    prob[10:13, 23:26] = 0.35  # a faint stretch of the wall between the first two cells
    interior = ~membrane
    # Thresholded at 0.5 the gap merges two cells, even with membrane pixels given to the nearest cell.
    assert adapted_rand(prob < 0.5, interior, fill=True) > 0.1
    cells = watershed_cells(prob, seed_threshold=0.05)
    assert cells.shape == prob.shape and cells.min() == 1 and cells.max() == 9
    assert cells_rand_error(cells, interior) == pytest.approx(0.0, abs=1e-9)
    # Each true cell lies inside one predicted cell, and the two beside the gap stay apart.
    assert len(np.unique(cells[3:23, 3:23])) == 1
    assert cells[10, 20] != cells[10, 30]


def test_closed_membranes_split_the_thresholded_interior_into_the_watershed_cells() -> None:
    from lib.cells import cell_borders, closed_membranes, watershed_cells
    from lib.metrics import adapted_rand
    from skimage.measure import label

    membrane = membrane_grid()
    prob = np.where(membrane, 0.9, 0.02).astype(np.float32)
    prob[10:13, 20:26] = 0.35  # a gap right through the wall between the first two cells
    interior = ~membrane
    assert label(prob < 0.5, connectivity=1).max() == 8  # the gap merges two of the nine cells
    cells = watershed_cells(prob, seed_threshold=0.05)
    closed = closed_membranes(prob, cells, membrane_positive=True)
    assert closed.dtype == prob.dtype and (closed >= prob).all()
    assert label(closed < 0.5, connectivity=1).max() == 9
    assert adapted_rand(closed < 0.5, interior) < adapted_rand(prob < 0.5, interior)
    # Lines one pixel wide: on the 4 walls of 3 px between the 9 cells, one column or row each.
    borders = cell_borders(cells)
    assert borders[12, :].sum() == 2 and borders[:, 12].sum() == 2
    # With the interior as the foreground the borders are certain background instead.
    assert (closed_membranes(1.0 - prob, cells, membrane_positive=False)[borders] == 0.0).all()


def test_watershed_drops_specks_and_returns_no_cells_without_seeds() -> None:
    from lib.cells import watershed_cells

    prob = np.full((40, 40), 0.9, np.float32)
    assert not watershed_cells(prob, 0.1).any()  # nothing below the seed threshold
    prob[5:7, 5:7] = 0.0      # 4 pixels: a speck, no cell
    prob[20:30, 20:30] = 0.0  # 100 pixels: one cell, grown over the whole map
    cells = watershed_cells(prob, 0.1)
    assert cells.max() == 1 and (cells == 1).all()
    with pytest.raises(ValueError, match="seed_threshold"):
        watershed_cells(prob, 0.0)
    with pytest.raises(ValueError, match="one H x W map"):
        watershed_cells(prob[None], 0.1)


def test_cell_colours_paint_cells_bright_and_their_borders_black() -> None:
    from lib.cells import cell_colours

    labels = np.zeros((6, 8), int)
    labels[:, 1:4], labels[:, 4:] = 1, 2
    rgb = cell_colours(labels)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[:, 0] == 0).all()                              # label 0
    assert (rgb[:, 3] == 0).all() and (rgb[:, 4] == 0).all()   # the border between cells 1 and 2
    assert rgb[2, 2].min() >= 64 and rgb[2, 6].min() >= 64 and (rgb[2, 2] != rgb[2, 6]).any()
    assert (rgb[2, 5] == rgb[3, 6]).all()


def test_predict_on_isbi_writes_cells_and_scores_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    membrane = membrane_grid(cells_per_side=3, cell=18, wall=3)[:64, :64]
    labels, images = [], []
    for _ in range(8):
        shifted = np.roll(membrane, tuple(rng.integers(0, 21, 2)), axis=(0, 1))
        labels.append(np.where(shifted, 0, 255).astype(np.uint8))  # ISBI: membrane black, interior white
        images.append(np.clip(np.where(shifted, 60, 190) + rng.normal(0, 20, shifted.shape), 0, 255).astype(np.uint8))
    root = tmp_path / "ISBI2012"
    root.mkdir()
    write_tiff_stack(images, root / "train-volume.tif")
    write_tiff_stack(labels, root / "train-labels.tif")
    write_tiff_stack(images[:2], root / "test-volume.tif")
    # The shipped ISBI profile (flips at three scales, watershed cells), shrunk to a tiny model.
    args = ["--config", "configuration_isbi.txt", *set_args([
        f"dataset_dir={root}", f"prepared_dir={tmp_path / 'prepared'}", f"runs_dir={tmp_path / 'runs'}",
        "holdout_ids=6,7", "patch_size=32", "N_subimgs=600", "depth=2", "base_filters=8", "N_epochs=2",
        "steps_per_epoch=20", "training_settings.batch_size=16", "window=64", "stride=64",
        "max_train_minutes=0", "mixed_precision=false", "watershed_seed=0.3"])]
    run_script("prepare_datasets.py", *args)
    run_script("train.py", *args)
    result = run_script("predict.py", *args, "--split", "val")
    out = tmp_path / "runs" / "isbi" / "predictions" / "val"
    assert "adapted_rand_error_watershed" in result.stdout
    assert "tta_flips all, tta_scales 0.8, 1.0, 1.2, mirror_margin 32" in result.stdout
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["per_image"]:
        assert 0.0 <= row["adapted_rand_error_watershed"] <= 1.0
    # Each slice of the stack gets its own files (train-volume.tif[6] -> train-volume_6_*.png).
    assert sorted(f.name for f in out.glob("*_cells.png")) == ["train-volume_6_cells.png", "train-volume_7_cells.png"]
    cells = np.asarray(Image.open(out / "train-volume_6_cells.png"))
    assert cells.shape == (64, 64, 3)
    # Off, the cells are neither scored nor drawn.
    off = tmp_path / "off"
    result = run_script("predict.py", *args, "--split", "val", "--set", "watershed_seed=0", "--output", str(off))
    assert "adapted_rand_error_watershed" not in result.stdout and not list(off.glob("*_cells.png"))
    # On (the profile's close_membranes), the cell borders were drawn into the membrane map: it only gained membrane.
    closed, opened = (np.asarray(Image.open(folder / "train-volume_6_binary.png")) > 0 for folder in (out, off))
    assert (closed >= opened).all()

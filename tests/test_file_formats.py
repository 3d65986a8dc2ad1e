"""Image and label files as painting and annotation tools write them: transparent PNGs, palette images,
JPEGs with an orientation tag, masks named with a suffix; and labels that cannot be used, each named."""
from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO))
from lib.errors import UserError  # noqa: E402
from lib.readers import (ClassSpec, Entry, LabelError, input_entries, key_by_image_name,  # noqa: E402
                         page_count, read_image, read_label, read_split, read_stack, resolve_ids, to_binary,
                         to_classes)

H, W = 40, 56


def _strokes(seed: int = 0) -> np.ndarray:
    """A binary map of a few lines, as a vessel or membrane label."""
    label = np.zeros((H, W), bool)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        row = rng.integers(4, H - 4)
        label[row: row + 2, :] = True
    label[:, rng.integers(4, W - 4)] = True
    return label


def test_a_transparent_label_is_read_from_its_alpha_channel(tmp_path: Path) -> None:
    label = _strokes()
    alpha = np.where(label, 255, 0).astype(np.uint8)
    for name, background in (("on_black.png", 0), ("on_white.png", 255)):
        # Black strokes; the transparent background is black or white: only alpha tells them apart.
        rgba = np.dstack([np.where(label, 0, background).astype(np.uint8)] * 3 + [alpha])
        Image.fromarray(rgba, "RGBA").save(tmp_path / name)
        np.testing.assert_array_equal(to_binary(read_label(tmp_path / name), name), label)
    Image.fromarray(np.dstack([np.zeros((H, W), np.uint8), alpha]), "LA").save(tmp_path / "gray_alpha.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "gray_alpha.png"), "la"), label)
    # A 16-bit black and white map (0 / 65535), as some tools export masks.
    Image.fromarray(np.where(label, 65535, 0).astype(np.uint16)).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "sixteen.png"), "16"), label)
    # Fully opaque: the gray levels are the label, as before.
    opaque = np.dstack([np.where(label, 255, 0).astype(np.uint8)] * 3 + [np.full((H, W), 255, np.uint8)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "opaque.png"), "opaque"), label)


def test_transparency_never_inverts_or_fills_a_label(tmp_path: Path) -> None:
    label = _strokes(2)
    # A palette PNG and a GIF whose white background is the transparent entry, black strokes opaque.
    for name in ("transparent.png", "transparent.gif"):
        image = _palette_image(label, [(255, 255, 255), (0, 0, 0)])
        image.info["transparency"] = 0
        image.save(tmp_path / name, transparency=0)
        np.testing.assert_array_equal(to_binary(read_label(tmp_path / name), name), label)
    # An opaque black and white mask with a transparent border: the colours are the label, the border
    # background (before, any transparent pixel made the alpha channel the label: nearly all foreground).
    gray = np.where(label, 255, 0).astype(np.uint8)
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, :4] = 0
    Image.fromarray(np.dstack([gray] * 3 + [alpha]), "RGBA").save(tmp_path / "border.png")
    expected = label.copy()
    expected[:, :4] = False
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "border.png"), "border"), expected)
    # Black strokes on white whose white is the transparent colour (PNG tRNS on a gray or RGB file).
    inverse = np.where(label, 0, 255).astype(np.uint8)
    Image.fromarray(inverse).save(tmp_path / "gray_trns.png", transparency=255)
    Image.fromarray(np.dstack([inverse] * 3)).save(tmp_path / "rgb_trns.png", transparency=(255, 255, 255))
    for name in ("gray_trns.png", "rgb_trns.png"):
        np.testing.assert_array_equal(to_binary(read_label(tmp_path / name), name), label)
    # An empty (all black) label with a transparent border stays empty: a background layer, not strokes.
    empty = np.zeros((H, W, 4), np.uint8)
    empty[..., 3] = 255
    empty[:2, :, 3] = 0
    Image.fromarray(empty, "RGBA").save(tmp_path / "empty.png")
    assert not to_binary(read_label(tmp_path / "empty.png"), "empty").any()
    # An alpha channel that is all zero (the unused fourth byte of 32-bit files) says nothing: the colours count.
    unused = np.dstack([np.where(label, 255, 0).astype(np.uint8)] * 3 + [np.zeros((H, W), np.uint8)])
    Image.fromarray(unused, "RGBA").save(tmp_path / "unused_alpha.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "unused_alpha.png"), "unused"), label)
    # Strokes painted with a soft brush: their transparency is not a two-level map, and the message says so.
    soft = np.where(label, 255, 0).astype(np.uint8)
    soft[label & (np.arange(W) % 2 == 0)] = 180
    Image.fromarray(np.dstack([np.zeros((H, W), np.uint8)] * 3 + [soft]), "RGBA").save(tmp_path / "soft.png")
    with pytest.raises(LabelError, match=r"transparency \(alpha channel\), which has the levels 0, 180, 255"):
        read_label(tmp_path / "soft.png")


def _palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette([value for colour in colours for value in colour])
    return image


def test_palette_labels_are_read_as_their_indices_unless_their_colours_are_gray(tmp_path: Path) -> None:
    label = _strokes(1)
    # VOC style: index 1 drawn dark red. Its gray level (38) is no label value; the index is.
    _palette_image(label, [(0, 0, 0), (128, 0, 0)]).save(tmp_path / "voc.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "voc.png"), "voc"), label)
    # Black and white at indices 0 and 7, with unused colours in the palette (as GIF writers leave them).
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (1, 2, 3), (4, 5, 6), (255, 255, 255)]
    _palette_image(np.where(label, 7, 0), colours).save(tmp_path / "gray.gif")
    np.testing.assert_array_equal(read_label(tmp_path / "gray.gif"), np.where(label, 255, 0))
    # Index 1 drawn pure red, and a palette with an unused transparent entry: still the indices.
    _palette_image(label, [(0, 0, 0), (255, 0, 0)]).save(tmp_path / "red.png")
    _palette_image(label, [(0, 0, 0), (255, 0, 0), (9, 9, 9)]).save(tmp_path / "unused_trns.png", transparency=2)
    for name in ("red.png", "unused_trns.png"):
        np.testing.assert_array_equal(to_binary(read_label(tmp_path / name), name), label)
    # Indices 0 and 1 drawn in gray 128: the gray levels are no binary map, the indices are.
    _palette_image(label, [(0, 0, 0), (128, 128, 128)]).save(tmp_path / "mid_gray.png")
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "mid_gray.png"), "mid"), label)
    # Several classes: indices without a configured palette, colours mapped with one.
    classes = np.zeros((H, W), np.uint8)
    classes[:, W // 3:] = 1
    classes[:, 2 * W // 3:] = 2
    _palette_image(classes, [(10, 200, 10), (200, 10, 10), (10, 10, 200)]).save(tmp_path / "classes.png")
    indexed = ClassSpec(3, ("a", "b", "c"))
    np.testing.assert_array_equal(to_classes(read_label(tmp_path / "classes.png", indexed), "c", indexed), classes)
    coloured = ClassSpec(3, ("a", "b", "c"), palette=((200, 10, 10), (10, 10, 200), (10, 200, 10)))
    np.testing.assert_array_equal(to_classes(read_label(tmp_path / "classes.png", coloured), "c", coloured),
                                  (classes + 2) % 3)
    # Gray colours are colours too when a palette is configured.
    _palette_image(classes, [(0, 0, 0), (128, 128, 128), (255, 255, 255)]).save(tmp_path / "gray_classes.png")
    grays = ClassSpec(3, ("a", "b", "c"), palette=((255, 255, 255), (0, 0, 0), (128, 128, 128)))
    np.testing.assert_array_equal(to_classes(read_label(tmp_path / "gray_classes.png", grays), "g", grays),
                                  (classes + 1) % 3)


def test_tiff_masks_as_tifffile_writes_them(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    label = _strokes(3)
    tifffile.imwrite(tmp_path / "float.tif", label.astype(np.float32))
    tifffile.imwrite(tmp_path / "uint8.tif", label.astype(np.uint8) * 255)
    for name in ("float.tif", "uint8.tif"):
        np.testing.assert_array_equal(to_binary(read_label(tmp_path / name), name), label)
    # White-is-zero files (tifffile's bool arrays, ImageJ's inverted LUT) are read as viewers show them,
    # the convention of every other file here; foreground shown black reads as background.
    tifffile.imwrite(tmp_path / "bool.tif", label)
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "bool.tif"), "bool"), ~label)


def test_tiffs_pillow_cannot_open_are_read_with_tifffile(tmp_path: Path) -> None:
    import tifffile  # installed with scikit-image, as the reader relies on

    ramp = np.tile(np.linspace(0.0, 1.0, W), (H, 1))
    # numpy's float64, as tifffile.imwrite and skimage.io.imsave write a float array by default.
    tifffile.imwrite(tmp_path / "f64.tif", ramp)
    np.testing.assert_allclose(read_image(tmp_path / "f64.tif"), ramp * 255, atol=1)
    # Float colour, interleaved or with its channels stored one after another.
    colour = np.dstack([ramp, ramp[:, ::-1], np.full_like(ramp, 0.5)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(colour, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("rgb.tif", "planar.tif"):
        image = read_image(tmp_path / name)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        np.testing.assert_allclose(image[..., 0], ramp * 255, atol=1)  # stretched over all three channels
        np.testing.assert_allclose(image[..., 1], ramp[:, ::-1] * 255, atol=1)
    # A float64 label of whole values is read as they are; soft values are refused as in any wide label.
    label = _strokes(3)
    tifffile.imwrite(tmp_path / "label.tif", label.astype(np.float64))
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "label.tif"), "label"), label)
    tifffile.imwrite(tmp_path / "soft.tif", np.where(label, 0.5, 0.0))
    with pytest.raises(LabelError, match="the values 0.0, 0.5, which are not whole numbers"):
        read_label(tmp_path / "soft.tif")
    # A float64 stack: refused where one image per file is read, its pages counted and read for predict.py --input.
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([ramp, ramp[::-1], ramp]), photometric="minisblack")
    with pytest.raises(UserError, match="stack.tif holds 3 pages"):
        read_image(tmp_path / "stack.tif")
    assert page_count(tmp_path / "stack.tif") == 3
    np.testing.assert_allclose(read_image(tmp_path / "stack.tif", page=1), ramp[::-1] * 255, atol=1)
    # So does the stack reader of ISBI 2012's volumes, images stretched and labels as they are.
    pages = read_stack(tmp_path / "stack.tif")
    assert len(pages) == 3 and all(page.dtype == np.uint8 for page in pages)
    np.testing.assert_allclose(pages[1], ramp[::-1] * 255, atol=1)
    tifffile.imwrite(tmp_path / "labels.tif", np.stack([label, ~label]).astype(np.float64), photometric="minisblack")
    np.testing.assert_array_equal(read_stack(tmp_path / "labels.tif", stretch=False)[1], ~label)
    # Gray with alpha is read as gray, as Pillow reads LA.
    tifffile.imwrite(tmp_path / "gray_alpha.tif", np.dstack([ramp, np.ones_like(ramp)]).astype(np.float32),
                     photometric="minisblack", planarconfig="contig", extrasamples=["unassalpha"])
    np.testing.assert_allclose(read_image(tmp_path / "gray_alpha.tif"), ramp * 255, atol=1)
    # A corrupt TIFF is still answered as one, without tifffile's own log lines.
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"not an image" * 4)
    with pytest.raises(UserError, match="broken.tif cannot be read as an image"):
        read_image(tmp_path / "broken.tif")


def test_a_palette_image_keeps_its_colours(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 40, 40)
    rgb[:, W // 2:] = (40, 40, 200)
    Image.fromarray(rgb).quantize(8).save(tmp_path / "colour.png")
    np.testing.assert_allclose(read_image(tmp_path / "colour.png"), rgb, atol=8)
    gray = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    Image.fromarray(gray).convert("P").save(tmp_path / "gray.gif")
    assert read_image(tmp_path / "gray.gif").shape == (H, W)


def test_wide_gray_images_are_stretched_to_8_bits_and_wide_labels_are_not(tmp_path: Path) -> None:
    # A 12-bit camera image in a 16-bit file with one hot pixel, as microscopes write them.
    twelve = np.tile(np.linspace(100, 4000, W), (H, 1)).astype(np.uint16)
    twelve[0, 0] = 65535
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    Image.fromarray(twelve).save(tmp_path / "twelve.tif")
    for name in ("twelve.png", "twelve.tif"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (H, W)
        row = image[1].astype(int)
        # The hot pixel is clipped, not taken as the top: the ramp spans the 8 bits.
        assert row[0] <= 1 and row[-1] >= 250 and (np.diff(row) >= 0).all()
        assert image[0, 0] == 255
    # Float images (0..1) and 32-bit integers are stretched too; 8-bit values in a wide file are kept.
    ramp = np.tile(np.linspace(0.0, 1.0, W, dtype=np.float32), (H, 1))
    Image.fromarray(ramp, "F").save(tmp_path / "float.tif")
    np.testing.assert_allclose(read_image(tmp_path / "float.tif"), ramp * 255, atol=1)
    Image.fromarray((ramp * 1000).astype(np.int32), "I").save(tmp_path / "int32.tif")
    np.testing.assert_allclose(read_image(tmp_path / "int32.tif"), ramp * 255, atol=1)
    Image.fromarray((ramp * 200).astype(np.uint16)).save(tmp_path / "small.png")
    np.testing.assert_array_equal(read_image(tmp_path / "small.png"), (ramp * 200).astype(np.uint8))
    bad = ramp.copy()
    bad[3, 3] = np.nan
    Image.fromarray(bad, "F").save(tmp_path / "nan.tif")
    with pytest.raises(UserError, match="nan.tif holds NaN"):
        read_image(tmp_path / "nan.tif")
    # A label's values are never stretched: class 300 does not fit in 8 bits and is refused.
    Image.fromarray(np.where(_strokes(), 300, 0).astype(np.uint16)).save(tmp_path / "label.png")
    with pytest.raises(LabelError, match="label.png: the file holds the values 0, 300, which are not whole"):
        read_label(tmp_path / "label.png")
    Image.fromarray(np.where(_strokes(), 0.5, 0).astype(np.float32), "F").save(tmp_path / "soft.tif")
    with pytest.raises(LabelError, match="the values 0.0, 0.5, which are not whole numbers"):
        read_label(tmp_path / "soft.tif")
    # 16-bit colour: Pillow reads its top 8 bits, which 12-bit data barely reach. Refused, not read as 16 levels.
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "rgb12.tif", np.dstack([ramp * 4095] * 3).astype(np.uint16), photometric="rgb")
    with pytest.raises(UserError, match="rgb12.tif holds 16-bit colour of which only the top 8 bits"):
        read_image(tmp_path / "rgb12.tif")
    tifffile.imwrite(tmp_path / "rgb16.tif", np.dstack([ramp * 65535] * 3).astype(np.uint16), photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "rgb16.tif")[..., 0], ramp * 255, atol=1.5)


def test_a_jpeg_stored_sideways_is_turned_as_its_orientation_tag_says(tmp_path: Path) -> None:
    stored = np.zeros((H, W), np.uint8)
    stored[:8, :8] = 255  # top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones write
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "phone.jpg")
    assert shown.shape == (W, H)
    assert shown[:8, -8:].mean() > 200 and shown[:8, :8].mean() < 50  # now top right, as viewers show it
    # A label drawn on the stored pixels (as most datasets' are) keeps the image as stored.
    root = tmp_path / "mine"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    (tmp_path / "phone.jpg").rename(root / "images" / "phone.jpg")
    Image.fromarray(np.where(stored > 128, 255, 0).astype(np.uint8)).save(root / "labels" / "phone.png")
    (sample,) = read_split("folders", root, "train")
    assert sample.image.shape == (H, W, 1) and sample.label[:8, :8].all()
    # So does predict.py --input with a mask drawn on the stored pixels.
    (entry,) = input_entries(root / "images" / "phone.jpg", root / "labels" / "phone.png")
    assert entry.load().image.shape == (H, W, 1)
    (entry,) = input_entries(root / "images" / "phone.jpg", None)
    assert entry.load().image.shape == (W, H, 1)


def _folders(root: Path, sizes: list[tuple[int, int]], label_name: str = "{stem}.png",
             label_ext: str = ".png") -> dict[str, np.ndarray]:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    labels = {}
    for index, (height, width) in enumerate(sizes):
        stem = f"case{index + 1:02d}"
        label = np.zeros((height, width), bool)
        label[height // 3: height // 3 + 3] = True
        label[:, width // 2: width // 2 + 3] = True
        image = np.where(label, 60, 180) + rng.integers(0, 20, (height, width))
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(label.astype(np.uint8) * 255).save(root / "labels" / label_name.format(stem=stem),
                                                             **({"quality": 75} if label_ext == ".jpg" else {}))
        labels[stem] = label
    return labels


def test_labels_named_as_their_image_plus_a_common_suffix_are_paired(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    labels = _folders(root, [(H, W)] * 3, "{stem}_mask.png")
    samples = read_split("folders", root, "train")
    assert [s.key for s in samples] == ["case01", "case02", "case03"]
    for sample in samples:
        np.testing.assert_array_equal(sample.label, labels[sample.key])
    # A label named otherwise: only its image and it are named, not every file.
    (root / "labels" / "case02_mask.png").rename(root / "labels" / "case02_label.png")
    with pytest.raises(UserError) as info:
        read_split("folders", root, "train")
    assert "no label for image(s) case02.png; label(s) case02_label.png have no image" in str(info.value)
    assert "one suffix common to all of them" in str(info.value)


def test_names_that_start_other_names_pair_with_their_own_files() -> None:
    images = ["case1", "case10", "a", "a_1", "b"]
    others = {name: Path(f"{name}.png") for name in ("case1_mask", "case10_mask", "a_mask", "a_1_mask", "b")}
    keyed = key_by_image_name(images, others)
    assert {name: path.stem for name, path in keyed.items()} == {
        "case1": "case1_mask", "case10": "case10_mask", "a": "a_mask", "a_1": "a_1_mask", "b": "b"}
    # Two suffixes as common as each other: nothing is guessed.
    assert key_by_image_name(["a", "b"], {"a_x": Path("a_x.png"), "b_y": Path("b_y.png")}).keys() == {"a_x", "b_y"}


def test_images_named_with_a_suffix_or_in_another_letter_case_pair_with_their_labels(tmp_path: Path) -> None:
    # nnU-Net's names: the image carries the channel suffix (case_001_0000.png), the label none.
    root = tmp_path / "nnunet"
    labels = _folders(root, [(H, W)] * 3)
    for path in (root / "images").iterdir():
        path.rename(path.with_name(f"{path.stem}_0000.png"))
    samples = read_split("folders", root, "train")
    assert [s.key for s in samples] == ["case01_0000", "case02_0000", "case03_0000"]
    for sample in samples:
        np.testing.assert_array_equal(sample.label, labels[sample.key[:-5]])
    # Letter case differs (a camera's Case01.PNG, a tool's lower-case label): paired, with a suffix too.
    root = tmp_path / "cases"
    labels = _folders(root, [(H, W)] * 2, "{stem}_Mask.png")
    for path in (root / "images").iterdir():
        path.rename(path.with_name(path.stem.upper() + ".PNG"))
    samples = read_split("folders", root, "train")
    assert [s.key for s in samples] == ["CASE01", "CASE02"]
    for sample in samples:
        np.testing.assert_array_equal(sample.label, labels[sample.key.lower()])
    # Two files that differ only by case pair with no image, and are named; the others still pair.
    keyed = key_by_image_name(["a", "b", "c"], {"A": Path("A.png"), "a": Path("a.png"), "B_x": Path("B_x.png"),
                                                "C_x": Path("C_x.png"), "c_X": Path("c_X.png")})
    assert {name: path.stem for name, path in keyed.items()} == {"a": "a", "b": "B_x", "A": "A", "C_x": "C_x",
                                                                 "c_X": "c_X"}
    # A name written decomposed (macOS) pairs with the same name written composed.
    composed, decomposed = unicodedata.normalize("NFC", "Über0"), unicodedata.normalize("NFD", "Über0")
    assert composed != decomposed
    keyed = key_by_image_name([composed, "x"], {decomposed: Path(f"{decomposed}.png"), "x_mask": Path("x_mask.png")})
    assert {name: path.stem for name, path in keyed.items()} == {composed: decomposed, "x": "x_mask"}
    # So do ids given by name: holdout_ids typed composed for a file named decomposed.
    entries = [Entry(f"{decomposed}3.png", 1, f"{decomposed}3", lambda: None), Entry("x4.png", 2, "x4", lambda: None)]
    assert resolve_ids([f"{composed}3"], entries, "holdout_ids", "training") == {1}


def test_ids_that_are_also_other_images_names_are_refused() -> None:
    # Folder ids count the files when one name is not a number: id 2 is then 5.png, not 2.png.
    names = ["2", "5", "7", "10", "30", "extra"]
    entries = [Entry(f"{name}.png", index, name, lambda: None) for index, name in enumerate(names, 1)]
    with pytest.raises(UserError, match=r"2 is the id of 5\.png but also the name of 2\.png.*holdout_ids = 2\.png"):
        resolve_ids([2], entries, "holdout_ids", "training")
    # Names pick one image each; a number that is no id but a name picks that file; an unambiguous id stays an id.
    assert resolve_ids(["2.png", "5"], entries, "holdout_ids", "training") == {1, 2}
    assert resolve_ids([6], entries, "holdout_ids", "training") == {6}
    # A number that is no id here but a name (perhaps a test image's id) is refused the same way.
    with pytest.raises(UserError, match=r"30 is the name of 30\.png, whose id is 5.*holdout_ids = 30\.png"):
        resolve_ids([30], entries, "holdout_ids", "training")
    # Numeric names are the ids themselves: 07 is the image 7, with no ambiguity.
    numeric = [Entry(f"{n}.png", int(n), n, lambda: None) for n in ("02", "07")]
    assert resolve_ids([7, "02"], numeric, "holdout_ids", "training") == {2, 7}


def test_predict_pairs_input_images_with_masks_named_with_a_suffix(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    names = ("a", "a_1", "case1", "case10")
    for index, name in enumerate(names):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "in" / f"{name}.png")
        mask = np.zeros((H, W), np.uint8)
        mask[: index + 1] = 255  # each mask its own number of rows, to tell which one an image got
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}_mask.png")
    rows = [entry.load().fov.all(axis=1).sum() for entry in input_entries(tmp_path / "in", tmp_path / "masks")]
    assert rows == [1, 2, 3, 4]
    # One image: its own mask among many, never another image's.
    (tmp_path / "masks" / "case100_mask.png").write_bytes((tmp_path / "masks" / "case1_mask.png").read_bytes())
    (entry,) = input_entries(tmp_path / "in" / "case1.png", tmp_path / "masks")
    assert entry.load().fov.all(axis=1).sum() == 3
    (tmp_path / "masks" / "case1_mask.png").unlink()
    with pytest.raises(UserError, match="no FOV mask for case1.png in"):
        input_entries(tmp_path / "in" / "case1.png", tmp_path / "masks")
    (tmp_path / "masks" / "a_mask.png").unlink()
    with pytest.raises(UserError, match="no FOV mask for a.png in"):
        input_entries(tmp_path / "in" / "a.png", tmp_path / "masks")


def test_a_resized_label_is_reported_as_a_size_mismatch_not_as_its_values(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _folders(root, [(H, W)] * 2)
    label = Image.open(root / "labels" / "case02.png")
    label.resize((W + 2, H), Image.BILINEAR).save(root / "labels" / "case02.png")  # smooth edges: odd values
    with pytest.raises(UserError, match=r"size mismatch: .*case02\.png is 56x40 \(WxH\) but .*case02\.png is 58x40"):
        read_split("folders", root, "train")
    # Swapped sides: turned by hand, or turned by an orientation tag as photos carry.
    Image.fromarray(np.zeros((W, H), np.uint8)).save(root / "labels" / "case02.png")
    with pytest.raises(UserError, match=r"sizes are swapped: one of the two is turned by 90 degrees \(neither has"):
        read_split("folders", root, "train")
    tagged = Image.fromarray(np.zeros((H, W), np.uint8))
    exif = tagged.getexif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    tagged.save(root / "labels" / "case02.png", exif=exif)
    with pytest.raises(UserError, match="sizes are swapped: files with an EXIF orientation tag"):
        read_split("folders", root, "train")


def test_a_label_of_several_frames_is_refused_but_a_tiff_thumbnail_page_is_not(tmp_path: Path) -> None:
    label = _strokes(4).astype(np.uint8) * 255
    Image.fromarray(label).save(tmp_path / "two.gif", save_all=True, append_images=[Image.fromarray(255 - label)])
    with pytest.raises(LabelError, match="two.gif: the file holds 2 pages"):
        read_label(tmp_path / "two.gif")
    thumbnail = Image.fromarray(label[::4, ::4].copy())
    Image.fromarray(label).save(tmp_path / "thumb.tif", save_all=True, append_images=[thumbnail])
    np.testing.assert_array_equal(to_binary(read_label(tmp_path / "thumb.tif"), "thumb"), label > 0)
    # Images too: a stack in a dataset is refused (only its first page would be read), a thumbnail page is
    # not a page, and predict.py --input takes every page of a stack.
    root = tmp_path / "mine"
    _folders(root, [(H, W)])
    image = Image.open(root / "images" / "case01.png")
    image.save(root / "images" / "case01.tif", save_all=True, append_images=[image.copy(), image.copy()])
    (root / "images" / "case01.png").unlink()
    with pytest.raises(UserError, match="case01.tif holds 3 pages"):
        read_split("folders", root, "train")
    assert [entry.key for entry in input_entries(root / "images", None)] == ["case01_0", "case01_1", "case01_2"]
    image.save(root / "images" / "case01.tif", save_all=True, append_images=[image.resize((W // 4, H // 4))])
    (sample,) = read_split("folders", root, "train")
    assert sample.image.shape == (H, W, 1)
    assert [(entry.name, entry.key) for entry in input_entries(root / "images", None)] == [("case01.tif", "case01")]


def test_a_jpeg_label_is_refused_with_the_reason() -> None:
    blurred = np.where(_strokes(), 250, 3).astype(np.uint8)
    blurred[0, :4] = (0, 7, 128, 255)
    with pytest.raises(LabelError) as info:
        to_binary(blurred, "labels/case01.jpg")
    assert "case01.jpg: the label has values 0, 3, 7, 128, 250, 255" in str(info.value)
    assert "JPEG compression" in str(info.value) and "PNG" in str(info.value)


def _prepare(root: Path, tmp_path: Path, monkeypatch) -> int:
    import prepare_datasets

    monkeypatch.setattr(sys, "argv", [
        "prepare_datasets.py", "--config", str(REPO / "configuration_sample.txt"), "--set", "dataset=folders",
        "--set", f"dataset_dir={root}", "--set", f"prepared_dir={tmp_path / 'prepared'}", "--set", "holdout_ids=",
        "--set", "test_fraction=0", "--set", "N_subimgs=40", "--set", "patch_size=16", "--set", "clahe=false",
    ])
    monkeypatch.chdir(tmp_path)
    return prepare_datasets.main()


def test_prepare_lists_every_unusable_label_at_once_with_each_fix(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "mine"
    _folders(root, [(H, W)] * 4, "{stem}.jpg", ".jpg")
    (root / "labels" / "case04.jpg").unlink()
    Image.fromarray(np.full((H, W), 128, np.uint8)).save(root / "labels" / "case04.png")
    with pytest.raises(UserError) as info:
        _prepare(root, tmp_path, monkeypatch)
    message = str(info.value)
    assert message.startswith("4 training label or mask file(s) cannot be used")
    assert all(f"case0{n}.jpg: the label has values" in message for n in (1, 2, 3))
    assert "case04.png: the label has values 128" in message
    assert "JPEG compression" in message and "re-export it as a two-level image" in message


def test_prepare_refuses_training_labels_without_foreground_or_all_foreground(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "mine"
    _folders(root, [(H, W)] * 2)
    for value, expected in ((0, "no training label"), (255, "every pixel inside the field of view is foreground")):
        for stem in ("case01", "case02"):
            Image.fromarray(np.full((H, W), value, np.uint8)).save(root / "labels" / f"{stem}.png")
        with pytest.raises(UserError, match=expected):
            _prepare(root, tmp_path, monkeypatch)


def test_prepare_says_when_labels_look_inverted(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "mine"
    labels = _folders(root, [(H, W)] * 2)
    for stem, label in labels.items():  # black strokes on white: the background reads as foreground
        Image.fromarray(np.where(label, 0, 255).astype(np.uint8)).save(root / "labels" / f"{stem}.png")
    assert _prepare(root, tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "(over half: labels that draw the structure dark on a light background are inverted" in out


def test_prepare_reads_transparent_labels_and_names_the_image_sizes(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "mine"
    labels = _folders(root, [(H, W), (H + 8, W - 8), (H, W)])
    for stem, label in labels.items():  # strokes in the alpha channel only, on transparent black
        rgba = np.dstack([np.zeros(label.shape, np.uint8)] * 3 + [label.astype(np.uint8) * 255])
        Image.fromarray(rgba, "RGBA").save(root / "labels" / f"{stem}.png")
    assert _prepare(root, tmp_path, monkeypatch) == 0
    assert "train:   3 images, 2 sizes from 56x40x1 to 48x48x1" in capsys.readouterr().out
    with h5py.File(tmp_path / "prepared" / "dataset.h5", "r") as h5:
        stored = {name.decode(): h5["train/labels"][f"{index:05d}"][()]
                  for index, name in enumerate(h5["train/names"][()])}
    for stem, label in labels.items():
        np.testing.assert_array_equal(stored[f"{stem}.png"], label)


def test_input_folder_names_the_subfolders_it_does_not_read(tmp_path, capsys):
    (tmp_path / "in" / "scans").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "scans" / "a.png")
    with pytest.raises(UserError, match=r"no image files .* in .*in; its subfolders scans/ \(1 image\) are not read"):
        input_entries(tmp_path / "in", None)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in" / "b.png")
    assert [entry.name for entry in input_entries(tmp_path / "in", None)] == ["b.png"]
    assert "not those in its subfolders scans/ (1 image)" in capsys.readouterr().out
    # A mask folder with a subfolder of older masks is read as it is: only its own files are masks.
    (tmp_path / "masks" / "old").mkdir(parents=True)
    for folder in (tmp_path / "masks", tmp_path / "masks" / "old"):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "b.png")
    (entry,) = input_entries(tmp_path / "in", tmp_path / "masks")
    assert entry.load().fov.all()


def test_labels_that_look_like_class_maps_in_a_binary_task_point_at_the_multi_class_settings(tmp_path):
    indices = np.zeros((8, 8), np.uint8)
    indices[:2], indices[2:4], indices[4:5] = 1, 2, 255  # classes 1 and 2, a void border
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[:4] = (128, 0, 0)
    colours[4:6] = (0, 128, 0)
    resampled = (np.linspace(0, 255, 64).reshape(8, 8)).astype(np.uint8)  # many levels: no class map
    void_only = np.zeros((8, 8), np.uint8)  # VOC style: one class, a void 255 border around it
    void_only[2:6, 2:6], void_only[1, 1:7] = 1, 255
    stray = np.zeros((20, 20), np.uint8)  # a 0/255 map with two pixels of 7: not a class map
    stray[:6], stray[10, 2], stray[12, 4] = 255, 7, 7
    wide_void = np.zeros((20, 20), np.uint8)  # thin vessels (1) inside a wider void band (255)
    wide_void[:1], wide_void[1:6] = 1, 255
    files = {"indices.png": indices, "colours.png": colours, "resampled.png": resampled, "void.png": void_only,
             "stray.png": stray, "wide_void.png": wide_void}
    hints, problems = {}, {}
    for name, array in files.items():
        Image.fromarray(array).save(tmp_path / name)
        with pytest.raises(LabelError) as info:
            to_binary(read_label(tmp_path / name), tmp_path / name)
        hints[name], problems[name] = info.value.fix, info.value.problem
    assert "set [model] n_classes (how many), [training settings] loss = cce" in hints["indices.png"]
    assert "ignore_index for a void value such as 255" in hints["void.png"]
    assert "colour-coded class maps" in hints["colours.png"] and "palette" in hints["colours.png"]
    assert "n_classes" not in hints["resampled.png"] and "n_classes" not in hints["stray.png"]
    assert problems["stray.png"] == "the label has values 0, 7, 255 (7: 2 pixels, the first at row 10, column 2)"
    assert "ignore_index for a void value such as 255" in hints["wide_void.png"]
    assert problems["indices.png"] == "the label has values 0, 1, 2, 255"  # a class map: no pixels called stray


def test_input_images_too_long_named_for_their_outputs_are_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("i" * 225, "j" * 226):  # 225 is the longest stem whose outputs fit in a 255-byte name
        Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "in" / f"{name}.png")
    with pytest.raises(UserError, match=r"image names too long for their output files: j{226}\.png\. .*at most 225"):
        input_entries(tmp_path / "in", None)
    (entry,) = input_entries(tmp_path / "in" / f"{'i' * 225}.png", None)
    assert len(f".{entry.key}_probability.abcdefgh.tmp.png") == 255

"""Dataset readers: original release layouts in, lists of (image, label, FOV) samples out.

Each reader first lists and pairs a dataset's files (cheap, so naming errors come at once) as
Entry objects, which read their files only when loaded: prepare_datasets.py holds one image at
a time, whatever the size of the dataset.
"""
from __future__ import annotations

import collections
import functools
import gzip
import io
import logging
import re
import unicodedata
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from lib.config import NAME_MAX
from lib.errors import UserError
from lib.fov import derive_fov
from lib.progress import listed, plural

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".ppm", ".pgm", ".bmp")
# Image formats a user may well have that are not read: named as such, with the fix, when found in a folder.
UNREAD_IMAGE_EXTENSIONS = {".webp", ".heic", ".heif", ".jp2", ".j2k", ".dcm", ".nii", ".svs", ".avif"}
_IGNORED_FILES = {"Thumbs.db", "desktop.ini"}
# The downloaded archives are often unpacked beside themselves (stare-images.tar, CHASEDB1.zip): not data.
_ARCHIVES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def _skipped(path: Path) -> bool:
    """Whether a dataset folder's entry is left alone: hidden, system files, archives, subfolders."""
    return (path.name.startswith(".") or path.name in _IGNORED_FILES or path.name.lower().endswith(_ARCHIVES)
            or path.is_dir())

# Datasets whose release has no train/test split: the configuration chooses one (test_ids or
# test_fraction). 'folders' has a fixed split only when it has a test/ folder.
CONFIGURED_SPLIT = ("STARE", "HRF", "folders")
DATASETS = ("DRIVE", "ISBI2012", "sample", "STARE", "CHASE_DB1", "HRF", "folders", "CamVid")
# Readers that take multi-class labels (class-index or colour maps); the others are binary tasks.
MULTICLASS_DATASETS = ("CamVid", "folders")
# Releases without FOV masks: the FOV is derived from the image (lib/fov.py).
DERIVED_FOV = ("STARE", "CHASE_DB1")


@dataclass
class Sample:
    """One image with its label and field-of-view mask, as read from disk."""

    name: str
    id: int
    image: np.ndarray          # uint8, H x W x C
    label: np.ndarray | None   # H x W: bool (binary), uint8 class indices (multi-class); None: no labels
    fov: np.ndarray            # bool, H x W (all True where the dataset has no FOV masks)
    key: str = ""              # natural name that test_ids/holdout_ids may use ('01L', '05_dr'); '' = id
    # Turned by its orientation tag where the label's size cannot tell whether it was drawn on that view
    # (a square image, or a tag that turns by 180 degrees or mirrors): prepare names these.
    turned_unconfirmed: bool = False


@dataclass(frozen=True)
class Entry:
    """One sample's files, listed and paired but not read yet; load() reads them."""

    name: str
    id: int
    key: str
    load: Callable[[], Sample] = field(compare=False, repr=False)


def read_image(path: Path, turn: bool = True, page: int | None = None) -> np.ndarray:
    """Read an image file (or a gzipped one, like STARE's .ppm.gz) into uint8 H x W (x 3); turned as its EXIF
    orientation tag says unless turn is False; page: which page of a stack (TIFF pages, GIF frames), which a
    file of several pages needs (see page_count)."""
    return _read(path, _to_uint8, turn, page, _several_pages)


def read_label(path: Path, classes: ClassSpec | None = None, page: int | None = None) -> np.ndarray:
    """Read a label or FOV mask file (classes: None for binary maps) into its uint8 values, H x W (x 3); page:
    which page of a stack, which a file of several pages needs (see page_count).

    Binary maps as painting and annotation tools write them: with transparent pixels see _binary_with_alpha;
    a palette (P-mode) file gives its gray levels when they are 0/255 or 0/1, else its indices (VOC style);
    16-bit 0/65535 gives 0/255. Several classes: a palette file gives its colours when [data attributes]
    palette is set (they are mapped to classes), else its indices.
    """
    return _read(path, functools.partial(_label_values, classes=classes), page=page, several=_several_label_pages)


def page_count(path: Path) -> int:
    """How many pages an image file holds: its first frame and the frames after it of the same size (a TIFF
    stack's pages, a GIF's frames; not a TIFF's thumbnail page or the preview of a phone's JPEG)."""
    return _read(path, lambda img, _: _page_count(img), turn=False, page=0)


def _page_count(img: Image.Image) -> int:
    if "pages" in img.info and not hasattr(img, "n_frames"):  # a TIFF read with tifffile
        return int(img.info["pages"])
    total = getattr(img, "n_frames", 1)
    if total == 1:
        return 1
    current = img.tell()
    img.seek(0)
    size, count = img.size, 1
    while count < total:
        img.seek(count)
        if img.size != size:
            break
        count += 1
    img.seek(current)
    return count


def _several_pages(path: Path, pages: int) -> UserError:
    return UserError(f"{path} holds {pages} pages (a stack): this dataset reads one image per file. Save each "
                     "page as a file of its own (predict.py --input segments every page of a stack).")


def _several_label_pages(path: Path, pages: int) -> UserError:
    return LabelError(path, f"the file holds {pages} pages (frames)", "A label or mask is one image: save each "
                      "image's label in a file of its own.")


def _read(path: Path, convert: Callable[[Image.Image, Path], Any], turn: bool = True, page: int | None = None,
          several: Callable[[Path, int], UserError] = _several_pages) -> Any:
    """Open an image file (gzipped or not) at a page, turned as its EXIF orientation says (with turn), and
    convert it; a file of several pages needs a page (else several(path, pages) is raised)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty (zero-byte) file. Copy it again from the original "
                        "dataset, or remove it (together with its label, if it has one).")
    try:
        source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix.lower() == ".gz" else path
        with Image.open(source) as img:
            if page is None and getattr(img, "n_frames", 1) > 1:
                pages = _page_count(img)
                if pages > 1:  # only the first would be read, without a word
                    raise several(path, pages)
            img.seek(page or 0)
            colour16 = img.mode in ("RGB", "RGBA") and any(";16" in str(tile[3]) for tile in img.tile)
            img.load()
            if colour16 and np.asarray(img).max() < 64:
                # Pillow keeps the top 8 of 16 bits per colour: 12-bit camera data would keep 16 levels.
                raise UserError(f"{path} holds 16-bit colour of which only the top 8 bits can be read, leaving "
                                f"{int(np.asarray(img).max()) + 1} levels. Convert it to 8-bit colour first (e.g. "
                                "divided by 16 for 12-bit data), the same way for all images, or to 16-bit gray.")
            if turn:
                # Phone and camera JPEGs are often stored sideways with an orientation tag that viewers
                # apply: labels are drawn on the turned image. In place: no copy of an untagged image.
                ImageOps.exif_transpose(img, in_place=True)
            return convert(img, path)
    except PermissionError:
        raise UserError(f"{path} cannot be read: no permission. Fix its permissions (e.g. chmod a+r), "
                        "then run the same command again.") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path} is too large to read whole ({exc}). Cut it into tiles, or shrink it, "
                        "before using it.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        tiff = _tiff_pillow_cannot_read(path, page, several) if path.suffix.lower() in (".tif", ".tiff") else None
        if tiff is not None:
            return convert(tiff, path)
        raise UserError(f"{path} cannot be read as an image ({exc}). The file is corrupt, not an image, or in "
                        "a format neither Pillow nor tifffile can read: copy it again from the original "
                        "dataset, or save it as 8-bit PNG or TIFF.") from None


def _tiff_pillow_cannot_read(path: Path, page: int | None,
                             several: Callable[[Path, int], UserError]) -> Image.Image | None:
    """A TIFF page Pillow cannot open (64-bit floats, float colour: what numpy and scikit-image save by default)
    read with tifffile, as a Pillow image: float32 gray ('F') or 8-bit RGB; None when tifffile cannot read it."""
    import tifffile  # installed with scikit-image

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # a corrupt file is answered by the UserError, not by tifffile's log lines
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if p.shape == tif.pages[0].shape]
            if page is None and len(pages) > 1:
                raise several(path, len(pages))
            chosen = pages[page or 0]
            pixels = int(np.prod(chosen.shape[:2] if chosen.planarconfig != 2 else chosen.shape[-2:]))
            if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:  # Pillow's own limit
                raise UserError(f"{path} is too large to read whole ({pixels} pixels). Cut it into tiles, or "
                                "shrink it, before using it.")
            values = chosen.asarray()
            if values.ndim == 3 and chosen.planarconfig == 2:  # channels stored one after another
                values = np.moveaxis(values, 0, -1)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError):
        return None
    except MemoryError:
        raise UserError(f"{path} is too large to read whole into memory. Cut it into tiles, or shrink it, before "
                        "using it.") from None
    finally:
        logger.setLevel(level)
    if values.ndim == 3 and values.shape[-1] in (1, 2):  # gray, or gray and alpha (read as gray, as Pillow's LA)
        values = values[..., 0]
    if values.ndim == 2:
        img = Image.fromarray(values.astype(np.float32), mode="F")
    elif values.ndim == 3 and values.shape[-1] in (3, 4):
        colour = values[..., :3]
        # Whole numbers 0..255 are 8-bit colour stored wide; anything else is stretched, as wide gray is.
        rgb = colour.astype(np.uint8) if _whole_bytes(colour) else _stretch_to_uint8(colour, path)
        img = Image.fromarray(rgb, mode="RGB")
    else:
        return None
    img.info["pages"] = len(pages)  # page_count: a Pillow image made here has one frame
    return img


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_WIDE = _SIXTEEN_BIT + ("F",)  # gray modes wider than 8 bits
# 16-bit, 32-bit and float images are stretched per image to 8 bits between these percentiles.
STRETCH_PERCENTILES = (0.01, 99.99)


def _label_values(img: Image.Image, path: Path, classes: ClassSpec | None) -> np.ndarray:
    indexed = img.mode in ("P", "PA")
    if classes is not None:
        if indexed:  # colours mapped through the configured palette, else the indices are the classes
            return np.asarray(img.convert("RGB")) if classes.palette else _palette_indices(img)
        return _to_uint8(img, path, stretch=False)
    # A transparent palette entry or colour (GIF, PNG tRNS) is an alpha channel too.
    with_alpha = img.convert("RGBA") if "transparency" in img.info and img.mode in ("P", "L", "RGB", "1") else img
    if "A" in with_alpha.getbands():
        alpha = np.asarray(with_alpha.getchannel("A"))
        # All transparent (e.g. the unused fourth byte of a 32-bit BMP) says nothing: read the colours.
        if alpha.min() < 255 and alpha.max() > 0:
            return _binary_with_alpha(with_alpha, path)
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img)
        if set(np.unique(values).tolist()) <= {0, 65535}:
            return np.where(values > 0, 255, 0).astype(np.uint8)  # a 16-bit black and white map
    if indexed:
        # Gray levels when they form a binary map (a black and white palette), else the indices (VOC style).
        gray = _to_uint8(img, path, stretch=False)
        indices = _palette_indices(img)
        return gray if (gray.ndim == 2 and _is_binary(gray)) or not _is_binary(indices) else indices
    return _to_uint8(img, path, stretch=False)


def _palette_indices(img: Image.Image) -> np.ndarray:
    return np.asarray(img.getchannel("P") if img.mode == "PA" else img).copy()


def _is_binary(values: np.ndarray) -> bool:
    present = set(np.unique(values).tolist())
    return present <= {0, 255} or present <= {0, 1}


def _binary_with_alpha(img: Image.Image, path: Path) -> np.ndarray:
    """The 0/255 map of a binary label or mask with transparent pixels.

    Strokes of one colour on a transparent layer (how painting tools keep a mask) are its alpha channel:
    opaque is foreground, whatever colour the transparent pixels hide. When the opaque pixels themselves
    hold a black and white map, or cover most of the file, that map is the label, and transparent pixels
    are background.
    """
    alpha = np.asarray(img.getchannel("A"))
    gray = np.asarray(img.convert("L"))
    opaque = alpha == 255
    levels = np.unique(gray[opaque])
    # Opaque over most of the file is a background layer, not strokes: its colours are the map.
    if len(levels) > 1 or opaque.mean() > 0.5:
        if not _is_binary(levels):
            raise LabelError(path, f"the file's opaque pixels have the gray levels {listed(levels.tolist(), 10)}",
                             "A binary map must be gray with only the values 0/255 or only 0/1: export it "
                             "without transparency as a two-level image.")
        return np.where(opaque, gray, 0).astype(np.uint8)
    if not _is_binary(alpha):
        raise LabelError(path, "the file's map is its transparency (alpha channel), which has the levels "
                         f"{listed(np.unique(alpha).tolist(), 10)}",
                         "Opaque pixels are foreground and transparent ones background: paint with a hard "
                         "brush at full opacity, or export the label without transparency as 0/255 gray.")
    return alpha.copy()


def _to_uint8(img: Image.Image, path: Path, stretch: bool = True) -> np.ndarray:
    if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
        # A palette image is gray only when its palette is: colour GIFs and 8-bit PNGs stay colour.
        colour = img.mode in ("RGBA", "CMYK", "YCbCr", "PA") or (img.mode == "P" and not _gray_palette(img))
        img = img.convert("RGB" if colour else "L")
    if img.mode in _WIDE:
        values = np.asarray(img)
        if _whole_bytes(values):
            return values.astype(np.uint8)
        if not stretch:
            raise LabelError(path, f"the file holds the values {listed(np.unique(values).tolist(), 6)}, which "
                             "are not whole numbers from 0 to 255", "Save it as 8-bit gray: 0/255 or 0/1, or "
                             "class indices below 256.")
        return _stretch_to_uint8(values, path)
    if img.mode not in ("L", "RGB"):
        raise UserError(f"{path} has image mode {img.mode}, which is not supported; save it as 8-bit "
                        "gray or RGB.")
    return np.asarray(img, dtype=np.uint8).copy()


def _whole_bytes(values: np.ndarray) -> bool:
    """Whether every value is a whole number from 0 to 255 (8-bit data stored in a wider type)."""
    return bool(values.min() >= 0 and values.max() <= 255 and np.array_equal(values, np.round(values)))


def _stretch_to_uint8(values: np.ndarray, path: Path | str) -> np.ndarray:
    """A 16-bit, 32-bit or float gray image as uint8: its 0.01st..99.99th percentile range stretched to 0..255."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{path} holds NaN or infinite values; replace them (e.g. with 0) before using it.")
    # Percentiles, not the extremes: one hot pixel of a 12-bit camera would leave the rest a few levels.
    # Rounded inwards, so that even a small image's single outlier is left out.
    low = np.percentile(values, STRETCH_PERCENTILES[0], method="higher")
    high = np.percentile(values, STRETCH_PERCENTILES[1], method="lower")
    if high <= low:
        low, high = values.min(), values.max()
    scaled = (values - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _gray_palette(img: Image.Image) -> bool:
    """Whether every palette colour the image uses is a gray (GIF palettes often list unused colours too)."""
    palette = np.asarray(img.getpalette() or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
    indices = np.unique(_palette_indices(img))
    used = palette[indices[indices < len(palette)]]
    return bool((used == used[:, :1]).all())


def read_stack(path: Path, stretch: bool = True) -> list[np.ndarray]:
    """Read every page of a multi-page TIFF into a list of uint8 arrays (stretch: False for labels)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found.")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is an empty (zero-byte) file. Copy it again from the original dataset.")
    try:
        with Image.open(path) as img:
            return [_to_uint8(page.copy(), path, stretch) for page in ImageSequence.Iterator(img)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if _tiff_pillow_cannot_read(path, 0, _several_pages) is not None:  # float64 stacks, as numpy writes them
            convert = functools.partial(_to_uint8, stretch=stretch)
            return [_read(path, convert, turn=False, page=k) for k in range(page_count(path))]
        raise UserError(f"{path} cannot be read as a TIFF stack ({exc}). The file is corrupt, or in a format neither "
                        "Pillow nor tifffile can read: copy it again from the original dataset.") from None


def as_rgb(array: np.ndarray) -> np.ndarray:
    """Return an H x W x C array (gray images get a channel axis of 1)."""
    return array[..., None] if array.ndim == 2 else array


def to_binary(array: np.ndarray, path: Path | str, what: str = "label") -> np.ndarray:
    """Turn a 0/255 or 0/1 single-channel map into bool; any other value is a LabelError."""
    rule = f"A binary {what} must be gray with only the values 0/255 or only 0/1"
    jpeg = Path(str(path)).suffix.lower() in (".jpg", ".jpeg")
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            few = what == "label" and not jpeg and np.unique(colour_codes(array)).size <= MAX_CLASSES
            raise LabelError(path, f"the {what} is a colour image", f"{rule}.{_COLOUR_CLASSES if few else ''}")
        array = array[..., 0]
    values, counts = np.unique(array, return_counts=True)
    if set(values.tolist()) <= {0, 255}:
        return array == 255
    if set(values.tolist()) <= {0, 1}:
        return array == 1
    near = values.size >= 6 and np.mean((array <= 16) | (array >= 239)) > 0.9  # many levels, mostly extremes
    smooth = "its values cluster near 0 and 255, as resampling or anti-aliasing leaves them; " if near else ""
    stray = _stray_values(values, counts)
    classes = set(values.tolist()) - {255}
    # Class indices (not a two-level map with a few stray pixels), or a VOC-style 0/1 map with a void 255.
    indices = (what == "label" and not near and max(classes, default=255) < MAX_CLASSES
               and ((len(classes) >= 3 and not stray) or (classes == {0, 1} and 255 in values)))
    fix = (f"{rule}: JPEG compression blurs edges into other values, so save {what}s as PNG, GIF or TIFF." if jpeg
           else f"{rule}: {smooth}re-export it as a two-level image.{_INDEX_CLASSES if indices else ''}")
    found = []
    for value, count in stray.items():
        row, column = divmod(int(np.flatnonzero(array == value)[0]), array.shape[1])
        found.append(f"{value}: {plural(count, 'pixel')}, the first at row {row}, column {column}")
    where = f" ({'; '.join(found)})" if found else ""
    raise LabelError(path, f"the {what} has values {listed(values.tolist(), 10)}{where}", fix)


STRAY_SHARE = 0.01  # values other than a map's two levels on fewer pixels than this are strays to point at


def _stray_values(values: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    """For a 0/255 (or 0/1) map with a few other values on under 1% of its pixels: those values and their pixel
    counts; empty otherwise."""
    for levels in ({0, 255}, {0, 1}):
        others = {int(v): int(c) for v, c in zip(values, counts) if int(v) not in levels}
        few = 0 < len(others) <= 4 and sum(others.values()) < STRAY_SHARE * counts.sum()
        if levels <= set(values.tolist()) and few:
            return others
    return {}


MAX_CLASSES = 64  # labels with fewer distinct values or colours than this may be class maps
_INDEX_CLASSES = (" Labels of small whole values look like class maps: to train on several classes, set [model] "
                  "n_classes (how many), [training settings] loss = cce, and [data attributes] ignore_index for a "
                  "void value such as 255 (README.md, Multi-class).")
_COLOUR_CLASSES = (" Labels of a few colours look like colour-coded class maps: to train on several classes, set "
                   "[model] n_classes, [data attributes] palette (the colour of each class) and [training settings] "
                   "loss = cce (README.md, Multi-class).")


# --- multi-class labels ------------------------------------------------------------------------

# Colours for classes without a configured palette (matplotlib's tab20 order, then generated hues).
DEFAULT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                   (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
                   (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
                   (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229))


@dataclass(frozen=True)
class ClassSpec:
    """A multi-class label set: class count, names, the void (ignore) value and the colour palette.

    palette[i] is the colour of class i; an extra last colour, when given, is the void colour.
    """

    n_classes: int
    names: tuple[str, ...]
    ignore_index: int | None = None
    palette: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Mapping[str, Any]]) -> "ClassSpec | None":
        """The configuration's label set; None for a binary task (n_classes = 1)."""
        n = config["model"]["n_classes"]
        if n == 1:
            return None
        attributes = config["data attributes"]
        ignore = attributes["ignore_index"]
        names = attributes["class_names"] or [f"class_{c}" for c in range(n)]
        return cls(n, tuple(names), None if ignore < 0 else ignore, tuple(tuple(c) for c in attributes["palette"]))

    def colour_to_class(self) -> dict[tuple[int, int, int], int]:
        """Palette lookup for colour labels: class colours, and the void colour (if any) to ignore_index."""
        table = {tuple(colour): index for index, colour in enumerate(self.palette[: self.n_classes])}
        if len(self.palette) > self.n_classes and self.ignore_index is not None:
            table[tuple(self.palette[self.n_classes])] = self.ignore_index
        return table

    def display_palette(self) -> np.ndarray:
        """(n_classes + 1, 3) uint8 drawing colours: the classes', then void's (see display_map)."""
        if self.palette:
            colours = [tuple(c) for c in self.palette[: self.n_classes]]
        else:
            colours = [DEFAULT_COLOURS[c] if c < len(DEFAULT_COLOURS) else
                       tuple(int(v) for v in np.round(255 * _hue_to_rgb((c * 0.618034) % 1.0)))
                       for c in range(self.n_classes)]
        if len(self.palette) > self.n_classes:
            void = tuple(self.palette[self.n_classes])
        else:
            void = next(c for c in ((0, 0, 0), (255, 255, 255), (255, 0, 255), (1, 1, 1)) if c not in colours)
        return np.array(colours + [void], dtype=np.uint8)

    def display_map(self, labels: np.ndarray) -> np.ndarray:
        """Class map for drawing with display_palette: void (and any other value) becomes n_classes."""
        labels = np.asarray(labels)
        return np.where(labels < self.n_classes, labels, self.n_classes).astype(np.intp)


def _hue_to_rgb(hue: float) -> np.ndarray:
    """A saturated colour of the given hue in [0, 1), as RGB floats in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return 0.85 - 0.6 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


class LabelError(UserError):
    """A label file with values (or colours) outside the configured classes; prepare lists them all."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}. {fix}")


def colour_codes(array: np.ndarray) -> np.ndarray:
    """One int32 per pixel of an RGB(A) array, R << 16 | G << 8 | B, so colours can be counted and looked up."""
    return (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]


def _colour(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def to_classes(array: np.ndarray, path: Path | str, classes: ClassSpec) -> np.ndarray:
    """Turn a label file into a uint8 class map: class indices as they are, RGB colours via the palette.

    Values other than 0 ... n_classes-1 and the ignore index, and colours not in the palette, are a
    LabelError that lists them.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and classes.palette:
        table = classes.colour_to_class()
        codes = colour_codes(array)
        unique, inverse = np.unique(codes, return_inverse=True)
        colours = [_colour(code) for code in unique.tolist()]
        unknown = [c for c in colours if c not in table]
        if unknown:
            raise LabelError(path, f"the colour label has colours not in [data attributes] palette: "
                             f"{listed(f'({r} {g} {b})' for r, g, b in unknown)}",
                             "Add them to the palette (one 'R G B' triple per class, void last), or fix the label.")
        lookup = np.array([table[c] for c in colours], dtype=np.uint8)
        return lookup[inverse.reshape(codes.shape)]
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            found = listed("({} {} {})".format(*_colour(code)) for code in np.unique(colour_codes(array)).tolist())
            raise LabelError(path, f"the label is a colour image (colours {found}) but [data attributes] palette "
                             "is empty",
                             "Declare the colour of each class in palette (R G B triples), or give class-index labels.")
        array = array[..., 0]
    allowed = set(range(classes.n_classes)) | ({classes.ignore_index} if classes.ignore_index is not None else set())
    values = np.unique(array)
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        void = "" if classes.ignore_index is None else f" or the ignore index {classes.ignore_index}"
        raise LabelError(path, f"the label has values {listed(bad)}, outside the classes 0 ... "
                         f"{classes.n_classes - 1}{void}",
                         "Check [model] n_classes and [data attributes] ignore_index, or fix the label.")
    return array.astype(np.uint8)


def _orientation(path: Path) -> int:
    """The file's EXIF orientation tag (1: as stored; 2-4 mirror or turn by 180 degrees; 5-8 swap width and
    height, as phone and camera photos do); 1 for a file without one."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def _turned_by_tag(path: Path) -> bool:
    """Whether the file's orientation tag swaps its width and height."""
    return _orientation(path) in (5, 6, 7, 8)


def _check_same_size(image: np.ndarray, other: np.ndarray, image_path: Path, other_path: Path) -> None:
    if image.shape[:2] != other.shape[:2]:
        turned = ""
        if image.shape[:2] == other.shape[1::-1]:
            turned = (" The sizes are swapped: files with an EXIF orientation tag (photos) are read turned as "
                      "viewers show them, so draw the label on the turned image."
                      if _turned_by_tag(image_path) or _turned_by_tag(other_path) else
                      " The sizes are swapped: one of the two is turned by 90 degrees (neither has an orientation "
                      "tag); turn it back.")
        raise UserError(f"size mismatch: {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                        f"{other_path} is {other.shape[1]}x{other.shape[0]}. Image, label and mask "
                        f"must have the same size.{turned}")


def _example(pattern: str) -> str:
    """'(\\d+)_training\\.tif' -> 'NN_training.tif', for messages."""
    return pattern.replace("\\", "").replace("(d+)", "NN")


def _scan(folder: Path, patterns: dict[str, str], to_id: Callable[[re.Match], int],
          expected: str) -> dict[str, dict[int, Path]]:
    """Map each kind of file in folder (by the pattern it matches) to {id: file}.

    Subfolders, hidden files, Thumbs.db and archives are skipped; any other file that matches no pattern,
    and two files with the same id, are a UserError naming them.
    """
    if not folder.is_dir():
        raise UserError(f"folder {folder} not found. Check [data paths] dataset_dir and the layout "
                        "described in data/README.md.")
    regexes = {kind: re.compile(pattern) for kind, pattern in patterns.items()}
    found: dict[str, dict[int, Path]] = {kind: {} for kind in patterns}
    unexpected = []
    duplicates = []
    for path in sorted(folder.iterdir()):
        if _skipped(path):
            continue
        for kind, regex in regexes.items():
            match = regex.fullmatch(path.name)
            if match is not None:
                break
        else:
            unexpected.append(path.name)
            continue
        number = to_id(match)
        if number in found[kind]:  # e.g. 9_training.tif and 09_training.tif: one would be silently dropped
            duplicates.append(f"{found[kind][number].name} and {path.name}")
            continue
        found[kind][number] = path
    if duplicates:
        raise UserError(f"files with the same number in {folder}: {'; '.join(duplicates)}. Keep one "
                        "file per number and move the others away.")
    if unexpected:
        raise UserError(f"unexpected files in {folder}: {listed(unexpected)}. Expected only names "
                        f"like {expected}; move the others away.")
    return found


def _list_by_id(folder: Path, pattern: str, example: str | None = None,
                to_id: Callable[[re.Match], int] | None = None) -> dict[int, Path]:
    """Map image number (by default the pattern's first group) -> file for every file in folder."""
    return _scan(folder, {"file": pattern}, to_id or (lambda m: int(m.group(1))),
                 f"'{example or _example(pattern)}'")["file"]


_BY_NUMBER = ("Every image needs exactly one {what} with the same number: add the missing files or remove the extra "
              "ones.")
_BY_STEM = ("Files are paired by name without the extension (a.png with a.tif), or with one suffix common to "
            "all of them (a_mask.png), or to all images (a_0000.png with a.png): every image needs exactly one "
            "{what}.")


def fold(text: str) -> str:
    """A name as pairing and ids compare it: letter case aside, and the Unicode form (macOS writes accented names
    decomposed, NFD; most other systems composed, NFC)."""
    return unicodedata.normalize("NFC", text).casefold()


def key_by_image_name(images: Iterable[str], others: dict[str, Path]) -> dict[str, Path]:
    """others (labels or masks, by file stem) keyed by the image name they belong to: an image's own name,
    else its name plus the suffix most of the other files end with, from a separator on (case01_mask.png
    for case01.jpg), or its name less the suffix most of the images end with (nnU-Net's case01_0000.png
    with case01.png); letter case and Unicode form (NFC/NFD) aside, except for files that differ only by them.
    Files that fit no image keep their own stem."""
    names = set(images)
    keyed = dict(others)
    free = [stem for stem in others if stem not in names]  # a file named as an image is that image's
    # Letter case and Unicode form aside, except for files that differ only by them: those pair with no image,
    # and are named.
    folds = collections.Counter(fold(stem) for stem in free)
    by_fold = {fold(stem): stem for stem in free if folds[fold(stem)] == 1}
    unpaired = []
    for name in sorted(names - set(others)):
        if fold(name) in by_fold:  # Case01.png with case01.png
            keyed[name] = keyed.pop(by_fold.pop(fold(name)))
        else:
            unpaired.append(name)

    def partner(name: str, rule: tuple[str, str]) -> str | None:
        other_end, image_end = rule
        folded = fold(name)
        key = folded[: len(folded) - len(image_end)] + other_end if folded.endswith(image_end) else None
        return key if key in by_fold else None

    # Labels' endings first (case01_mask.png); only where none pairs, images' (case01_0000.png).
    for ends in (collections.Counter((stem[i:], "") for stem in by_fold for i in _separators(stem)),
                 collections.Counter(("", fold(name)[i:]) for name in unpaired for i in _separators(fold(name)))):
        # The most common ending wins (_mask over _2_mask), then the one that pairs more images (DRIVE's
        # 01_test_mask: _mask over _test_mask); a tie, or no image paired, pairs nothing.
        top = max(ends.values(), default=0)
        ranked = sorted((sum(partner(name, rule) is not None for name in unpaired), rule)
                        for rule, count in ends.items() if count == top)
        if not ranked or ranked[-1][0] == 0 or (len(ranked) > 1 and ranked[-2][0] == ranked[-1][0]):
            continue
        for name in unpaired:
            key = partner(name, ranked[-1][1])
            if key is not None:
                keyed[name] = keyed.pop(by_fold.pop(key))
        break
    return keyed


def _separators(name: str) -> list[int]:
    """Where an ending may start in a name: at each separator (_ - . space) after the first character."""
    return [i for i in range(1, len(name)) if name[i] in "_-. "]


def _pair(images: dict, others: dict, what: str, folder: Path, rule: str = "") -> None:
    """Raise a UserError naming every image without a partner and every partner without an image."""
    missing = sorted(set(images) - set(others), key=_natural_key)
    extra = sorted(set(others) - set(images), key=_natural_key)
    problems = []
    if missing:
        problems.append(f"no {what} for image(s) {listed(images[i].name for i in missing)}")
    if extra:
        problems.append(f"{what}(s) {listed(others[i].name for i in extra)} have no image")
    if problems:
        fix = (rule or _BY_NUMBER).format(what=what)
        raise UserError(f"in {folder}: {'; '.join(problems)}. {fix}")


def _load_files(number: int, key: str, image_path: Path, label_path: Path | None,
                mask_path: Path | None, derive: bool, classes: ClassSpec | None = None,
                page: int | None = None, mask_page: int | None = None) -> Sample:
    """Read one image (page of a stack: named 'x.tif[page]') with its label and FOV mask (or its page of a
    mask stack), or a derived or whole-image FOV."""
    image = as_rgb(read_image(image_path, page=page))
    mask = read_label(mask_path, page=mask_page) if mask_path is not None else None
    label = read_label(label_path, classes) if label_path is not None else None
    drawn = [raw for raw in (mask, label) if raw is not None]
    tag = _orientation(image_path) if drawn and image_path.suffix.lower() != ".gz" else 1
    turned = tag in range(2, 9)  # 0 and 9 are not orientations: Pillow leaves such files as they are
    if drawn and all(raw.shape[:2] != image.shape[:2] for raw in drawn):
        # Labels drawn on the pixels as stored, not as the orientation tag turns them: the image as stored.
        stored = as_rgb(read_image(image_path, turn=False, page=page))
        if all(raw.shape[:2] == stored.shape[:2] for raw in drawn):
            image, turned = stored, False
    unconfirmed = turned and (tag in (2, 3, 4) or image.shape[0] == image.shape[1])
    # Sizes first: a resized label or mask also has odd values.
    if mask is not None:
        _check_same_size(image, mask, image_path, mask_path)
        fov = fov_from_mask(mask, page_name(str(mask_path), mask_page), f" of image {page_name(image_path.name, page)}")
    elif derive:
        fov = derive_fov(image)
    else:
        fov = np.ones(image.shape[:2], dtype=bool)
    if label is not None:
        _check_same_size(image, label, image_path, label_path)
        label = to_binary(label, label_path) if classes is None else to_classes(label, label_path, classes)
    return Sample(page_name(image_path.name, page), number, image, label, fov, key, unconfirmed)


def fov_from_mask(mask: np.ndarray, mask_path: str, of_image: str = "") -> np.ndarray:
    """The field of view a mask file gives (0/255 or 0/1); an empty one (all zero) is refused by name, since nothing
    of its image would be trained on, segmented or scored."""
    fov = to_binary(mask, mask_path, "mask")
    if not fov.any():
        raise UserError(f"the field-of-view mask {mask_path}{of_image} is empty (all zero). Inside the field of view "
                        "must be white (255 or 1): check that it is the right file.")
    return fov


def _file_entry(number: int, key: str, image: Path, label: Path | None, mask: Path | None,
                derive: bool = False, classes: ClassSpec | None = None) -> Entry:
    return Entry(image.name, number, key,
                 functools.partial(_load_files, number, key, image, label, mask, derive, classes))


# --- DRIVE (and the generated sample) ---------------------------------------------------------

_DRIVE_PATTERNS = {
    "train": ("training", r"(\d+)_training\.tif", r"(\d+)_manual1\.gif", r"(\d+)_training_mask\.gif"),
    "test": ("test", r"(\d+)_test\.tif", r"(\d+)_manual1\.gif", r"(\d+)_test_mask\.gif"),
}


def _drive_entries(root: Path, split: str) -> list[Entry]:
    """List DRIVE's `training` or `test` folder; files are paired by number, not sort order."""
    folder_name, image_re, label_re, mask_re = _DRIVE_PATTERNS[split]
    folder = Path(root) / folder_name
    images = _list_by_id(folder / "images", image_re)
    masks = _list_by_id(folder / "mask", mask_re)
    _pair(images, masks, "mask", folder / "mask")
    labels: dict[int, Path] | None = None
    if (folder / "1st_manual").is_dir() or split == "train":
        labels = _list_by_id(folder / "1st_manual", label_re)
        _pair(images, labels, "manual label", folder / "1st_manual")
    return [_file_entry(n, str(n), images[n], labels[n] if labels is not None else None, masks[n])
            for n in sorted(images)]


# --- ISBI 2012 --------------------------------------------------------------------------------

def read_isbi(root: Path, split: str, positive_class: str) -> list[Sample]:
    """Read ISBI 2012 from TIFF stacks or per-slice PNG folders; the FOV is the whole image."""
    root = Path(root)
    stack = root / ("train-volume.tif" if split == "train" else "test-volume.tif")
    folder = root / split / "image"
    if stack.is_file():
        if folder.is_dir():
            print(f"note: {root} holds both {stack.name} and {folder}: reading the stack (move one of them away to "
                  "choose the other).")
        images = read_stack(stack)
        names = [page_name(stack.name, i) for i in range(len(images))]
        ids = list(range(len(images)))
        labels: list[np.ndarray] | None = None
        label_stack = root / "train-labels.tif"
        if split == "train":
            if not label_stack.is_file():
                raise UserError(f"{label_stack} not found: the training slices of {stack} need their labels "
                                "beside them (train-labels.tif from the ISBI 2012 release).")
            labels = read_stack(label_stack, stretch=False)
            if len(labels) != len(images):
                raise UserError(f"{stack} has {len(images)} slices but {label_stack} has {len(labels)}. "
                                "Both stacks must hold the same slices.")
        label_paths = [page_name(str(label_stack), i) for i in range(len(images))]
        image_paths = [page_name(str(stack), i) for i in range(len(images))]
    elif folder.is_dir():
        image_files = _list_by_id(folder, r"(\d+)\.png")
        ids = sorted(image_files)
        names = [image_files[i].name for i in ids]
        images = [read_image(image_files[i]) for i in sorted(image_files)]
        image_paths = [str(image_files[i]) for i in sorted(image_files)]
        labels = None
        if (root / split / "label").is_dir() or split == "train":
            label_files = _list_by_id(root / split / "label", r"(\d+)\.png")
            _pair(image_files, label_files, "label", root / split / "label")
            labels = [read_label(label_files[i]) for i in sorted(image_files)]
            label_paths = [str(label_files[i]) for i in sorted(image_files)]
    elif split == "test":
        return []
    else:
        raise UserError(f"ISBI 2012 data not found in {root}: expected train-volume.tif and "
                        "train-labels.tif, or folders train/image/N.png and train/label/N.png.")
    samples = []
    for index, (name, image) in enumerate(zip(names, images)):
        label = None
        if labels is not None:
            _check_same_size(image, labels[index], Path(image_paths[index]), Path(label_paths[index]))
            interior = to_binary(labels[index], label_paths[index])
            label = ~interior if positive_class == "membrane" else interior
        fov = np.ones(image.shape[:2], dtype=bool)
        samples.append(Sample(name, ids[index], as_rgb(image), label, fov))
    return samples


def _isbi_entries(root: Path, split: str, positive_class: str) -> list[Entry]:
    """ISBI 2012 samples as entries; the stacks are small (30 slices of 512x512) and read at once."""
    return [Entry(s.name, s.id, str(s.id), functools.partial(lambda s: s, s))
            for s in read_isbi(root, split, positive_class)]


# --- STARE ------------------------------------------------------------------------------------

STARE_IMAGE = r"im(\d{4})\.ppm(?:\.gz)?"
STARE_IMAGE_FOLDERS = ("stare-images", "images")  # where users unpack stare-images.tar, if not into dataset_dir


def stare_image_folder(root: Path) -> Path:
    """The folder holding STARE's images: dataset_dir itself, or its stare-images/ or images/ subfolder when
    dataset_dir holds none of them (the tar file unpacked into a folder of its own)."""
    if not root.is_dir() or any(re.fullmatch(STARE_IMAGE, path.name) for path in root.iterdir()):
        return root
    return next((root / name for name in STARE_IMAGE_FOLDERS if (root / name).is_dir()), root)


def _stare_entries(root: Path) -> list[Entry]:
    """STARE: im0001.ppm ... in dataset_dir (or its stare-images/), Hoover's labels in labels-ah/ (files may be
    gzipped)."""
    folder = stare_image_folder(root)
    images = _scan(folder, {"file": STARE_IMAGE}, lambda m: int(m.group(1)),
                   "'im0001.ppm' or 'im0001.ppm.gz' (the labels go in labels-ah/)")["file"]
    labels = _list_by_id(root / "labels-ah", r"im(\d{4})\.ah\.ppm(?:\.gz)?", "im0001.ah.ppm")
    _pair(images, labels, "manual label", root / "labels-ah",
          _BY_NUMBER + " Hoover's vessel labels cover 20 of STARE's images, those of stare-images.tar: keep only "
          "those 20 (not the whole STARE image set).")
    # The release has no FOV masks: derived from the red channel (lib/fov.py).
    return [_file_entry(n, str(n), images[n], labels[n], None, derive=True) for n in sorted(images)]


# --- CHASE_DB1 --------------------------------------------------------------------------------

CHASE_TEST_FROM = 11  # conventional split: children 01-10 (both eyes) train, 11-14 test


def chase_id(number: int, eye: str) -> int:
    """CHASE_DB1 image id: 2*number-1 for the left eye, 2*number for the right (Image_01L -> 1, 01R -> 2)."""
    return 2 * number - (eye.upper() == "L")


def _chase_entries(root: Path) -> list[Entry]:
    """CHASE_DB1: one flat folder of Image_01L.jpg with Image_01L_1stHO.png (used) and _2ndHO.png."""
    files = _scan(root, {"image": r"Image_(\d{2})([LR])\.(?i:jpg)",
                         "label": r"Image_(\d{2})([LR])_1stHO\.(?i:png)",
                         "second": r"Image_(\d{2})([LR])_2ndHO\.(?i:png)"},
                  lambda m: chase_id(int(m.group(1)), m.group(2)),
                  "'Image_01L.jpg', 'Image_01L_1stHO.png' or 'Image_01L_2ndHO.png'")
    images, labels = files["image"], files["label"]
    _pair(images, labels, "first-observer label (_1stHO.png)", root)
    # The release has no FOV masks: derived from the red channel (lib/fov.py).
    return [_file_entry(n, f"{(n + 1) // 2:02d}{'LR'[1 - n % 2]}", images[n], labels[n], None, derive=True)
            for n in sorted(images)]


# --- HRF --------------------------------------------------------------------------------------

_HRF_CATEGORIES = {"dr": 1, "g": 2, "h": 3}  # diabetic retinopathy, glaucoma, healthy


def hrf_id(number: int, category: str) -> int:
    """HRF image id: the position in name order, 3*(number-1) + (dr 1, g 2, h 3): 01_dr -> 1, 15_h -> 45."""
    return 3 * (number - 1) + _HRF_CATEGORIES[category]


def _hrf_entries(root: Path) -> list[Entry]:
    """HRF: images/01_dr.JPG (mixed-case extensions), manual1/01_dr.tif, mask/01_dr_mask.tif."""
    def to_id(match: re.Match) -> int:
        return hrf_id(int(match.group(1)), match.group(2))

    images = _list_by_id(root / "images", r"(\d{2})_(dr|g|h)\.(?i:jpe?g)", "01_dr.JPG", to_id)
    labels = _list_by_id(root / "manual1", r"(\d{2})_(dr|g|h)\.(?i:tiff?)", "01_dr.tif", to_id)
    masks = _list_by_id(root / "mask", r"(\d{2})_(dr|g|h)_mask\.(?i:tiff?)", "01_dr_mask.tif", to_id)
    _pair(images, labels, "manual label", root / "manual1")
    _pair(images, masks, "mask", root / "mask")
    return [_file_entry(n, images[n].stem, images[n], labels[n], masks[n]) for n in sorted(images)]


# --- your own data: images/ + labels/ (+ masks/) ----------------------------------------------

def _natural_key(text: str | int) -> list:
    """Sort key that puts 'img2' before 'img10' (numbers sort as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def files_by_stem(folder: Path, refuse_nested: bool = True) -> dict[str, Path]:
    """Map file stem -> image file in folder; other files and two files with one stem are errors, and so are images
    in subfolders unless refuse_nested is False (they are not read)."""
    if not folder.is_dir():
        # dataset_dir set to the images/ folder itself makes images/images: name the folder meant.
        meant = (f" dataset_dir names the dataset's own folder, here probably {folder.parent.parent}."
                 if folder.parent.name == folder.name else "")
        raise UserError(f"folder {folder} not found.{meant} Check [data paths] dataset_dir and the layout "
                        "described in README.md (sections Your data and Multi-class (CamVid)).")
    found: dict[str, Path] = {}
    unexpected, duplicates = [], []
    for path in sorted(folder.iterdir()):
        if _skipped(path):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            unexpected.append(path.name)
        elif path.stem in found:
            duplicates.append(f"{found[path.stem].name} and {path.name}")
        else:
            found[path.stem] = path
    if duplicates:
        raise UserError(f"files with the same name in {folder}: {'; '.join(duplicates)}. Files are paired "
                        "by name without the extension: keep one of each.")
    if unexpected:
        unread = sorted({Path(name).suffix.lower() for name in unexpected} & UNREAD_IMAGE_EXTENSIONS)
        convert = (f" {', '.join(unread)} images are not read: convert them to PNG (or TIFF), labels too."
                   if unread else "")
        raise UserError(f"unexpected files in {folder}: {listed(unexpected)}. Expected only images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); move the others away.{convert}")
    nested = images_in_subfolders(folder) if refuse_nested else ""
    if nested:  # reading the rest would train on part of the data without a word
        raise UserError(f"{folder} has images in subfolders, which are not read: {nested}. Move those images "
                        f"into {folder} itself (and their labels or masks likewise), or move the subfolders out.")
    if not found:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}.")
    return found


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (gzipped too: STARE's im0001.ppm.gz)."""
    return Path(_without_gz(name)).suffix.lower() in IMAGE_EXTENSIONS


def images_in_subfolders(folder: Path) -> str:
    """The subfolders of folder (at any depth, hidden ones left out) that hold image files, with their counts,
    e.g. 'extra/ (2 images)'; empty when there are none."""
    found = []
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        count = sum(1 for path in sub.rglob("*") if is_image_name(path.name) and path.is_file()
                    and not any(part.startswith(".") for part in path.relative_to(sub).parts))
        if count:
            found.append(f"{sub.name}/ ({plural(count, 'image')})")
    return ", ".join(found)


def _folder_files(folder: Path, need_labels: bool) -> list[tuple[str, Path, Path | None, Path | None]]:
    """(stem, image, label, mask) for images/ with labels/ and optional masks/ under folder."""
    images = files_by_stem(folder / "images")
    labels = masks = None
    if need_labels and not (folder / "labels").is_dir() and (folder / "masks").is_dir():
        # Kaggle-style datasets call their labels masks; here masks/ holds fields of view.
        raise UserError(f"folder {folder / 'labels'} not found, but {folder / 'masks'} is there. Labels go in "
                        "labels/; masks/ is for optional field-of-view masks. If the files in masks/ are the "
                        "structures to segment, rename the folder to labels.")
    if need_labels or (folder / "labels").is_dir():
        labels = key_by_image_name(images, files_by_stem(folder / "labels"))
        _pair(images, labels, "label", folder / "labels", _BY_STEM)
    if (folder / "masks").is_dir():
        masks = key_by_image_name(images, files_by_stem(folder / "masks"))
        _pair(images, masks, "mask", folder / "masks", _BY_STEM)
    return [(stem, images[stem], None if labels is None else labels[stem], None if masks is None else masks[stem])
            for stem in sorted(images, key=_natural_key)]


def _folder_entries(root: Path, classes: ClassSpec | None = None) -> tuple[list[Entry], list[Entry] | None]:
    """Generic folders: (train, test) with a test/ folder, else (all, None).

    Ids are the numbers in the file names when every name is a number (7.png -> 7), else the
    1-based position in name order (training images first, then test images).
    """
    train = _folder_files(root, need_labels=True)
    test = _folder_files(root / "test", need_labels=False) if (root / "test" / "images").is_dir() else None
    rows = train + (test or [])
    numeric = all(stem.isdigit() for stem, *_ in rows) and len({int(s) for s, *_ in rows}) == len(rows)
    ids = [int(stem) if numeric else index for index, (stem, *_) in enumerate(rows, 1)]
    entries = [_file_entry(number, stem, image, label, mask, classes=classes)
               for number, (stem, image, label, mask) in zip(ids, rows)]
    if test is None:
        return entries, None
    return entries[: len(train)], entries[len(train):]


# --- CamVid (SegNet layout) ------------------------------------------------------------------

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")  # 11 = void
CAMVID_SPLITS = (("train", "train", "trainannot"), ("val", "val", "valannot"), ("test", "test", "testannot"))


def camvid_entries(root: Path, classes: ClassSpec | None) -> dict[str, list[Entry]]:
    """CamVid as distributed with SegNet: {train, val, test} from train/ + trainannot/, val/ + valannot/, ...

    Images and annotations are paired by name. train/ is required; val/ and test/ are used when
    present (test/ may come without testannot/). Ids are 1-based positions in name order over
    train, val and test; the names' stems (0001TP_006690) work as ids too.
    """
    if classes is None:
        raise UserError("dataset = CamVid is a multi-class dataset: set [model] n_classes = 11 and [data attributes] "
                        "ignore_index = 11 (see configuration_camvid.txt), and loss = cce or cce_dice.")
    root = Path(root)
    if not (root / "train").is_dir():
        raise UserError(f"CamVid folder {root / 'train'} not found. Expected the SegNet layout: train/, trainannot/, "
                        "val/, valannot/ (and optionally test/, testannot/) in [data paths] dataset_dir.")
    rows: dict[str, list[tuple[str, Path, Path | None]]] = {}
    for split, image_folder, label_folder in CAMVID_SPLITS:
        if split != "train" and not (root / image_folder).is_dir():
            rows[split] = []
            continue
        images = files_by_stem(root / image_folder)
        labels = None
        if split != "test" or (root / label_folder).is_dir():
            labels = key_by_image_name(images, files_by_stem(root / label_folder))
            _pair(images, labels, "annotation", root / label_folder, _BY_STEM)
        rows[split] = [(stem, images[stem], None if labels is None else labels[stem])
                       for stem in sorted(images, key=_natural_key)]
    entries: dict[str, list[Entry]] = {}
    number = 0
    for split, split_rows in rows.items():
        entries[split] = []
        for stem, image, label in split_rows:
            number += 1
            entries[split].append(_file_entry(number, stem, image, label, None, classes=classes))
    return entries


def fixed_validation(dataset: str, root: Path, classes: ClassSpec | None = None) -> list[Entry]:
    """A release's own validation split (CamVid's val/), stored as the 'val' split; [] for the others."""
    if dataset == "CamVid":
        return camvid_entries(root, classes)["val"]
    return []


# --- splits and ids ---------------------------------------------------------------------------

def _normalize_key(text: str) -> str:
    """'01L' -> '1l', '05_dr' -> '5dr': leading zeros, case and an underscore after the number do not matter."""
    match = re.fullmatch(r"0*(\d+)_?(.*)", fold(text))
    return f"{int(match.group(1))}{match.group(2)}" if match else fold(text)


def describe_ids(entries: Sequence[Entry], limit: int = 12) -> str:
    """'21, 22, ..., 40' or '1 (01L), 2 (01R), ...': the ids a message can suggest."""
    parts = [str(e.id) if e.key in ("", str(e.id)) else f"{e.id} ({e.key})" for e in entries]
    if len(parts) > limit:
        parts = parts[: limit - 2] + ["...", parts[-1]]
    return ", ".join(parts) or "none"


def resolve_ids(tokens: Sequence[int | str], entries: Sequence[Entry], key: str, which: str) -> set[int]:
    """Ids of the entries named by tokens (numbers match ids, names like '01L' or 'case03' match keys)."""
    ids = {e.id for e in entries}
    by_key = {_normalize_key(e.key): e for e in entries if e.key}
    chosen: set[int] = set()
    unknown, ambiguous, names = [], [], []
    for token in tokens:
        # A name may come with its file's extension (case03.png for case03); a number may be a name too.
        named = next((by_key[name] for name in (_normalize_key(str(token)), _normalize_key(Path(str(token)).stem))
                      if name in by_key), None)
        if isinstance(token, int) and named is not None and named.id != token:
            # Folder ids count the files when some names are not numbers: 2 is then the second file, which need
            # not be 2.png, and may be a test image. Taking either silently would hold out an image not meant.
            by_id = next((e for e in entries if e.id == token), None)
            ambiguous.append(f"{token} is the id of {by_id.name} but also the name of {named.name}" if by_id else
                             f"{token} is the name of {named.name}, whose id is {named.id}")
            names.append(named.name)
        elif isinstance(token, int) and token in ids:
            chosen.add(token)
        elif named is not None:
            chosen.add(named.id)
        else:
            unknown.append(str(token))
    if unknown:
        raise UserError(f"[data paths] {key} lists {', '.join(unknown)}, which are not {which} image ids. "
                        f"Valid ids: {describe_ids(entries)}.")
    if ambiguous:
        raise UserError(f"[data paths] {key}: {'; '.join(ambiguous)} (ids number the images in name order when "
                        "not every file name is a number). Give file names instead (e.g. "
                        f"{key} = {', '.join(names)}), which mean one image each.")
    return chosen


def split_entries(entries: Sequence[Entry], test_ids: Sequence[int | str], test_fraction: float,
                  seed: int) -> tuple[list[Entry], list[Entry]]:
    """(train, test) of a dataset without a fixed split: test_ids, else test_fraction drawn with the seed."""
    if test_ids:
        chosen = resolve_ids(test_ids, entries, "test_ids", "dataset")
    elif test_fraction > 0:
        ordered = sorted(e.id for e in entries)
        n_test = min(max(1, round(test_fraction * len(ordered))), len(ordered))
        chosen = set(np.random.default_rng(seed).choice(ordered, n_test, replace=False).tolist())
    else:
        chosen = set()
    train = [e for e in entries if e.id not in chosen]
    test = [e for e in entries if e.id in chosen]
    if not train:
        raise UserError(f"[data paths] test_ids/test_fraction put all {plural(len(entries), 'image')} in the test "
                        "split; leave some for training (--set test_fraction=0 makes no test split).")
    return train, test


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"dataset folder {root} not found. Put the dataset there (see data/README.md) "
                        "or set [data paths] dataset_dir in the configuration.")


def read_dataset(dataset: str, root: Path, positive_class: str = "membrane", test_ids: Sequence[int | str] = (),
                 test_fraction: float = 0.0, seed: int = 0,
                 classes: ClassSpec | None = None) -> tuple[list[Entry], list[Entry]]:
    """List a dataset as (train, test) entries: its own split, or the configured one where it has none.

    classes (multi-class tasks) makes labels uint8 class maps; only MULTICLASS_DATASETS take it.
    """
    root = Path(root)
    _check_root(root)
    if classes is not None and dataset not in MULTICLASS_DATASETS:
        raise UserError(f"[model] n_classes = {classes.n_classes}, but {dataset} is a binary dataset: set "
                        f"n_classes = 1, or use a multi-class reader ({', '.join(MULTICLASS_DATASETS)}).")
    fixed: list[Entry] | None
    if dataset in ("DRIVE", "sample", "ISBI2012"):
        entries = list_split(dataset, root, "train", positive_class)
        fixed = list_split(dataset, root, "test", positive_class)
    elif dataset == "CHASE_DB1":
        everything = _chase_entries(root)
        entries = [e for e in everything if (e.id + 1) // 2 < CHASE_TEST_FROM]
        fixed = [e for e in everything if (e.id + 1) // 2 >= CHASE_TEST_FROM]
    elif dataset == "STARE":
        entries, fixed = _stare_entries(root), None
    elif dataset == "HRF":
        entries, fixed = _hrf_entries(root), None
    elif dataset == "folders":
        entries, fixed = _folder_entries(root, classes)
    elif dataset == "CamVid":
        splits = camvid_entries(root, classes)
        entries, fixed = splits["train"], splits["test"]
    else:
        raise UserError(f"unknown dataset '{dataset}'. Valid datasets: {', '.join(DATASETS)}.")
    if fixed is None:
        return split_entries(entries, test_ids, test_fraction, seed)
    if test_ids:
        own = "has its own test split" if fixed else "takes its test split from its own layout (here: none)"
        raise UserError(f"[data paths] test_ids is set, but {dataset} in {root} {own}. "
                        f"test_ids is for datasets without one ({', '.join(CONFIGURED_SPLIT)} without a "
                        "test/ folder): leave it empty, or use holdout_ids to hold out training images.")
    return entries, fixed


def list_split(dataset: str, root: Path, split: str, positive_class: str = "membrane",
               test_ids: Sequence[int | str] = (), test_fraction: float = 0.0, seed: int = 0,
               classes: ClassSpec | None = None) -> list[Entry]:
    """List one split ('train', 'test', or CamVid's 'val') of a dataset by its configuration name, without reading images."""
    if split == "val":
        return fixed_validation(dataset, root, classes)
    root = Path(root)
    _check_root(root)
    if dataset in ("DRIVE", "sample"):
        if split == "test" and not (root / "test").is_dir():
            return []
        return _drive_entries(root, split)
    if dataset == "ISBI2012":
        return _isbi_entries(root, split, positive_class)
    train, test = read_dataset(dataset, root, positive_class, test_ids, test_fraction, seed, classes)
    return train if split == "train" else test


# --- scale ------------------------------------------------------------------------------------

def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, resample)) > 127
    gray = array.ndim == 3 and array.shape[2] == 1
    out = np.asarray(Image.fromarray(array[..., 0] if gray else array).resize(size, resample))
    return out[..., None] if gray else out


def scale_sample(sample: Sample, scale: float) -> Sample:
    """Resize by scale: the image by area averaging (bilinear when enlarging), label and FOV by nearest neighbour."""
    if scale == 1.0:
        return sample
    height, width = sample.image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    smooth = Image.Resampling.BOX if scale < 1.0 else Image.Resampling.BILINEAR
    nearest = Image.Resampling.NEAREST
    return replace(sample, image=_resize(sample.image, size, smooth), fov=_resize(sample.fov, size, nearest),
                   label=None if sample.label is None else _resize(sample.label, size, nearest))


def load_sample(entry: Entry, scale: float = 1.0) -> Sample:
    """Read an entry's files and resize them by scale ([data paths] scale)."""
    return scale_sample(entry.load(), scale)


def read_split(dataset: str, root: Path, split: str, positive_class: str = "membrane", scale: float = 1.0,
               test_ids: Sequence[int | str] = (), test_fraction: float = 0.0, seed: int = 0,
               classes: ClassSpec | None = None) -> list[Sample]:
    """Read one split ('train', 'test', or CamVid's 'val') of a dataset by its configuration name."""
    entries = list_split(dataset, root, split, positive_class, test_ids, test_fraction, seed, classes)
    return [load_sample(entry, scale) for entry in entries]


# Longest output stem: '.<stem>_probability.XXXXXXXX.tmp.png' adds 30 bytes to it.
MAX_OUTPUT_STEM = NAME_MAX - 30


def input_entries(path: Path, mask: Path | None) -> list[Entry]:
    """predict.py --input: every page of the image file, or of each image in the folder, with its FOV mask
    (the mask file, or the file of the mask folder named as the image; a mask stack gives each page its own).
    Every image and mask is opened here (its first page), so an unreadable one stops the run before any work.
    An entry's key is the name of its output files (output_stem)."""
    files = _input_files(Path(path))
    masks = _input_masks(files, mask)
    entries = []
    mask_pages_of = {mask_file: page_count(mask_file) for mask_file in set(masks) if mask_file is not None}
    for mask_file, mask_pages in mask_pages_of.items():  # an empty mask stops the run before any work
        for page in range(mask_pages) if mask_pages > 1 else [None]:
            fov_from_mask(read_label(mask_file, page=page), page_name(str(mask_file), page))
    for file, mask_file in zip(files, masks):
        pages = page_count(file)
        mask_pages = mask_pages_of.get(mask_file, 1)
        if mask_pages > 1 and mask_pages != pages:
            raise UserError(f"{mask_file} holds {mask_pages} pages but its image {file} holds {pages}: give one "
                            "mask for every page, or a single-page mask for all of them.")
        for page in range(pages) if pages > 1 else [None]:
            number, name = len(entries) + 1, page_name(file.name, page)
            key = output_stem(name)
            load = functools.partial(_load_files, number, key, file, None, mask_file, False, page=page,
                                     mask_page=page if mask_pages > 1 else None)
            entries.append(Entry(name, number, key, load))
    clashes = collections.defaultdict(list)
    for entry in entries:
        clashes[fold(entry.key)].append(entry.name)
    clashes = {key: names for key, names in clashes.items() if len(names) > 1}
    if clashes:
        raise UserError(f"images whose outputs would have the same name ({', '.join(clashes)}): "
                        f"{'; '.join(' and '.join(names) for names in clashes.values())}. Outputs are named by the "
                        "image without its extension, and page i of a stack x.tif as x_i: rename or move one of each.")
    long = [entry.name for entry in entries if len(entry.key.encode()) > MAX_OUTPUT_STEM]
    if long:
        raise UserError(f"image names too long for their output files: {listed(long, 3)}. Outputs are named by the "
                        "image without its extension plus up to 30 bytes (_probability.png, under a temporary name "
                        f"first), and file systems take names of at most {NAME_MAX} bytes: rename them to at most "
                        f"{MAX_OUTPUT_STEM} bytes without the extension.")
    return entries


def page_name(name: str, page: int | None) -> str:
    """The name of one page of a stack, 'x.tif[3]'; the file's name for a single image (page None)."""
    return name if page is None else f"{name}[{page}]"


def output_stem(name: str) -> str:
    """The name of an image's output files: without the extension (and .gz); page i of 'x.tif[i]' gives 'x_i'."""
    page = re.fullmatch(r"(.*)\[(\d+)\]", name)
    if page:
        return f"{image_stem(page[1])}_{page[2]}"
    return image_stem(name)


def image_stem(name: str) -> str:
    """A file name without its extension, and without .gz first (STARE's im0001.ppm.gz gives im0001)."""
    return Path(_without_gz(name)).stem


def _without_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _input_files(path: Path) -> list[Path]:
    """The image file, or every image file (gzipped too) in the folder, given to predict.py --input."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file()
                       and is_image_name(p.name))
        nested = images_in_subfolders(path)
        if not files:
            inside = f"; its subfolders {nested} are not read: give one of them as --input" if nested else ""
            raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}, or gzipped) in {path}{inside}.")
        if nested:
            print(f"note: --input reads the images in {path} itself, not those in its subfolders {nested}.")
        return files
    if path.is_file():
        return [path]
    raise UserError(f"--input {path} not found: give an image file or a folder of images.")


def _input_masks(files: list[Path], mask: Path | None) -> list[Path | None]:
    """The FOV mask of each --input image: the mask file, or the file of the mask folder named as the image."""
    if mask is None or mask.is_file():
        return [mask] * len(files)
    if not mask.is_dir():
        raise UserError(f"--mask {mask} not found: give a mask file or a folder of masks named like the images.")
    masks = key_by_image_name([image_stem(file.name) for file in files], files_by_stem(mask, refuse_nested=False))
    missing = [file.name for file in files if image_stem(file.name) not in masks]
    if missing:
        raise UserError(f"no FOV mask for {', '.join(missing)} in {mask}: masks are named as their image "
                        "(any image extension), or as the image plus a suffix the other masks share (a_mask.png).")
    return [masks[image_stem(file.name)] for file in files]



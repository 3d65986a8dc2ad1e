"""Synthetic fundus images written in the exact layout and file formats of the DRIVE dataset.

Used by the demo (prepare -> train -> predict without the real data) and by the tests: the
loading code reads the result like any other copy of DRIVE.
"""
from __future__ import annotations

import collections
import errno
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Geometry is generated in full-size DRIVE pixels and scaled, so every image size shows the
# same anatomy; widths below are in those pixels.
_FULL_RADIUS = 0.47 * 565
_STEP = 4.0                  # random-walk step length
_MAX_WIDTH = 7.0             # main trunks leaving the optic disc
_MIN_WIDTH = 0.9             # thinner branches end (capillaries are invisible in DRIVE)
_SUPERSAMPLE = 3             # draw vessels at 3x so widths below a pixel still blend correctly
_MAX_STEPS = 40_000          # hard cap on the walk, so a bad draw of the dice cannot run long


def _grow_branches(rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray
                   ) -> list[tuple[np.ndarray, float, float]]:
    """Grow random-walk vessel trees from the optic disc; return (points, width, contrast) each.

    Points are in full-size pixels relative to the FOV centre.
    """
    axis = math.atan2(macula[1] - disc[1], macula[0] - disc[0])
    # Each tree: (start angle relative to the disc->macula axis, curvature, width, length).
    trees = []
    for side in (-1.0, 1.0):
        # Temporal arcades: leave steeply, then bend round the macula.
        trees.append((side * rng.uniform(1.0, 1.3), -side * rng.uniform(0.015, 0.022),
                      _MAX_WIDTH * rng.uniform(0.85, 1.0), rng.uniform(380, 480)))
        # Nasal vessels: head away from the macula, gently curving.
        trees.append((side * rng.uniform(2.0, 2.6), -side * rng.uniform(0.0, 0.006),
                      _MAX_WIDTH * rng.uniform(0.6, 0.75), rng.uniform(150, 220)))
        # Small vessels heading for the macula.
        trees.append((side * rng.uniform(0.25, 0.5), 0.0, _MAX_WIDTH * rng.uniform(0.3, 0.45),
                      rng.uniform(90, 140)))

    def medium_tree() -> tuple[float, float, float, float]:
        # Real fundi vary a lot: extra medium vessels in any direction fill the picture.
        return (rng.uniform(-math.pi, math.pi), rng.normal(0.0, 0.005),
                _MAX_WIDTH * rng.uniform(0.35, 0.6), rng.uniform(120, 250))

    trees += [medium_tree() for _ in range(3)]

    def root(tree: tuple[float, float, float, float]) -> tuple:
        rel_angle, curvature, width, length = tree
        # All trees leave from the disc centre, so the vessel network is connected as in DRIVE.
        # Arteries and veins differ in contrast; give each tree its own.
        return (float(disc[0]), float(disc[1]), axis + rel_angle, curvature, width, length,
                rng.uniform(0.85, 1.15))

    # Breadth first, so stopping at the area budget trims the thinnest twigs everywhere
    # instead of dropping whole trees; the budget keeps the vessel fraction near DRIVE's.
    queue = collections.deque(root(t) for t in trees)
    budget = rng.uniform(0.11, 0.135) * math.pi * _FULL_RADIUS ** 2
    area = 0.0
    branches = []
    steps_left = _MAX_STEPS
    limit = 0.97 * _FULL_RADIUS
    mx, my = float(macula[0]), float(macula[1])
    dx0, dy0 = float(disc[0]), float(disc[1])
    while steps_left > 0 and area < budget:
        if not queue:
            queue.append(root(medium_tree()))
        x, y, angle, curvature, width, length_left, tree_contrast = queue.popleft()
        points = [(x, y)]
        bend = 0.0
        # Wide vessels run long between bifurcations.
        split_p = _STEP / (20.0 + 10.0 * width)
        while steps_left > 0 and length_left > 0:
            steps_left -= 1
            # Smoothly varying bend: vessels meander gently rather than jitter.
            bend = 0.85 * bend + rng.normal(0.0, 0.012)
            angle += curvature + bend
            # Arcs open out with distance; a constant bend would curl vessels into circles.
            curvature *= 0.995
            # Vessels radiate from the disc: a weak pull outward keeps them from doubling back.
            angle += 0.012 * math.sin(math.atan2(y - dy0, x - dx0) - angle)
            if math.hypot(x - mx, y - my) < 0.22 * _FULL_RADIUS:
                # The fovea is avascular: turn away from it.
                angle += 0.3 * math.sin(math.atan2(y - my, x - mx) - angle)
            x, y = x + _STEP * math.cos(angle), y + _STEP * math.sin(angle)
            if math.hypot(x, y) > limit:
                break
            points.append((x, y))
            length_left -= _STEP
            if len(points) > 3 and rng.random() < split_p:
                # Murray's law, w^3 = w1^3 + w2^3, with mostly small side branches.
                ratio = rng.uniform(0.3, 0.95)
                w_main = width / (1.0 + ratio ** 3) ** (1.0 / 3.0)
                w_child = ratio * w_main
                sign = 1.0 if rng.random() < 0.5 else -1.0
                children = ((w_main, -sign * rng.uniform(0.05, 0.3), length_left, curvature),
                            (w_child, sign * rng.uniform(0.5, 1.2), _branch_length(rng, w_child),
                             rng.normal(0.0, 0.006)))
                for w, turn, length, curv in children:
                    if w >= _MIN_WIDTH:
                        queue.append((x, y, angle + turn, curv, w, length, tree_contrast))
                break
        if length_left <= 0 and width * 0.7 >= _MIN_WIDTH:
            # Out of length while still wide: taper on rather than stop abruptly.
            w = width * 0.7
            queue.append((x, y, angle, curvature, w, _branch_length(rng, w), tree_contrast))
        if len(points) > 1:
            area += _STEP * (len(points) - 1) * max(width, 1.0)
            branches.append((np.array(points), width,
                             tree_contrast * _contrast(width) * rng.uniform(0.85, 1.15)))
    return branches


def _branch_length(rng: np.random.Generator, width: float) -> float:
    """Length a new branch of this width runs (full-size pixels) before it tapers or ends."""
    return rng.uniform(0.5, 1.5) * 80.0 * width ** 1.2


def _contrast(width: float) -> float:
    """Relative darkening in the green channel: thin vessels are faint, trunks strong."""
    return 0.25 + 0.25 * min(max((width - 1.0) / (_MAX_WIDTH - 1.0), 0.0), 1.0)


def _smooth_field(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, terms: int = 4
                  ) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: blotchy, uneven illumination across the fundus."""
    field = np.zeros_like(dx)
    for _ in range(terms):
        fx, fy = rng.uniform(-3.0, 3.0, 2)
        field += np.cos(fx * dx + fy * dy + rng.uniform(0.0, 2.0 * math.pi), dtype=np.float32)
    return field / math.sqrt(terms)


def make_fundus(rng: np.random.Generator, width: int = 565, height: int = 584
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image uint8 HxWx3, vessels bool HxW, fov bool HxW) for one synthetic fundus."""
    if width < 16 or height < 16:
        raise ValueError(f"image must be at least 16x16 pixels, got {width}x{height}")
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    radius = 0.47 * min(width, height)
    scale = radius / _FULL_RADIUS
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = (xx - centre[0]) / radius, (yy - centre[1]) / radius
    r2 = dx * dx + dy * dy
    fov = r2 <= 1.0

    # Left or right eye: the optic disc sits to one side, the macula slightly the other way.
    side = rng.choice((-1.0, 1.0))
    disc = np.array([side * rng.uniform(0.45, 0.6), rng.uniform(-0.12, 0.12)]) * _FULL_RADIUS
    macula = np.array([-side * rng.uniform(0.1, 0.2), rng.uniform(-0.08, 0.08)]) * _FULL_RADIUS

    # Vessels: coverage and darkening drawn supersampled, then area-averaged to pixels.
    ss = _SUPERSAMPLE
    cover_img = Image.new("L", (width * ss, height * ss), 0)
    dark_img = Image.new("F", (width * ss, height * ss), 0.0)
    centre_img = Image.new("L", (width, height), 0)
    cover_draw, dark_draw = ImageDraw.Draw(cover_img), ImageDraw.Draw(dark_img)
    centre_draw = ImageDraw.Draw(centre_img)
    branches = _grow_branches(rng, disc, macula)
    # Strongest last, so at crossings the darker vessel wins.
    for points, w, contrast in sorted(branches, key=lambda b: b[2]):
        w_px = w * scale
        if w_px < 0.5:
            continue   # below half a pixel a small image would not show it at all
        w_ss = max(ss, int(round(w_px * ss)))
        xy_px = points * scale + centre
        xy = [tuple(p) for p in (xy_px * ss + (ss - 1) / 2.0).tolist()]
        cover_draw.line(xy, fill=255, width=w_ss, joint="curve")
        dark_draw.line(xy, fill=float(contrast), width=w_ss, joint="curve")
        centre_draw.line([tuple(p) for p in xy_px.tolist()], fill=255, width=1)
    # A pixel is vessel when at least half of it is covered, or the centreline crosses it:
    # the centreline keeps one-pixel vessels 8-connected, as in DRIVE's manual labels.
    vessels = ((np.asarray(cover_img.reduce(ss)) >= 128) | (np.asarray(centre_img) > 0)) & fov
    dark = np.asarray(dark_img.reduce(ss))

    # Background: orange-red retina with vignetting, a tilt and blotchy low-frequency light.
    tilt = rng.uniform(-0.12, 0.12, 2)
    illum = (1.0 - rng.uniform(0.25, 0.4) * r2 + tilt[0] * dx + tilt[1] * dy
             + rng.uniform(0.04, 0.1) * _smooth_field(rng, dx, dy))
    mac_d2 = ((dx - macula[0] / _FULL_RADIUS) ** 2 + (dy - macula[1] / _FULL_RADIUS) ** 2)
    illum *= 1.0 - rng.uniform(0.1, 0.2) * np.exp(-mac_d2 / (2 * 0.18 ** 2))
    base = np.array([rng.uniform(185, 215), rng.uniform(80, 105), rng.uniform(30, 50)],
                    dtype=np.float32)
    img = base * illum[..., None]

    # Optic disc: a bright yellow-white blob with a soft rim.
    disc_d = np.hypot(dx - disc[0] / _FULL_RADIUS, dy - disc[1] / _FULL_RADIUS)
    disc_w = 1.0 / (1.0 + np.exp((disc_d - 0.14) / 0.02))
    disc_colour = np.array([255, 235, 170], np.float32)
    img += disc_w[..., None] * rng.uniform(0.55, 0.8) * (disc_colour - img)

    # Vessels absorb most in green, less in blue, little in red.
    img *= 1.0 - dark[..., None] * np.array([0.35, 1.0, 0.7], dtype=np.float32)

    img *= fov[..., None]
    img = ndimage.gaussian_filter(img, sigma=(0.6 * max(scale, 0.5),) * 2 + (0,))
    img += rng.normal(0.0, 2.5, img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, vessels, fov


def _save_gif(mask: np.ndarray, path: Path) -> None:
    """Save a bool mask as a 0/255 GIF that PIL reopens in mode 'L', like DRIVE's own gifs."""
    # optimize=False keeps the full grey palette; an optimised 2-colour palette reopens as 'P'.
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="GIF", optimize=False)


def write_drive_sample(root: str | os.PathLike, n_train: int = 20, n_test: int = 20,
                       width: int = 565, height: int = 584, seed: int = 0) -> Path:
    """Write a synthetic dataset in DRIVE's layout and formats under root; return root."""
    root = Path(root)
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train} and {n_test}")
    if root.exists():
        raise FileExistsError(errno.EEXIST, "sample dataset folder already exists", str(root))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".sample.tmp-{os.getpid()}"  # not named after root: a long name would pass 255 bytes
    if tmp.exists():
        shutil.rmtree(tmp)   # left by an earlier crashed run that had the same pid
    # DRIVE numbers test images 01..20 and training images 21..40.
    splits = [("training", range(21, 21 + n_train))]
    if n_test:
        splits.append(("test", range(1, 1 + n_test)))
    try:
        for split, numbers in splits:
            for sub in ("images", "1st_manual", "mask"):
                (tmp / split / sub).mkdir(parents=True)
            for number in numbers:
                # One generator per image number: an image does not change with n_train/n_test.
                rng = np.random.default_rng((seed, number))
                image, vessels, fov = make_fundus(rng, width, height)
                Image.fromarray(image).save(
                    tmp / split / "images" / f"{number:02d}_{split}.tif", compression="tiff_lzw")
                _save_gif(vessels, tmp / split / "1st_manual" / f"{number:02d}_manual1.gif")
                _save_gif(fov, tmp / split / "mask" / f"{number:02d}_{split}_mask.gif")
        if root.exists():   # someone else wrote it meanwhile: keep theirs
            raise FileExistsError(errno.EEXIST, "sample dataset folder already exists", str(root))
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root

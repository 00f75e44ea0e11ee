"""Deterministic toy-data generator: unlabeled images, a COCO instance set and an ADE20K-style set.

The toy sets exist so that every stage of the toolkit (pretraining, conversion, ViTDet transfer, Segmenter
transfer, probes) can be exercised end to end on a CPU in minutes, without downloading anything.

Layout written by :func:`make_toy_all` (and by the idempotent :func:`ensure_toy_data`)::

    root/
      images/img_00000.jpg ...                      unlabeled pretraining images (flat folder; texture-world
                                                    scenes by default, COCO-like object scenes on request)
      coco/train/000000000001.jpg ...               COCO instance set
      coco/val/000000000001.jpg ...
      coco/annotations/instances_train.json
      coco/annotations/instances_val.json
      ade/images/training/ADE_train_00000000.jpg    ADE20K layout (MMSeg ``ADE20KDataset``)
      ade/images/validation/ADE_val_00000000.jpg
      ade/annotations/training/ADE_train_00000000.png   8-bit labels, 0 = other/ignore, 1..K = classes
      ade/annotations/validation/ADE_val_00000000.png
      ade_texture/...                               the same layout, classes defined by texture (below)
      .complete                                     JSON of the generation parameters (written last)

Scenes
    Objects (``disk``, ``square``, ``triangle``, ``star``, ``cross``; mildly anisotropic, rotated) with
    random colours and textures (solid, stripes, checker, noise, gradient) on varied backgrounds
    (two-colour gradients, low-frequency noise, faint stripes). Texture and colour are independent of the
    category, so the category must be read from the shape.

COCO annotation scheme (documented choice)
    * Every object is described by one polygon (its complete outline, float coordinates rounded to 2
      decimals); polygons are what detectron2's default ``mask_format="polygon"`` needs.
    * Objects are painted in annotation order, so later objects occlude earlier ones. The masks are
      **amodal** (the full shape, including occluded pixels). To keep that sensible, a placement is rejected
      if it would leave any earlier object with less than ``1 - MAX_OCCLUSION`` (70 %) of its pixels visible.
    * The object's mask is the polygon rasterised by the COCO API's own rule (:func:`polygon_mask`, a numpy
      port of pycocotools' ``rleFrPoly``: even-odd fill sampled at pixel centres, COCO pixel convention). The
      image is painted with exactly this mask, ``area`` is its pixel count and ``bbox`` its tight extent
      ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``, so pycocotools' ``area(annToRLE(ann))`` and ``toBbox`` reproduce
      ``area`` and ``bbox`` exactly.
    * Objects lie entirely inside the image.

ADE scheme
    Labels ``1..K`` use the first ``K`` ADE20K class names (so MMSeg's ``ADE20KDataset`` metainfo, with
    ``reduce_zero_label=True``, maps them to ``0..K-1``); ``0`` marks "other" clutter and becomes 255
    (ignore). The top and bottom "stuff" regions (split by a wavy horizon) carry two different stuff classes,
    then 1-5 objects of "thing" classes and 0-2 unlabeled clutter objects are painted on top. Each class has a
    dataset-wide colour and texture style, jittered per image (brightness, colour, texture parameters), so colour
    nearly gives the class away. ``ade_texture/`` has the same scene layout, but each class has a fixed pattern
    (stripe orientation and period, checker size, noise, flat; geometry jittered by a few percent) and colours
    are drawn per region independently of the class: only texture tells the classes apart.

Determinism
    Every image draws from its own ``numpy.random.Generator(PCG64(SeedSequence((seed, kind, split, index))))``,
    images are saved with fixed encoder parameters and JSON is written with sorted keys and fixed separators,
    so one seed gives byte-identical files (for one numpy/Pillow/libjpeg build) and different seeds differ.

Only numpy, Pillow and the standard library are imported here.
"""

import fnmatch
import json
import os
import shutil
import tempfile
import uuid

import numpy as np
from PIL import Image

__all__ = [
    "COCO_CATEGORIES",
    "ADE_CLASS_NAMES",
    "ADE_APPEARANCES",
    "IMAGE_SCENES",
    "GENERATOR_VERSION",
    "MAX_OCCLUSION",
    "make_toy_images",
    "make_toy_coco",
    "make_toy_ade",
    "make_toy_all",
    "ensure_toy_data",
    "toy_ade_metainfo",
    "toy_data_paths",
    "polygon_mask",
]

#: Bump whenever the output of the generator changes, so that :func:`ensure_toy_data` regenerates.
GENERATOR_VERSION = 3

#: COCO categories of the toy instance set (ids start at 1, as in COCO).
COCO_CATEGORIES = (
    {"id": 1, "name": "disk", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
)

#: The first ADE20K class names as spelled in MMSeg (label k of the toy set is ADE20K class k, 1-based).
ADE_CLASS_NAMES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed ",  # sic: mmseg's ADE20KDataset spells it with a trailing space
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
)

#: Largest fraction of an earlier object that later objects may cover (COCO and pretraining scenes).
MAX_OCCLUSION = 0.3

_SHAPES = tuple(c["name"] for c in COCO_CATEGORIES)
_TEXTURES = ("solid", "stripes", "checker", "noise", "gradient")
_KIND_CODES = {"images": 1, "coco": 2, "ade": 3, "ade-classes": 4, "ade-texture": 5, "images-texture": 6,
               "texture-classes": 7}
_SPLIT_CODES = {"none": 0, "train": 1, "val": 2}
_JPEG_KW = dict(format="JPEG", quality=92, subsampling=0, optimize=False, progressive=False)
_PNG_KW = dict(format="PNG", optimize=False, compress_level=6)
_MARKER = ".complete"


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_size(size, name, minimum=32):
    """Return ``(h, w)`` from an int or a pair; the toy scenes need at least ``minimum`` pixels per side."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {size!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{name} must be at least {minimum}x{minimum} pixels, got {h}x{w}")
    return h, w


def _check_count(n, name, minimum=0):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def _rng(seed, kind, split, index):
    """Independent generator for one image, derived from (seed, kind, split, index)."""
    ss = np.random.SeedSequence((seed, _KIND_CODES[kind], _SPLIT_CODES[split], int(index)))
    return np.random.Generator(np.random.PCG64(ss))


def _json_dump(obj, path):
    """Write JSON deterministically (sorted keys, fixed separators, trailing newline)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(text + "\n")


def _save_rgb_jpeg(img, path):
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="RGB").save(path, **_JPEG_KW)


def _save_label_png(label, path):
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").save(path, **_PNG_KW)


def _prepare_dir(path, patterns, overwrite):
    """Create ``path``; with files of ours (``patterns``, glob-style) already there, remove them or refuse."""
    os.makedirs(path, exist_ok=True)
    ours = sorted(n for n in os.listdir(path) if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if ours and not overwrite:
        raise FileExistsError(
            f"{path} already holds {len(ours)} generated file(s) (e.g. {ours[0]}); pass overwrite=True "
            "(CLI: --overwrite) to replace them, or use ensure_toy_data() for an idempotent, atomic set"
        )
    for name in ours:
        os.remove(os.path.join(path, name))


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def polygon_mask(xy, height, width):
    """Rasterise one polygon exactly as the COCO API does (a numpy port of ``rleFrPoly`` in ``maskApi.c``).

    The rule approximates "pixel ``(r, c)`` is inside if its centre ``(c + 0.5, r + 0.5)`` is inside" (even-odd
    fill, COCO pixel convention: pixel ``c`` spans ``[c, c + 1)``): the boundary is walked on a 5x upsampled
    integer grid and crossings are sampled at column centres. Porting it (instead of sampling centres exactly)
    makes the painted pixels, ``area`` and ``bbox`` agree bit-for-bit with what pycocotools and detectron2
    (``polygons_to_bitmask``) decode from the polygon, without importing pycocotools here.

    Args:
        xy: ``(N, 2)`` array (or flat ``[x0, y0, x1, y1, ...]`` list) of vertices in COCO pixel coordinates.
        height, width: size of the output mask.

    Returns:
        ``bool`` array of shape ``(height, width)``.
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {len(pts)}")
    h, w, scale = int(height), int(width), 5.0
    # C's (int) cast truncates toward zero
    x = np.trunc(scale * pts[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(scale * pts[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(pts)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            t = np.arange(dx + 1, dtype=np.int64)
            t = dx - t if flip else t
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            t = np.arange(dy + 1, dtype=np.int64)
            t = dy - t if flip else t
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    # points where the walk changes column; keep those on a column centre, downsample
    step = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = (np.minimum(u[step], u[step - 1]) + 0.5) / scale - 0.5
    yd = (np.minimum(v[step], v[step - 1]) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    xd, yd = xd[keep], np.ceil(np.clip(yd[keep], 0, h))
    # each kept point toggles the column-major run at x * h + y; the mask is the parity of toggles so far
    toggles = np.bincount((xd * h + yd).astype(np.int64), minlength=h * w + 1)[: h * w]
    flat = (np.cumsum(toggles) % 2).astype(bool)
    return flat.reshape(w, h).T.copy()


def _unit_shape(name, rng):
    """Vertices of a shape of roughly unit radius centred at the origin (before anisotropy and rotation)."""
    if name == "disk":
        t = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "square":
        s = 1.0 / np.sqrt(2.0) * 1.15
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if name == "triangle":
        t = np.pi / 2 + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.25, 0.25, size=3)
        return np.stack([np.cos(t), np.sin(t)], axis=1) * 1.1
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1) * 1.1
    if name == "cross":
        a = rng.uniform(0.28, 0.4)  # half arm width
        pts = [(a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        pts.append((-a, -1))
        return np.array(pts, dtype=np.float64) * 0.95
    raise ValueError(f"unknown shape {name!r}; known: {_SHAPES}")


def _random_polygon(name, rng, h, w, rmin, rmax):
    """A shape polygon placed uniformly so that it lies inside the image (1 px margin), rounded to 0.01 px."""
    radius = rng.uniform(rmin, rmax)
    aspect = np.exp(rng.uniform(-0.22, 0.22))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    pts = _unit_shape(name, rng) * np.array([radius * aspect, radius / aspect])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ext = hi - lo
    if ext[0] > w - 2 or ext[1] > h - 2:
        pts = pts * min((w - 2) / ext[0], (h - 2) / ext[1]) * 0.98
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    cx = rng.uniform(1.0 - lo[0], w - 1.0 - hi[0])
    cy = rng.uniform(1.0 - lo[1], h - 1.0 - hi[1])
    return np.round(pts + np.array([cx, cy]), 2)


# ----------------------------------------------------------------------------------------------------------------
# appearance
# ----------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng, h, w, cells, channels=1):
    """Low-frequency noise in [-1, 1]: a random ``cells`` grid upsampled bicubically (deterministic)."""
    ch, cw = max(2, int(cells)), max(2, int(round(cells * w / h)))
    out = np.empty((h, w, channels), dtype=np.float32)
    for c in range(channels):
        grid = rng.uniform(0.0, 255.0, size=(ch, cw)).astype(np.uint8)
        up = Image.fromarray(grid, mode="L").resize((w, h), resample=Image.BICUBIC)
        out[..., c] = np.asarray(up, dtype=np.float32) / 127.5 - 1.0
    return out


def _texture(rng, h, w, base, kind, second=None, params=None):
    """A ``(h, w, 3)`` float image of one texture around colour ``base``.

    ``params`` fixes the geometry instead of drawing it (``theta`` and ``period`` of stripes, ``cell`` of a
    checker); the phase/offset is always random."""
    params = params or {}
    base = np.asarray(base, dtype=np.float32)
    if second is None:
        second = np.clip(base + rng.uniform(-110, 110, size=3), 0, 255)
    second = np.asarray(second, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "solid":
        img = np.broadcast_to(base, (h, w, 3)).copy()
        img += rng.normal(0.0, 4.0, size=(h, w, 1)).astype(np.float32)
    elif kind == "stripes":
        theta = params["theta"] if "theta" in params else rng.uniform(0.0, np.pi)
        period = params["period"] if "period" in params else rng.uniform(4.0, 12.0)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform()
        sel = ((np.floor(phase) % 2) == 0)[..., None]
        img = np.where(sel, base, second)
    elif kind == "checker":
        cell = params["cell"] if "cell" in params else rng.uniform(3.0, 9.0)
        ox, oy = rng.uniform(0.0, cell, size=2)
        sel = (((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2) == 0)[..., None]
        img = np.where(sel, base, second)
    elif kind == "noise":
        img = base + rng.normal(0.0, 28.0, size=(h, w, 3)).astype(np.float32)
    elif kind == "gradient":
        theta = rng.uniform(0.0, 2.0 * np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        t = ((proj - proj.min()) / max(float(np.ptp(proj)), 1e-6))[..., None]
        img = base * (1.0 - t) + second * t
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {_TEXTURES}")
    return img.astype(np.float32)


def _background(rng, h, w):
    """A varied background: two-colour gradient + low-frequency colour noise, sometimes faint stripes."""
    c0 = rng.uniform(0, 255, size=3)
    c1 = rng.uniform(0, 255, size=3)
    img = _texture(rng, h, w, c0, "gradient", second=c1)
    img += _smooth_noise(rng, h, w, cells=rng.integers(3, 9), channels=3) * rng.uniform(15.0, 45.0)
    if rng.uniform() < 0.35:
        img = 0.8 * img + 0.2 * _texture(rng, h, w, rng.uniform(0, 255, size=3), "stripes")
    if rng.uniform() < 0.35:
        img += rng.normal(0.0, 6.0, size=(h, w, 3)).astype(np.float32)
    return img


def _contrasting_colour(rng, ref, tries=8, min_dist=90.0):
    """A random colour far (L2 in RGB) from ``ref``; the farthest of ``tries`` draws if none reaches min_dist."""
    best, best_d = None, -1.0
    for _ in range(tries):
        c = rng.uniform(0, 255, size=3)
        d = float(np.linalg.norm(c - ref))
        if d > best_d:
            best, best_d = c, d
        if d >= min_dist:
            break
    return best


def _paint(img, mask, tex):
    img[mask] = tex[mask]


# ----------------------------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------------------------
def _object_scene(rng, h, w, min_objects=2, max_objects=6):
    """Render a scene of shapes. Returns ``(uint8 image, objects)``, objects as dicts in painting order."""
    img = _background(rng, h, w)
    n_target = int(rng.integers(min_objects, max_objects + 1))
    side = min(h, w)
    rmin, rmax = 0.07 * side, 0.2 * side
    full_masks, visible, objects = [], [], []
    attempts = 0
    while len(objects) < n_target and attempts < 40 * n_target:
        attempts += 1
        cat = int(rng.integers(len(_SHAPES)))
        poly = _random_polygon(_SHAPES[cat], rng, h, w, rmin, rmax)
        mask = polygon_mask(poly, h, w)
        area = int(mask.sum())
        if area < 16:
            continue
        # later objects may cover at most MAX_OCCLUSION of any earlier object
        ok = all((vis & ~mask).sum() >= (1.0 - MAX_OCCLUSION) * fm.sum() for vis, fm in zip(visible, full_masks))
        if not ok:
            continue
        visible = [vis & ~mask for vis in visible]
        full_masks.append(mask)
        visible.append(mask.copy())
        ref = img[mask].mean(axis=0)
        colour = _contrasting_colour(rng, ref)
        kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _texture(rng, y1 - y0, x1 - x0, colour, kind)
        _paint(img[y0:y1, x0:x1], mask[y0:y1, x0:x1], tex)
        objects.append(
            {
                "category_id": COCO_CATEGORIES[cat]["id"],
                "polygon": poly,
                "area": area,
                "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                "texture": kind,
            }
        )
    if len(objects) < min_objects:  # pragma: no cover - only for absurdly small images
        raise RuntimeError(f"could not place {min_objects} objects in a {h}x{w} image; use a larger size")
    for obj, vis in zip(objects, visible):
        obj["visible_area"] = int(vis.sum())
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


#: Class patterns of the ``appearance="texture"`` ADE set: (texture kind, fixed geometry). Colours are drawn per
#: region, independently of the class, so only the pattern tells classes apart.
_ADE_PATTERNS = (
    ("stripes", {"theta": 0.0, "period": 8.0}),
    ("stripes", {"theta": np.pi / 2, "period": 8.0}),
    ("stripes", {"theta": np.pi / 4, "period": 11.0}),
    ("checker", {"cell": 6.0}),
    ("noise", {}),
    ("solid", {}),
    ("stripes", {"theta": 3 * np.pi / 4, "period": 11.0}),
    ("checker", {"cell": 12.0}),
)
ADE_APPEARANCES = ("colour", "texture")
#: Scene kinds of the unlabeled pretraining folder (:func:`make_toy_images`).
IMAGE_SCENES = ("texture", "objects")


def _ade_class_styles(seed, num_classes, appearance="colour"):
    """Dataset-wide appearance per class (index 0 unused).

    ``colour``: a base colour (distinct hues) and a texture kind per class. ``texture``: a pattern per class
    (:data:`_ADE_PATTERNS`) with colours drawn per region; the ``colour`` entry is then only a palette colour
    for visualisation."""
    if appearance not in ADE_APPEARANCES:
        raise ValueError(f"appearance must be one of {ADE_APPEARANCES}, got {appearance!r}")
    if appearance == "texture" and num_classes > len(_ADE_PATTERNS):
        raise ValueError(
            f"the texture ADE set has {len(_ADE_PATTERNS)} patterns; num_classes={num_classes} is too many"
        )
    rng = _rng(seed, "ade-classes", "none", 0)
    hues = (np.arange(num_classes) / num_classes + rng.uniform()) % 1.0
    rng.shuffle(hues)
    styles = [None]
    for k in range(num_classes):
        sat, val = rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.9)
        styles.append({"colour": _hsv_to_rgb(hues[k], sat, val) * 255.0, "texture": _TEXTURES[k % len(_TEXTURES)]})
        if appearance == "texture":
            styles[-1]["pattern"] = _ADE_PATTERNS[k]
    return styles


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64)


def _ade_class_texture(rng, h, w, style):
    if "pattern" in style:  # texture-defined class: random colours, the class's pattern, jittered geometry
        kind, params = style["pattern"]
        jittered = {}
        if "theta" in params:
            jittered["theta"] = params["theta"] + rng.uniform(-1.0, 1.0) * np.pi / 24
        for key in ("period", "cell"):
            if key in params:
                jittered[key] = params[key] * rng.uniform(0.85, 1.15)
        colour = rng.uniform(20, 235, size=3)
        second = _contrasting_colour(rng, colour)
        return _texture(rng, h, w, colour, kind, second=second, params=jittered)
    colour = np.clip(style["colour"] + rng.uniform(-18, 18, size=3), 0, 255)
    second = np.clip(colour * rng.uniform(0.55, 0.8), 0, 255)
    return _texture(rng, h, w, colour, style["texture"], second=second)


def _ade_scene(rng, h, w, styles):
    """Render an ADE-style scene. Returns ``(uint8 image, uint8 label map)``."""
    k = len(styles) - 1
    if k >= 3:
        n_stuff = (k + 1) // 2
        stuff, things = list(range(1, n_stuff + 1)), list(range(n_stuff + 1, k + 1))
    else:
        stuff = things = list(range(1, k + 1))
    img = np.zeros((h, w, 3), dtype=np.float32)
    label = np.zeros((h, w), dtype=np.uint8)
    # stuff: top / bottom split along a wavy horizon
    top, bottom = rng.choice(stuff, size=2, replace=False) if len(stuff) >= 2 else (stuff[0], stuff[0])
    xs = np.arange(w, dtype=np.float64) + 0.5
    horizon = h * rng.uniform(0.3, 0.65) + h * rng.uniform(0.02, 0.08) * np.sin(
        2 * np.pi * xs / (w * rng.uniform(0.4, 1.2)) + rng.uniform(0, 2 * np.pi)
    )
    upper = (np.arange(h)[:, None] + 0.5) < horizon[None, :]
    for cls, region in ((top, upper), (bottom, ~upper)):
        _paint(img, region, _ade_class_texture(rng, h, w, styles[cls]))
        label[region] = cls
    # things (labelled) and clutter (label 0 = other), painted in random order
    n_things, n_clutter = int(rng.integers(1, 6)), int(rng.integers(0, 3))
    kinds = [True] * n_things + [False] * n_clutter
    rng.shuffle(kinds)
    side = min(h, w)
    for is_thing in kinds:
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        poly = _random_polygon(shape, rng, h, w, 0.06 * side, 0.22 * side)
        mask = polygon_mask(poly, h, w)
        if not mask.any():
            continue
        if is_thing:
            cls = int(things[int(rng.integers(len(things)))])
            tex = _ade_class_texture(rng, h, w, styles[cls])
        else:
            cls = 0
            tex = _texture(rng, h, w, rng.uniform(0, 255, size=3), _TEXTURES[int(rng.integers(len(_TEXTURES)))])
        _paint(img, mask, tex)
        label[mask] = cls
    img = img * rng.uniform(0.75, 1.2) + rng.normal(0.0, 5.0, size=(h, w, 3)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def make_toy_images(out_dir, num_images=256, size=(160, 160), seed=0, overwrite=False, scenes="texture"):
    """Write an unlabeled image folder for pretraining: ``out_dir/img_00000.jpg`` ... (flat, RGB JPEG).

    ``scenes`` (:data:`IMAGE_SCENES`):

    * ``"texture"`` (default): scenes of the texture world of ``ade_texture/`` (two stuff regions under a wavy
      horizon, things and clutter on top), over all :data:`_ADE_PATTERNS` (a superset of the probe's classes),
      colours drawn per region. Categories are not given by colour here, so a pretrained backbone has something
      to learn that a random one lacks (colour invariance, the patterns); on the colour-defined ``ade/`` set a
      randomly initialised ViT, i.e. a random projection of the pixels, already scores 0.89-0.90 1-NN mIoU.
    * ``"objects"``: scenes like the COCO toy set's (2-6 textured shapes on varied backgrounds).

    Either kind draws from its own random streams, so no pretraining image equals a COCO or ADE image.
    Returns the list of written paths (sorted).
    """
    seed = _check_seed(seed)
    num_images = _check_count(num_images, "num_images", minimum=1)
    h, w = _check_size(size, "size")
    if scenes not in IMAGE_SCENES:
        raise ValueError(f"scenes must be one of {IMAGE_SCENES}, got {scenes!r}")
    _prepare_dir(out_dir, ["img_*.jpg"], overwrite)
    styles = _ade_class_styles(seed, len(_ADE_PATTERNS), "texture") if scenes == "texture" else None
    paths = []
    for i in range(num_images):
        if scenes == "texture":
            img, _ = _ade_scene(_rng(seed, "images-texture", "none", i), h, w, styles)
        else:
            img, _ = _object_scene(_rng(seed, "images", "none", i), h, w)
        path = os.path.join(out_dir, f"img_{i:05d}.jpg")
        _save_rgb_jpeg(img, path)
        paths.append(path)
    return paths


def toy_texture_classes(num_per_class=24, size=(96, 96), num_classes=6, seed=0, split="train"):
    """An in-memory image-classification set of the texture world: each image is one class's pattern over the whole
    frame (the patterns of ``ade_texture/``; colours, phase and geometry jitter drawn per image, brightness and
    noise as in the scenes), so the class is told by pattern alone.

    Returns ``(images uint8 (N, H, W, 3), labels int64 (N,))``, class-major. ``split`` ("train"/"val") selects
    independent random streams; neither split shares a stream with the pretraining images."""
    seed = _check_seed(seed)
    num_per_class = _check_count(num_per_class, "num_per_class", minimum=1)
    h, w = _check_size(size, "size")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    styles = _ade_class_styles(seed, num_classes, "texture")
    images, labels = [], []
    for k in range(1, num_classes + 1):
        for i in range(num_per_class):
            rng = _rng(seed, "texture-classes", split, (k - 1) * num_per_class + i)
            img = _ade_class_texture(rng, h, w, styles[k])
            img = img * rng.uniform(0.75, 1.2) + rng.normal(0.0, 5.0, size=(h, w, 3)).astype(np.float32)
            images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
            labels.append(k - 1)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _coco_split(out_dir, split, num, h, w, seed):
    img_dir = os.path.join(out_dir, split)
    images, annotations = [], []
    for i in range(num):
        img, objects = _object_scene(_rng(seed, "coco", split, i), h, w)
        image_id = i + 1
        file_name = f"{image_id:012d}.jpg"
        _save_rgb_jpeg(img, os.path.join(img_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "segmentation": [[float(v) for v in obj["polygon"].reshape(-1)]],
                    "area": float(obj["area"]),
                    "bbox": [float(v) for v in obj["bbox"]],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": "ssl-vit-toolkit toy COCO instance set (amodal polygons, see pretrain/data/toy.py)",
            "version": str(GENERATOR_VERSION),
            "seed": seed,
            "split": split,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in COCO_CATEGORIES],
    }


def make_toy_coco(out_dir, num_train=24, num_val=8, image_size=(256, 256), seed=0, overwrite=False):
    """Write a COCO-format instance-segmentation set.

    Files: ``out_dir/{train,val}/<012d id>.jpg`` and ``out_dir/annotations/instances_{train,val}.json``;
    categories :data:`COCO_CATEGORIES`; one polygon per annotation (amodal, see the module docstring),
    ``area`` = pixel count of the centre-sampled polygon mask, ``bbox`` = its tight extent, ``iscrowd`` = 0.

    Returns a dict of paths: ``root``, ``train_images``, ``val_images``, ``train_json``, ``val_json``.
    """
    seed = _check_seed(seed)
    num_train = _check_count(num_train, "num_train")
    num_val = _check_count(num_val, "num_val")
    h, w = _check_size(image_size, "image_size")
    paths = {
        "root": out_dir,
        "train_images": os.path.join(out_dir, "train"),
        "val_images": os.path.join(out_dir, "val"),
        "train_json": os.path.join(out_dir, "annotations", "instances_train.json"),
        "val_json": os.path.join(out_dir, "annotations", "instances_val.json"),
    }
    _prepare_dir(paths["train_images"], ["*.jpg"], overwrite)
    _prepare_dir(paths["val_images"], ["*.jpg"], overwrite)
    _prepare_dir(os.path.dirname(paths["train_json"]), ["instances_train.json", "instances_val.json"], overwrite)
    for split, num in (("train", num_train), ("val", num_val)):
        _json_dump(_coco_split(out_dir, split, num, h, w, seed), paths[f"{split}_json"])
    return paths


def toy_ade_metainfo(num_classes=6, seed=0, appearance="colour"):
    """MMSeg metainfo for the toy ADE set after ``reduce_zero_label``: the first ``num_classes`` ADE names.

    The names are spelled exactly as in ``mmseg.datasets.ADE20KDataset.METAINFO`` (including its ``"bed "``), so
    passing ``metainfo=toy_ade_metainfo(K)`` to ``ADE20KDataset`` gives the identity label map on ``0..K-1``.
    The palette is the toy set's class colours for ``seed``.
    """
    num_classes = _check_count(num_classes, "num_classes", minimum=2)
    if num_classes > len(ADE_CLASS_NAMES):
        raise ValueError(f"num_classes must be <= {len(ADE_CLASS_NAMES)}, got {num_classes}")
    styles = _ade_class_styles(_check_seed(seed), num_classes, appearance)
    palette = [[int(round(float(v))) for v in s["colour"]] for s in styles[1:]]
    return {"classes": tuple(ADE_CLASS_NAMES[:num_classes]), "palette": palette}


def make_toy_ade(
    out_dir, num_train=24, num_val=8, image_size=(256, 256), seed=0, num_classes=6, overwrite=False, appearance="colour"
):
    """Write an ADE20K-layout semantic-segmentation set (MMSeg ``ADE20KDataset``: ``.jpg`` images, ``.png`` labels).

    Files: ``out_dir/images/{training,validation}/ADE_{train,val}_<08d>.jpg`` and the same basenames as 8-bit
    single-channel PNGs under ``out_dir/annotations/{training,validation}``. Label 0 = other (ignored after
    ``reduce_zero_label``), labels ``1..num_classes`` = the first ``num_classes`` ADE20K classes.

    ``appearance="colour"``: every class has its own colour (and texture kind), so colour alone nearly gives the
    class away. ``appearance="texture"``: every class has its own pattern (stripe orientation/period, checker
    size, noise, flat) and colours are drawn per region independently of the class, so only the pattern tells
    classes apart; a probe must then read texture, not colour.

    Returns a dict of paths: ``root``, ``train_images``, ``val_images``, ``train_labels``, ``val_labels``.
    """
    seed = _check_seed(seed)
    num_train = _check_count(num_train, "num_train")
    num_val = _check_count(num_val, "num_val")
    num_classes = _check_count(num_classes, "num_classes", minimum=2)
    if num_classes > len(ADE_CLASS_NAMES):
        raise ValueError(f"num_classes must be <= {len(ADE_CLASS_NAMES)}, got {num_classes}")
    h, w = _check_size(image_size, "image_size")
    paths = {
        "root": out_dir,
        "train_images": os.path.join(out_dir, "images", "training"),
        "val_images": os.path.join(out_dir, "images", "validation"),
        "train_labels": os.path.join(out_dir, "annotations", "training"),
        "val_labels": os.path.join(out_dir, "annotations", "validation"),
    }
    for split in ("train", "val"):
        _prepare_dir(paths[f"{split}_images"], [f"ADE_{split}_*.jpg"], overwrite)
        _prepare_dir(paths[f"{split}_labels"], [f"ADE_{split}_*.png"], overwrite)
    styles = _ade_class_styles(seed, num_classes, appearance)
    stream = "ade" if appearance == "colour" else f"ade-{appearance}"
    for split, num in (("train", num_train), ("val", num_val)):
        for i in range(num):
            img, label = _ade_scene(_rng(seed, stream, split, i), h, w, styles)
            stem = f"ADE_{split}_{i:08d}"
            _save_rgb_jpeg(img, os.path.join(paths[f"{split}_images"], stem + ".jpg"))
            _save_label_png(label, os.path.join(paths[f"{split}_labels"], stem + ".png"))
    return paths


def _all_params(
    seed, num_images, image_size, coco_train, coco_val, coco_size, ade_train, ade_val, ade_size, ade_classes,
    image_scenes,
):
    if image_scenes not in IMAGE_SCENES:
        raise ValueError(f"image_scenes must be one of {IMAGE_SCENES}, got {image_scenes!r}")
    return {
        "version": GENERATOR_VERSION,
        "seed": _check_seed(seed),
        "images": {
            "num": _check_count(num_images, "num_images", 1),
            "size": list(_check_size(image_size, "size")),
            "scenes": image_scenes,
        },
        "coco": {
            "num_train": _check_count(coco_train, "coco_train"),
            "num_val": _check_count(coco_val, "coco_val"),
            "size": list(_check_size(coco_size, "coco_size")),
        },
        "ade": {
            "num_train": _check_count(ade_train, "ade_train"),
            "num_val": _check_count(ade_val, "ade_val"),
            "size": list(_check_size(ade_size, "ade_size")),
            "num_classes": _check_count(ade_classes, "ade_classes", 2),
        },
    }


def toy_data_paths(root):
    """The paths :func:`make_toy_all` writes under ``root`` (nothing is checked or created)."""
    coco, ade = os.path.join(root, "coco"), os.path.join(root, "ade")
    return {
        "root": root,
        "images": os.path.join(root, "images"),
        "coco": coco,
        "coco_train_images": os.path.join(coco, "train"),
        "coco_val_images": os.path.join(coco, "val"),
        "coco_train_json": os.path.join(coco, "annotations", "instances_train.json"),
        "coco_val_json": os.path.join(coco, "annotations", "instances_val.json"),
        "ade": ade,
        "ade_texture": os.path.join(root, "ade_texture"),
        "marker": os.path.join(root, _MARKER),
    }


def make_toy_all(
    root,
    seed=0,
    num_images=256,
    image_size=(160, 160),
    image_scenes="texture",
    coco_train=24,
    coco_val=8,
    coco_size=(256, 256),
    ade_train=24,
    ade_val=8,
    ade_size=(256, 256),
    ade_classes=6,
    overwrite=False,
):
    """Write all toy sets under ``root`` (``images/``, ``coco/``, ``ade/``, ``ade_texture/``).

    Returns :func:`toy_data_paths`.

    Not atomic and writes no marker; use :func:`ensure_toy_data` for an idempotent, crash-safe set.
    """
    _all_params(
        seed, num_images, image_size, coco_train, coco_val, coco_size, ade_train, ade_val, ade_size, ade_classes,
        image_scenes,
    )
    paths = toy_data_paths(root)
    make_toy_images(
        paths["images"], num_images=num_images, size=image_size, seed=seed, overwrite=overwrite, scenes=image_scenes
    )
    make_toy_coco(paths["coco"], coco_train, coco_val, image_size=coco_size, seed=seed, overwrite=overwrite)
    for key, appearance in (("ade", "colour"), ("ade_texture", "texture")):
        make_toy_ade(paths[key], ade_train, ade_val, image_size=ade_size, seed=seed, num_classes=ade_classes,
                     overwrite=overwrite, appearance=appearance)
    return paths


def _read_marker(root):
    try:
        with open(os.path.join(root, _MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_toy_data(
    root,
    seed=0,
    num_images=256,
    image_size=(160, 160),
    image_scenes="texture",
    coco_train=24,
    coco_val=8,
    coco_size=(256, 256),
    ade_train=24,
    ade_val=8,
    ade_size=(256, 256),
    ade_classes=6,
    force=False,
):
    """Make sure ``root`` holds the toy sets for these parameters; generate them only if needed.

    ``root/.complete`` (JSON of the parameters and :data:`GENERATOR_VERSION`) marks a finished set. If it is
    present and equal, nothing is written. Otherwise the sets are generated into a temporary sibling folder,
    the marker is written last, and the folder is renamed into place, so a crash never leaves a half-written
    set under ``root``. An existing ``root`` is replaced only if it is an earlier toy set (it has a marker) or
    empty; anything else is refused with an error rather than deleted. Concurrent callers (e.g. several
    ranks) are safe: the loser of the final rename discards its copy when the winner's marker matches.

    ``force=True`` regenerates even when the marker matches.

    Returns :func:`toy_data_paths` of ``root``.
    """
    params = _all_params(
        seed, num_images, image_size, coco_train, coco_val, coco_size, ade_train, ade_val, ade_size, ade_classes,
        image_scenes,
    )
    root = os.path.abspath(os.fspath(root))
    paths = toy_data_paths(root)
    if not force and _read_marker(root) == params:
        return paths
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"toy-data root {root} exists and is not a directory")
    if os.path.isdir(root) and os.listdir(root) and _read_marker(root) is None:
        raise FileExistsError(
            f"{root} is not empty and holds no {_MARKER} marker; refusing to replace it with toy data "
            "(choose another root or remove it yourself)"
        )
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        make_toy_all(
            tmp,
            seed=seed,
            num_images=num_images,
            image_size=image_size,
            image_scenes=image_scenes,
            coco_train=coco_train,
            coco_val=coco_val,
            coco_size=coco_size,
            ade_train=ade_train,
            ade_val=ade_val,
            ade_size=ade_size,
            ade_classes=ade_classes,
        )
        _json_dump(params, os.path.join(tmp, _MARKER))
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if not force and _read_marker(root) == params:  # a concurrent caller finished first: keep its set
            return paths
        if os.path.isdir(root):  # stale toy set (or empty dir): move it aside, then swap in the new one
            trash = os.path.join(parent, f".{os.path.basename(root)}.old-{uuid.uuid4().hex}")
            try:
                os.rename(root, trash)
            except FileNotFoundError:  # another process moved it already
                trash = None
        else:
            trash = None
        try:
            os.rename(tmp, root)
        except OSError:
            if _read_marker(root) != params:  # someone else's set that is not ours: do not clobber it
                raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return paths

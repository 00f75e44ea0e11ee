"""Scene painters of the toy sets: shapes, textures, backgrounds, object scenes and ADE-style scenes.

Everything here is pure computation: a ``numpy.random.Generator`` (or a seed) goes in, arrays come out; nothing
touches the disk.

Object scenes
    Shapes (:data:`SHAPES`: ``disk``, ``square``, ``triangle``, ``star``, ``cross``; mildly anisotropic, rotated)
    with random colours and textures (:data:`TEXTURES`: solid, stripes, checker, noise, gradient) on varied
    backgrounds (two-colour gradients, low-frequency noise, faint stripes). Texture and colour are independent of
    the shape, so the category must be read from the shape. Objects are painted in order, later ones occluding
    earlier ones; a placement is rejected if it would leave any earlier object with less than ``1 - MAX_OCCLUSION``
    of its pixels visible. Objects lie entirely inside the image. Each object's mask is its polygon rasterised by
    pycocotools (:func:`polygon_mask`), so the painted pixels are exactly what the COCO API decodes.

ADE-style scenes
    The top and bottom "stuff" regions (split by a wavy horizon) carry two different stuff classes, then 1-5
    objects of "thing" classes and 0-2 unlabeled clutter objects (label 0) are painted on top. Class appearance
    comes from :func:`ade_class_styles`: by colour (a dataset-wide colour and texture kind per class, jittered per
    image) or by texture (a fixed pattern per class, :data:`ADE_PATTERNS`, geometry jittered by a few percent,
    colours drawn per region independently of the class).

Random streams
    :func:`stream_rng` derives an independent generator from ``(seed, kind, split, index)``, so every image (and
    the dataset-wide class styles) has its own stream and no two kinds of image share one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

#: Shape names of the object scenes, in category order.
SHAPES = ("disk", "square", "triangle", "star", "cross")
#: Texture kinds of :func:`texture`.
TEXTURES = ("solid", "stripes", "checker", "noise", "gradient")
#: Largest fraction of an earlier object that later objects may cover (object scenes).
MAX_OCCLUSION = 0.3
#: How ADE classes are told apart: by colour (and texture kind) or by texture pattern alone.
ADE_APPEARANCES = ("colour", "texture")
#: Class patterns of the ``appearance="texture"`` classes: (texture kind, fixed geometry). Colours are drawn per
#: region, independently of the class, so only the pattern tells classes apart.
ADE_PATTERNS = (
    ("stripes", {"theta": 0.0, "period": 8.0}),
    ("stripes", {"theta": np.pi / 2, "period": 8.0}),
    ("stripes", {"theta": np.pi / 4, "period": 11.0}),
    ("checker", {"cell": 6.0}),
    ("noise", {}),
    ("solid", {}),
    ("stripes", {"theta": 3 * np.pi / 4, "period": 11.0}),
    ("checker", {"cell": 12.0}),
)

_KIND_CODES = {
    "images": 1,
    "coco": 2,
    "ade": 3,
    "ade-classes": 4,
    "ade-texture": 5,
    "images-texture": 6,
    "texture-classes": 7,
}
_SPLIT_CODES = {"none": 0, "train": 1, "val": 2}


def stream_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """Independent generator for one image (or one dataset-wide draw), derived from (seed, kind, split, index)."""
    ss = np.random.SeedSequence((seed, _KIND_CODES[kind], _SPLIT_CODES[split], int(index)))
    return np.random.Generator(np.random.PCG64(ss))


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
def polygon_mask(xy: np.ndarray | list[float], height: int, width: int) -> np.ndarray:
    """Rasterise one polygon with pycocotools (``frPyObjects`` + ``decode``), the COCO API's own rule.

    That rule approximates "pixel ``(r, c)`` is inside if its centre ``(c + 0.5, r + 0.5)`` is inside" (even-odd
    fill, COCO pixel convention: pixel ``c`` spans ``[c, c + 1)``) by walking the boundary on a 5x upsampled
    grid. Painting with this mask makes the pixels, ``area`` and ``bbox`` agree exactly with what pycocotools and
    detectron2 decode from the polygon.

    Args:
        xy: ``(N, 2)`` array (or flat ``[x0, y0, x1, y1, ...]`` list) of vertices in COCO pixel coordinates.
        height, width: size of the output mask.

    Returns:
        C-contiguous ``bool`` array of shape ``(height, width)``.
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {len(pts)}")
    rles = mask_utils.frPyObjects([pts.reshape(-1).tolist()], int(height), int(width))
    return np.ascontiguousarray(mask_utils.decode(rles)[:, :, 0], dtype=bool)


def _unit_shape(name: str, rng: np.random.Generator) -> np.ndarray:
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
    raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")


def random_polygon(name: str, rng: np.random.Generator, h: int, w: int, rmin: float, rmax: float) -> np.ndarray:
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
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells`` grid upsampled bicubically (deterministic)."""
    ch, cw = max(2, int(cells)), max(2, int(round(cells * w / h)))
    out = np.empty((h, w, channels), dtype=np.float32)
    for c in range(channels):
        grid = rng.uniform(0.0, 255.0, size=(ch, cw)).astype(np.uint8)
        up = Image.fromarray(grid, mode="L").resize((w, h), resample=Image.BICUBIC)
        out[..., c] = np.asarray(up, dtype=np.float32) / 127.5 - 1.0
    return out


def texture(
    rng: np.random.Generator,
    h: int,
    w: int,
    base: np.ndarray,
    kind: str,
    second: np.ndarray | None = None,
    params: dict[str, float] | None = None,
) -> np.ndarray:
    """A ``(h, w, 3)`` float32 image of one texture (:data:`TEXTURES`) around colour ``base``.

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
        raise ValueError(f"unknown texture {kind!r}; known: {TEXTURES}")
    return img.astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A varied background: two-colour gradient + low-frequency colour noise, sometimes faint stripes."""
    c0 = rng.uniform(0, 255, size=3)
    c1 = rng.uniform(0, 255, size=3)
    img = texture(rng, h, w, c0, "gradient", second=c1)
    img += _smooth_noise(rng, h, w, cells=rng.integers(3, 9), channels=3) * rng.uniform(15.0, 45.0)
    if rng.uniform() < 0.35:
        img = 0.8 * img + 0.2 * texture(rng, h, w, rng.uniform(0, 255, size=3), "stripes")
    if rng.uniform() < 0.35:
        img += rng.normal(0.0, 6.0, size=(h, w, 3)).astype(np.float32)
    return img


def contrasting_colour(rng: np.random.Generator, ref: np.ndarray, tries: int = 8, min_dist: float = 90.0) -> np.ndarray:
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


def _paint(img: np.ndarray, mask: np.ndarray, tex: np.ndarray) -> None:
    img[mask] = tex[mask]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# object scenes
# ----------------------------------------------------------------------------------------------------------------
def object_scene(
    rng: np.random.Generator, h: int, w: int, min_objects: int = 2, max_objects: int = 6
) -> tuple[np.ndarray, list[dict]]:
    """Render a scene of shapes. Returns ``(uint8 image, objects)``, objects as dicts in painting order.

    Each object: ``shape`` (a :data:`SHAPES` name), ``polygon`` (``(N, 2)`` vertices), ``area`` (pixels of its
    amodal mask), ``bbox`` (``[x0, y0, w, h]``, tight around the mask), ``texture`` and ``visible_area``."""
    img = _background(rng, h, w)
    n_target = int(rng.integers(min_objects, max_objects + 1))
    side = min(h, w)
    rmin, rmax = 0.07 * side, 0.2 * side
    full_masks, visible, objects = [], [], []
    attempts = 0
    while len(objects) < n_target and attempts < 40 * n_target:
        attempts += 1
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        poly = random_polygon(shape, rng, h, w, rmin, rmax)
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
        colour = contrasting_colour(rng, img[mask].mean(axis=0))
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = texture(rng, y1 - y0, x1 - x0, colour, kind)
        _paint(img[y0:y1, x0:x1], mask[y0:y1, x0:x1], tex)
        bbox = [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]
        objects.append({"shape": shape, "polygon": poly, "area": area, "bbox": bbox, "texture": kind})
    if len(objects) < min_objects:  # pragma: no cover - only for absurdly small images
        raise RuntimeError(f"could not place {min_objects} objects in a {h}x{w} image; use a larger size")
    for obj, vis in zip(objects, visible):
        obj["visible_area"] = int(vis.sum())
    return _to_uint8(img), objects


# ----------------------------------------------------------------------------------------------------------------
# ADE-style scenes
# ----------------------------------------------------------------------------------------------------------------
def ade_class_styles(seed: int, num_classes: int, appearance: str = "colour") -> list[dict | None]:
    """Dataset-wide appearance per class, drawn from the ``seed``'s class-style stream (index 0 unused).

    ``colour``: a base colour (distinct hues) and a texture kind per class. ``texture``: a pattern per class
    (:data:`ADE_PATTERNS`) with colours drawn per region; the ``colour`` entry is then only a palette colour
    for visualisation."""
    if appearance not in ADE_APPEARANCES:
        raise ValueError(f"appearance must be one of {ADE_APPEARANCES}, got {appearance!r}")
    if appearance == "texture" and num_classes > len(ADE_PATTERNS):
        raise ValueError(f"the texture ADE set has {len(ADE_PATTERNS)} patterns; num_classes={num_classes} is too many")
    rng = stream_rng(seed, "ade-classes", "none", 0)
    hues = (np.arange(num_classes) / num_classes + rng.uniform()) % 1.0
    rng.shuffle(hues)
    styles = [None]
    for k in range(num_classes):
        sat, val = rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.9)
        styles.append({"colour": _hsv_to_rgb(hues[k], sat, val) * 255.0, "texture": TEXTURES[k % len(TEXTURES)]})
        if appearance == "texture":
            styles[-1]["pattern"] = ADE_PATTERNS[k]
    return styles


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64)


def ade_class_texture(rng: np.random.Generator, h: int, w: int, style: dict) -> np.ndarray:
    """A ``(h, w, 3)`` float32 region of one class (a style of :func:`ade_class_styles`), jittered per call."""
    if "pattern" in style:  # texture-defined class: random colours, the class's pattern, jittered geometry
        kind, params = style["pattern"]
        jittered = {}
        if "theta" in params:
            jittered["theta"] = params["theta"] + rng.uniform(-1.0, 1.0) * np.pi / 24
        for key in ("period", "cell"):
            if key in params:
                jittered[key] = params[key] * rng.uniform(0.85, 1.15)
        colour = rng.uniform(20, 235, size=3)
        second = contrasting_colour(rng, colour)
        return texture(rng, h, w, colour, kind, second=second, params=jittered)
    colour = np.clip(style["colour"] + rng.uniform(-18, 18, size=3), 0, 255)
    second = np.clip(colour * rng.uniform(0.55, 0.8), 0, 255)
    return texture(rng, h, w, colour, style["texture"], second=second)


def jitter_brightness_and_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Global brightness jitter and per-pixel Gaussian noise (sd 5), rounded to uint8."""
    h, w = img.shape[:2]
    return _to_uint8(img * rng.uniform(0.75, 1.2) + rng.normal(0.0, 5.0, size=(h, w, 3)).astype(np.float32))


def _paint_stuff(rng: np.random.Generator, img: np.ndarray, label: np.ndarray, styles: list, stuff: list[int]) -> None:
    """Paint two stuff classes above and below a wavy horizon."""
    h, w = label.shape
    top, bottom = rng.choice(stuff, size=2, replace=False) if len(stuff) >= 2 else (stuff[0], stuff[0])
    xs = np.arange(w, dtype=np.float64) + 0.5
    horizon = h * rng.uniform(0.3, 0.65) + h * rng.uniform(0.02, 0.08) * np.sin(
        2 * np.pi * xs / (w * rng.uniform(0.4, 1.2)) + rng.uniform(0, 2 * np.pi)
    )
    upper = (np.arange(h)[:, None] + 0.5) < horizon[None, :]
    for cls, region in ((top, upper), (bottom, ~upper)):
        _paint(img, region, ade_class_texture(rng, h, w, styles[cls]))
        label[region] = cls


def ade_scene(rng: np.random.Generator, h: int, w: int, styles: list) -> tuple[np.ndarray, np.ndarray]:
    """Render an ADE-style scene over the classes of ``styles``. Returns ``(uint8 image, uint8 label map)``."""
    k = len(styles) - 1
    if k >= 3:
        n_stuff = (k + 1) // 2
        stuff, things = list(range(1, n_stuff + 1)), list(range(n_stuff + 1, k + 1))
    else:
        stuff = things = list(range(1, k + 1))
    img = np.zeros((h, w, 3), dtype=np.float32)
    label = np.zeros((h, w), dtype=np.uint8)
    _paint_stuff(rng, img, label, styles, stuff)
    # things (labelled) and clutter (label 0 = other), painted in random order
    n_things, n_clutter = int(rng.integers(1, 6)), int(rng.integers(0, 3))
    kinds = [True] * n_things + [False] * n_clutter
    rng.shuffle(kinds)
    side = min(h, w)
    for is_thing in kinds:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        poly = random_polygon(shape, rng, h, w, 0.06 * side, 0.22 * side)
        mask = polygon_mask(poly, h, w)
        if not mask.any():
            continue
        if is_thing:
            cls = int(things[int(rng.integers(len(things)))])
            tex = ade_class_texture(rng, h, w, styles[cls])
        else:
            cls = 0
            tex = texture(rng, h, w, rng.uniform(0, 255, size=3), TEXTURES[int(rng.integers(len(TEXTURES)))])
        _paint(img, mask, tex)
        label[mask] = cls
    return jitter_brightness_and_noise(rng, img), label

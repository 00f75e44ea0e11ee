"""The polygon rasteriser: pycocotools' rule, against the pixel-centre rule and the former numpy rasteriser."""

from __future__ import annotations

import numpy as np

import toydata
from toydata.scenes import SHAPES, random_polygon


def _coco_rule_reference(xy, h, w, scale=5):
    """Independent numpy rendition of the COCO API's polygon rasteriser (``rleFrPoly`` of cocoapi's maskApi.c):
    vertices snapped to a ``scale``x grid, edges walked point by point, and a column-major run toggled wherever
    the walk crosses a column centre; the mask is the parity of the toggles."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    x, y = np.trunc(scale * pts.T + 0.5).astype(np.int64)  # C's (int) cast truncates toward zero
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(pts)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        along_x = abs(xe - xs) >= abs(ys - ye)
        flip = xs > xe if along_x else ys > ye
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        n = abs(xe - xs) if along_x else abs(ye - ys)
        t = np.arange(n + 1, dtype=np.int64)
        t = n - t if flip else t
        slope = ((ye - ys) if along_x else (xe - xs)) / n if n else 0.0
        walk = np.trunc((ys if along_x else xs) + slope * t + 0.5).astype(np.int64)
        us.append(t + xs if along_x else walk)
        vs.append(walk if along_x else t + ys)
    u, v = np.concatenate(us), np.concatenate(vs)
    step = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = (np.minimum(u[step], u[step - 1]) + 0.5) / scale - 0.5
    yd = (np.minimum(v[step], v[step - 1]) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    runs = (xd[keep] * h + np.ceil(np.clip(yd[keep], 0, h))).astype(np.int64)
    parity = np.cumsum(np.bincount(runs, minlength=h * w + 1)[: h * w]) % 2
    return parity.astype(bool).reshape(w, h).T


def _centre_rule(xy, h, w):
    """Even-odd point-in-polygon test at every pixel centre ``(c + 0.5, r + 0.5)`` (a ray cast towards +x)."""
    v = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    x0, y0 = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    py, px = (np.mgrid[0:h, 0:w] + 0.5)[..., None]
    straddles = (y0 <= py) != (y1 <= py)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return ((straddles & (px < crossing)).sum(-1) % 2).astype(bool)


def _distance_to_outline(xy, h, w):
    """Distance from every pixel centre to the nearest edge of the polygon."""
    a = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    ab = np.roll(a, -1, axis=0) - a
    py, px = np.mgrid[0:h, 0:w] + 0.5
    p = np.stack([px, py], -1)[..., None, :]
    t = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(-1)


def test_polygon_mask_of_a_rectangle_is_the_pixels_whose_centres_it_holds():
    # x in [2.3, 7.6], y in [1.2, 4.9]: centres 2.5..7.5 (6 columns) and 1.5..4.5 (4 rows)
    mask = toydata.polygon_mask([2.3, 1.2, 7.6, 1.2, 7.6, 4.9, 2.3, 4.9], 8, 10)
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:5, 2:8] = True
    assert mask.dtype == bool and mask.flags.c_contiguous and int(mask.sum()) == 24
    np.testing.assert_array_equal(mask, expected)


def test_polygon_mask_differs_from_the_centre_rule_only_at_the_outline():
    # the COCO rule works on a 5x grid: vertices and boundary points snap by <= 0.1 px per axis
    rng = np.random.default_rng(0)
    area = differing = 0
    for i in range(200):
        poly = random_polygon(SHAPES[i % len(SHAPES)], rng, 64, 80, 5.0, 20.0)
        mask, ref = toydata.polygon_mask(poly, 64, 80), _centre_rule(poly, 64, 80)
        off = mask != ref
        area, differing = area + int(ref.sum()), differing + int(off.sum())
        assert (_distance_to_outline(poly, 64, 80)[off] < 0.3).all(), i
    assert area > 50_000 and differing / area < 0.03, (area, differing)


def test_polygon_mask_equals_the_former_numpy_rasteriser():
    # the sets of GENERATOR_VERSION 3 (and 4: the same pixels) were painted with _coco_rule_reference; pycocotools
    # must reproduce it exactly
    rng = np.random.default_rng(123)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(8, 70, size=2))
        k = int(rng.integers(3, 12))
        poly = np.round(rng.uniform(-8.0, max(h, w) + 8.0, size=2 * k), 2)  # includes vertices outside the image
        np.testing.assert_array_equal(toydata.polygon_mask(poly, h, w), _coco_rule_reference(poly, h, w))

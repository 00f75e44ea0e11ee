"""MAXA's dense targets from the toy sets: instance ids from COCO-format polygons (pycocotools), instance
boundaries, the distance transform to the boundaries, semantic labels from ADE-layout sets, depth maps."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def instance_map(coco, image_id: int, height: int, width: int) -> np.ndarray:
    """``(H, W)`` int32: 0 background, ``i`` the i-th (1-based) annotation of the image, later annotations drawn over
    earlier ones (crowd annotations skipped)."""
    out = np.zeros((height, width), dtype=np.int32)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd")]
    for i, ann in enumerate(anns, start=1):
        out[coco.annToMask(ann).astype(bool)] = i
    return out


def resize_labels(labels: torch.Tensor, side: int) -> torch.Tensor:
    """Nearest-neighbour resize of ``(H, W)`` integer labels to ``side x side``."""
    x = labels[None, None].float()
    return F.interpolate(x, size=(side, side), mode="nearest")[0, 0].long()


def boundaries(instances: torch.Tensor) -> torch.Tensor:
    """Boolean ``(H, W)``: pixels whose 4-neighbourhood holds another instance id (background counts as one), on
    both sides of every edge; the image border is not a boundary."""
    x = instances
    out = torch.zeros_like(x, dtype=torch.bool)
    dy, dx = x[1:] != x[:-1], x[:, 1:] != x[:, :-1]
    out[1:] |= dy
    out[:-1] |= dy
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    return out


def distance_transform(edges: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance (pixels) from every pixel to the nearest ``True`` pixel of ``edges`` ``(H, W)``; without
    any, the image diagonal everywhere."""
    h, w = edges.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pix = torch.stack([ys, xs], dim=-1).reshape(-1, 2).float()
    src = pix[edges.reshape(-1)]
    if src.numel() == 0:
        return torch.full((h, w), float(np.hypot(h, w)))
    d = torch.cat([torch.cdist(pix[i : i + chunk], src).min(dim=1).values for i in range(0, len(pix), chunk)])
    return d.reshape(h, w)


def normalised_distance(instances: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The MAXA distance-transform target: distance to the nearest instance boundary over ``scale`` (default: a
    tenth of the image side), clipped to [0, 1]."""
    scale = scale or instances.shape[0] / 10.0
    return (distance_transform(boundaries(instances)) / scale).clamp(max=1.0)


def load_coco_split(root: str, split: str, side: int, max_images: int | None = None):
    """Images ``(N, 3, side, side)`` in [0, 1], instance maps ``(N, side, side)`` and file names of
    ``<root>/<split>`` with ``<root>/annotations/instances_<split>.json``; image ids sorted."""
    from pycocotools.coco import COCO

    from ..images import load_image

    ann = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(ann):
        raise FileNotFoundError(f"no COCO annotations {ann}")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann)
    ids = sorted(coco.getImgIds())[:max_images]
    images, inst, names = [], [], []
    for i in ids:
        info = coco.loadImgs([i])[0]
        names.append(info["file_name"])
        images.append(load_image(os.path.join(root, split, info["file_name"]), side))
        m = torch.from_numpy(instance_map(coco, i, info["height"], info["width"]))
        inst.append(resize_labels(m, side))
    return torch.stack(images), torch.stack(inst), names


def load_ade_split(root: str, split: str, side: int, max_images: int | None = None):
    """Images and pixel labels ``(N, side, side)`` (ADE raw labels: 0 ignore -> 255, k -> k - 1)."""
    from ..images import load_image, load_label
    from ..probes import ade_pairs, reduce_zero_label

    pairs = ade_pairs(root, split)[:max_images]
    images = torch.stack([load_image(i, side) for i, _ in pairs])
    labels = torch.stack([reduce_zero_label(load_label(a, side)) for _, a in pairs])
    return images, labels


def load_depth_maps(root: str, split: str, file_names, side: int) -> torch.Tensor | None:
    """Depth maps ``(N, side, side)`` in [0, 1] from ``<root>/depth/<split>/<stem>.png`` (16-bit PNG, 0 = near,
    65535 = far), or ``None`` when the set has none."""
    from PIL import Image

    folder = os.path.join(root, "depth", split)
    if not os.path.isdir(folder):
        return None
    out = []
    for name in file_names:
        arr = np.asarray(Image.open(os.path.join(folder, os.path.splitext(name)[0] + ".png")), dtype=np.float32)
        t = torch.from_numpy(arr / 65535.0)[None, None]
        out.append(F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out)

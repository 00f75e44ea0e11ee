"""A complete toy-data root: :func:`make_toy_all` writes every set of a :class:`~toydata.spec.ToySpec`,
:func:`ensure_toy_data` does so idempotently and atomically, behind a ``.complete`` marker."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

from toydata._files import json_dump
from toydata.ade import make_toy_ade
from toydata.coco import make_toy_coco
from toydata.depth import make_toy_depth
from toydata.images import make_toy_images
from toydata.spec import ToySpec

MARKER = ".complete"


def toy_data_paths(root: str) -> dict[str, str]:
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
        "coco_depth": os.path.join(coco, "depth"),
        "ade": ade,
        "ade_texture": os.path.join(root, "ade_texture"),
        "marker": os.path.join(root, MARKER),
    }


def _spec_or_default(spec: ToySpec | None) -> ToySpec:
    if spec is None:
        return ToySpec()
    if not isinstance(spec, ToySpec):
        raise TypeError(f"spec must be a ToySpec, got {spec!r}")
    return spec


def make_toy_all(root: str, spec: ToySpec | None = None, overwrite: bool = False) -> dict[str, str]:
    """Write all toy sets of ``spec`` (default ``ToySpec()``) under ``root``: ``images/``, ``coco/`` (with its depth
    maps ``coco/depth/``), ``ade/``, ``ade_texture/``. Returns :func:`toy_data_paths`.

    Not atomic and writes no marker; use :func:`ensure_toy_data` for an idempotent, crash-safe set.
    """
    spec = _spec_or_default(spec)
    paths = toy_data_paths(root)
    seed, im, coco, ade = spec.seed, spec.images, spec.coco, spec.ade
    make_toy_images(paths["images"], im.num, size=im.size, seed=seed, overwrite=overwrite, scenes=im.scenes)
    make_toy_coco(paths["coco"], coco.num_train, coco.num_val, image_size=coco.size, seed=seed, overwrite=overwrite)
    make_toy_depth(paths["coco"])  # coco/depth/<split>/<stem>.png from the layer order (toydata/depth.py)
    for key, appearance in (("ade", "colour"), ("ade_texture", "texture")):
        make_toy_ade(
            paths[key],
            ade.num_train,
            ade.num_val,
            image_size=ade.size,
            seed=seed,
            num_classes=ade.num_classes,
            overwrite=overwrite,
            appearance=appearance,
        )
    return paths


def _read_marker(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_replaceable(root: str) -> None:
    """Refuse a ``root`` that is a file, or a non-empty folder that is not a toy set (has no marker)."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"toy-data root {root} exists and is not a directory")
    if os.path.isdir(root) and os.listdir(root) and _read_marker(root) is None:
        raise FileExistsError(
            f"{root} is not empty and holds no {MARKER} marker; refusing to replace it with toy data "
            "(choose another root or remove it yourself)"
        )


def _swap_in(tmp: str, root: str, params: dict) -> None:
    """Rename the finished ``tmp`` to ``root``, moving a stale toy set (or empty folder) at ``root`` aside first."""
    trash = None
    if os.path.isdir(root):
        trash = os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.old-{uuid.uuid4().hex}")
        try:
            os.rename(root, trash)
        except FileNotFoundError:  # another process moved it already
            trash = None
    try:
        os.rename(tmp, root)
    except OSError:
        if _read_marker(root) != params:  # someone else's set that is not ours: do not clobber it
            raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def ensure_toy_data(root: str | os.PathLike, spec: ToySpec | None = None, force: bool = False) -> dict[str, str]:
    """Make sure ``root`` holds the toy sets of ``spec`` (default ``ToySpec()``); generate them only if needed.

    ``root/.complete`` (:meth:`ToySpec.marker`: the spec and :data:`~toydata.spec.GENERATOR_VERSION`) marks a
    finished set. If it is present and equal, nothing is written. Otherwise the sets are generated into a
    temporary sibling folder, the marker is written last, and the folder is renamed into place, so a crash never
    leaves a half-written set under ``root``. An existing ``root`` is replaced only if it is an earlier toy set
    (it has a marker) or empty; anything else is refused with an error rather than deleted. Concurrent callers
    (e.g. several ranks) are safe: the loser of the final rename discards its copy when the winner's marker
    matches.

    ``force=True`` regenerates even when the marker matches.

    Returns :func:`toy_data_paths` of ``root``.
    """
    spec = _spec_or_default(spec)
    params = spec.marker()
    root = os.path.abspath(os.fspath(root))
    paths = toy_data_paths(root)
    if not force and _read_marker(root) == params:
        return paths
    _check_replaceable(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    try:
        make_toy_all(tmp, spec)
        json_dump(params, os.path.join(tmp, MARKER))
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if force or _read_marker(root) != params:  # else a concurrent caller finished first: keep its set
            _swap_in(tmp, root, params)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return paths

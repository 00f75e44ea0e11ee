"""Where the transfer runs find their datasets: one environment variable per dataset (docs/usage.md, "Dataset
roots").

* ``ADE20K_ROOT``: the ADE20K configs; unset: the config's ``data_root``, ``data/ade/ADEChallengeData2016``.
* ``TOY_ADE_ROOT``: ``segmenter_linear_vit_tiny_toy.py``; unset: ``data/toy/ade``.
* ``DETECTRON2_DATASETS``: the COCO configs (read by detectron2 itself); unset: ``./datasets`` (holding ``coco/``).
* ``TOY_COCO_ROOT``: ``mask_rcnn_vit_tiny_toy.py``; unset: ``train.toy_coco_root``, ``data/toy/coco``.

An explicit command-line root (``--data-root`` / ``data_root=...`` for ADE20K, ``train.toy_coco_root=...`` for the
toy COCO set) wins over the variable, the variable over the config's default. A config never reads its sibling's
variable: :func:`ignored_variable_note` says so when only the sibling is set.
"""

from __future__ import annotations

import os

#: The variables of each dataset family: a config reads exactly one of them.
ADE_VARIABLES = ("ADE20K_ROOT", "TOY_ADE_ROOT")
COCO_VARIABLES = ("DETECTRON2_DATASETS", "TOY_COCO_ROOT")


def resolve_root(variable: str, default: str, explicit: str | None = None, explicit_name: str = "") -> tuple[str, str]:
    """``(root, where it came from)``: ``explicit`` (named ``explicit_name``), else ``$variable``, else
    ``default``."""
    if explicit:
        return str(explicit), explicit_name
    value = os.environ.get(variable)
    if value:
        return value, f"${variable}"
    return str(default), f"the config's default; {variable} is unset"


def ignored_variable_note(variable: str, family: tuple[str, ...]) -> str | None:
    """A sentence when ``variable`` (the one the config reads) is unset but a sibling of ``family`` is set."""
    if os.environ.get(variable):
        return None
    others = [v for v in family if v != variable and os.environ.get(v)]
    if not others:
        return None
    them = ", ".join(f"{v}={os.environ[v]}" for v in others)
    return f"{them} is set, but this config reads {variable} (unset) and ignores {', '.join(others)}"


def missing_root_message(what: str, root: str, where: str, variable: str, needs: str, note: str | None) -> str:
    """One line: ``what`` was not found at ``root`` (``where``), which variable to set, and ``note``."""
    line = f"{what} not found at {os.path.abspath(root)} ({where}): it needs {needs}. Set {variable}=<folder>"
    return line + (f" ({note})" if note else "")

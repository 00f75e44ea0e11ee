"""Label loading that names the file it could not read (docs/usage.md, "Reliability").

MMSeg's ``LoadAnnotations`` decodes a truncated or corrupt label PNG with a bare ``OSError: image file is
truncated`` (Pillow), without the path. :class:`LoadAnnotationsNamingFile` (registered in MMSeg's ``TRANSFORMS``;
the ADE20K configs use it in place of ``LoadAnnotations``) and :func:`read_label_png` (for code that reads label
PNGs directly) raise :class:`UnreadableLabelError` naming the file instead.
"""

from __future__ import annotations

import numpy as np


class UnreadableLabelError(OSError):
    """A label file cannot be decoded; the message names it."""


def unreadable(path: str, error: BaseException) -> UnreadableLabelError:
    """The error to raise for ``path`` that failed to decode with ``error``."""
    return UnreadableLabelError(f"cannot read the label file {path} ({type(error).__name__}: {error})")


def read_label_png(path: str) -> np.ndarray:
    """The label map of ``path`` as an array (Pillow); :class:`UnreadableLabelError` naming it if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated / unidentified / broken chunks
        raise unreadable(path, e) from e


def _register():
    from mmseg.datasets.transforms import LoadAnnotations
    from mmseg.registry import TRANSFORMS

    class LoadAnnotationsNamingFile(LoadAnnotations):
        """MMSeg's ``LoadAnnotations``; a label file that does not decode raises :class:`UnreadableLabelError`
        naming ``results["seg_map_path"]``."""

        def _load_seg_map(self, results: dict) -> None:
            try:
                super()._load_seg_map(results)
            except (OSError, ValueError, SyntaxError) as e:
                raise unreadable(results.get("seg_map_path"), e) from e

    TRANSFORMS.register_module(module=LoadAnnotationsNamingFile, force=True)
    return LoadAnnotationsNamingFile


try:  # registered on import so that configs can name it (custom_imports this module)
    LoadAnnotationsNamingFile = _register()
except ImportError:  # pragma: no cover - mmseg missing: read_label_png still works
    LoadAnnotationsNamingFile = None

"""A robust, unlabeled image folder: corrupt files are skipped and counted, never fatal.

Sources: a directory (scanned recursively, symlinked folders followed once, paths sorted so that the index
is deterministic) or a text file listing image paths, one per line (blank lines and ``#`` comments
ignored; relative paths are resolved against the list file's directory).

Only files whose extension is in ``extensions`` are candidates when scanning a directory (other files are
counted in ``num_ignored``, not as skipped); a list file's entries are all candidates. A candidate that
cannot be opened *and fully decoded* (``img.load()``: truncated JPEG/PNG, non-image bytes behind an image
extension, empty files, missing listed files) is **skipped**: :meth:`ImageFolderDataset.load` returns
``None``, the path is recorded in ``skipped_paths`` / ``num_skipped`` and logged once as a warning on the
``"pretrain"`` logger. ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone (False by default), so
truncated files are detected unless some other code enabled it process-wide. 16-bit grayscale images are
scaled to 8 bits (PIL's RGB conversion would clip them at 255).

Indices never change: ``len(dataset)`` is the number of candidates, and a skipped index stays in the index
(``SSLDataset`` substitutes another image deterministically). Because lazily discovered skips happen in
DataLoader worker processes, the main process only sees them if it validates: ``validate=True`` (or a later
call of :meth:`ImageFolderDataset.scan_for_corrupt`) opens and decodes every candidate once up front, which is
fine for small sets; on large sets leave it lazy and rely on the per-worker warnings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger("pretrain")


#: Grayscale modes wider than 8 bits (16-bit PNG/TIFF open as one of these); PIL's convert("RGB") clips them at 255.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _gray_to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer holding 16-bit values) grayscale image scaled to 8 bits: ``v * 255 / 65535``."""
    values = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")


def _apply_draft(im: Image.Image, scale: int) -> None:
    """Ask the JPEG decoder of the unopened ``im`` for its ``1/scale`` reduction (DCT scaling); no-op otherwise."""
    if scale not in (1, 2, 4, 8):
        raise ValueError(f"a reduced decode is 1/1, 1/2, 1/4 or 1/8, got 1/{scale}")
    if scale > 1 and im.format == "JPEG":
        width, height = im.size
        im.draft(im.mode, (width // scale, height // scale))  # same mode: only the size changes


def _read_header(path: str) -> Image.Image:
    """The image at ``path`` opened lazily: PIL reads the header (format, size, mode), no pixel data."""
    im = Image.open(path)
    im.size  # noqa: B018 - the header is parsed on open; touching it keeps the intent visible
    return im


def _scan_directory(root: str, extensions: tuple[str, ...]) -> tuple[list[str], int]:
    """Sorted candidate paths under ``root`` and the number of non-candidate files seen."""
    paths, ignored = [], 0
    seen_dirs = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # symlink cycle or a folder linked twice: visit once
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.lower().endswith(extensions) and os.path.isfile(path):
                paths.append(path)
            else:
                ignored += 1
    paths.sort(key=lambda p: os.path.relpath(p, root))
    return paths, ignored


def _read_list(list_file: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(list_file))
    paths = []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = os.path.expanduser(line)
            paths.append(line if os.path.isabs(line) else os.path.normpath(os.path.join(base, line)))
    return paths


class ImageFolderDataset:
    """Unlabeled images from a folder or a list file; ``load(index)`` returns an RGB PIL image or ``None``.

    Args:
        root_or_list: a directory (recursive scan) or a text file with one image path per line.
        extensions: file-name suffixes (case-insensitive) that count as images when scanning a directory.
        validate: ``True``: open and fully decode every candidate now, so that ``num_skipped`` is known in this
            process; ``"header"``: read every candidate's header only (cheap: finds empty, missing and non-image
            files; truncated ones are found, and substituted, when they are loaded); ``False``: nothing up front.

    Attributes:
        paths: candidate paths (index order). ``num_ignored``: non-image files seen while scanning.
        skipped_paths: candidates found unreadable so far in this process (sorted by discovery);
        ``num_skipped`` is their count.
    """

    def __init__(
        self,
        root_or_list: str | os.PathLike,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        validate: bool | str = False,
    ):
        source = os.fspath(root_or_list)
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not self.extensions:
            raise ValueError("extensions must name at least one file suffix")
        self.source = source
        self.num_ignored = 0
        if os.path.isdir(source):
            self.paths, self.num_ignored = _scan_directory(source, self.extensions)
            if not self.paths:
                raise ValueError(
                    f"no image file found under {source!r} (looked recursively for {', '.join(self.extensions)}; "
                    f"{self.num_ignored} other files seen)"
                )
        elif os.path.isfile(source):
            self.paths = _read_list(source)
            if not self.paths:
                raise ValueError(f"image list file {source!r} names no image path")
        else:
            raise FileNotFoundError(f"image source {source!r} is neither a directory nor a list file")
        self.skipped_paths: list[str] = []
        self._bad: set[int] = set()
        if validate and self.scan_for_corrupt(decode=validate != "header") == len(self):
            raise ValueError(f"none of the {len(self)} image files of {source!r} can be read")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, n={len(self)}, skipped={self.num_skipped}, "
            f"ignored={self.num_ignored})"
        )

    @property
    def num_skipped(self) -> int:
        return len(self._bad)

    def _mark_bad(self, index: int, error: BaseException) -> None:
        if index in self._bad:
            return
        self._bad.add(index)
        self.skipped_paths.append(self.paths[index])
        logger.warning("skipping unreadable image %s (%s: %s)", self.paths[index], type(error).__name__, error)

    @staticmethod
    def _open(path: str, draft=None) -> Image.Image:
        with Image.open(path) as im:
            if draft is not None:
                _apply_draft(im, draft(im.size))
            im.load()  # full decode: raises on truncated data
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode in _WIDE_GRAY_MODES:
                im = _gray_to_8bit(im)
            return im if im.mode == "RGB" else im.convert("RGB")  # convert("RGB") of an RGB image is a copy

    def load(self, index: int, draft=None) -> Image.Image | None:
        """The image at ``index`` as RGB, or ``None`` if it cannot be read (recorded in ``skipped_paths``).

        ``draft``: a callable ``(width, height) -> s`` called with the header's size before decoding; a JPEG is then
        decoded at ``1/s`` (``s`` in 1, 2, 4, 8: ``ceil(width / s)`` x ``ceil(height / s)``, PIL's ``draft``), any
        other format at full size."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = index % len(self)
        if index in self._bad:
            return None
        try:
            return self._open(self.paths[index], draft)
        except Exception as error:  # noqa: BLE001 - any decoder failure means "skip this file"
            self._mark_bad(index, error)
            return None

    def scan_for_corrupt(self, indices: Iterable[int] | None = None, decode: bool = True) -> int:
        """Open the given (default: all) candidates, fully decoded (``decode``) or their headers only, which finds
        empty, missing and non-image files but not truncated ones; returns ``num_skipped`` afterwards."""
        check = self._open if decode else _read_header
        for index in range(len(self)) if indices is None else indices:
            if index not in self._bad:
                try:
                    check(self.paths[index]).close()
                except Exception as error:  # noqa: BLE001
                    self._mark_bad(index, error)
        return self.num_skipped

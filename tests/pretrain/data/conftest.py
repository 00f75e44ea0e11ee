"""Fixtures of the data-pipeline tests."""

import pytest

from tests.support.images import noise_image


def _write_image_dir(tmp_path):
    """Four good images (jpg, png RGBA, png L, bmp) plus three bad ones and a non-image file, under ``tmp_path``."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    noise_image(80, 60, 1).save(root / "a.jpg", quality=90)
    noise_image(50, 70, 2, "RGBA").save(root / "sub" / "b.png")
    noise_image(64, 64, 3, "L").save(root / "sub" / "c.png")
    noise_image(40, 30, 4).save(root / "d.bmp")
    full = tmp_path / "full.jpg"
    noise_image(96, 96, 5).save(full, quality=95)
    data = full.read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n" * 20)
    (root / "sub" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    good = {"a.jpg", "sub/b.png", "sub/c.png", "d.bmp"}
    bad = {"trunc.jpg", "text.jpg", "sub/empty.png"}
    return root, good, bad


@pytest.fixture
def image_dir(tmp_path):
    """Four good images (jpg, png RGBA, png L, bmp) plus three bad ones and a non-image file."""
    return _write_image_dir(tmp_path)


@pytest.fixture(scope="module")
def shared_image_dir(tmp_path_factory):
    """:func:`image_dir` shared by the tests of one module: only for tests that write nothing into it."""
    return _write_image_dir(tmp_path_factory.mktemp("shared"))

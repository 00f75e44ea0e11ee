"""Fixtures of the Segmenter tests: a toy ADE set and a tiny converted reference checkpoint."""

import pytest

from tests.transfer.segmenter.helpers import (
    make_toy_ade_fixture,
    reference_vit,
    save_converted,
)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return make_toy_ade_fixture(str(tmp_path_factory.mktemp("toy_ade")))


@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory):
    ref = reference_vit()
    path = save_converted(ref, str(tmp_path_factory.mktemp("ckpt") / "tiny_mmseg.pth"))
    return ref, path

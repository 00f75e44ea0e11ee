"""Fixtures of the analysis tests: exported tiny backbones and a toy ADE set."""

import pytest
import torch

from pretrain.export import export_backbone
from tests.transfer.analysis.helpers import _pico
from toydata import make_toy_ade, make_toy_images


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """Two exported random tiny backbones (one with 2 registers) and a small image folder."""
    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    paths = []
    for i, regs in enumerate((0, 2)):
        paths.append(str(root / f"tiny{i}.pth"))
        export_backbone(_pico(num_register_tokens=regs), paths[-1])
    make_toy_images(str(root / "imgs"), num_images=3, size=(64, 64), seed=0)
    return root, paths


@pytest.fixture(scope="module")
def toy_ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_toy_ade(str(root), num_train=6, num_val=3, image_size=(64, 64), seed=0, num_classes=4)
    return str(root)

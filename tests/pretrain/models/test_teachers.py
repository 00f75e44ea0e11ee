"""CR2PQ's frozen teachers (pretrain/models/teachers.py): the output grid follows the teacher, weights files load,
the teacher stays frozen and gets the images in its own normalisation."""

from __future__ import annotations

import pytest
import timm
import torch

from pretrain.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from pretrain.export import export_backbone
from pretrain.models.teachers import FrozenTeacher, build_teacher
from pretrain.models.vit import ViTConfig, build_vit


@pytest.mark.parametrize(("stage", "grid", "width"), [(0, (2, 2), 512), (3, (4, 4), 256), (2, (8, 8), 128)])
def test_a_resnet_teacher_grid_is_its_feature_stride_at_the_input_size(stage, grid, width):
    teacher = build_teacher("timm", "resnet18", stage=stage)
    assert teacher.grid(64) == (grid, width)
    assert teacher(torch.zeros(2, 3, 64, 64)).shape == (2, grid[0] * grid[1], width)


def test_a_resnet_teacher_reads_a_state_dict_file_with_prefixes_and_a_classifier(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # fc.* included, as in torchvision files
    torch.save(state, tmp_path / "r18.pth")
    teacher = build_teacher("timm", "resnet18", weights=str(tmp_path / "r18.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.eval().forward_features(x).flatten(2).transpose(1, 2)
    assert torch.allclose(teacher(x), expected, atol=1e-5)


def test_a_missing_weights_file_is_an_error_naming_the_key():
    with pytest.raises(FileNotFoundError, match="cr2pq.teacher_weights"):
        build_teacher("timm", "resnet18", weights="/no/such/file.pth")


def test_a_random_teacher_is_a_function_of_its_seed_and_keeps_its_residual_branches():
    a, b, c = (build_teacher("timm", "resnet18", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert not torch.equal(a.model.conv1.weight, c.model.conv1.weight)
    assert a.model.layer1[0].bn2.weight.abs().min() > 0  # timm's zero_init_last would zero it


def test_the_teacher_is_frozen_and_stays_in_eval_mode():
    teacher = build_teacher("timm", "resnet18")
    teacher.train()
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(1, 3, 32, 32, requires_grad=True))
    assert not out.requires_grad


def test_our_vit_checkpoint_as_teacher_gives_its_patch_grid_and_width(tmp_path):
    torch.manual_seed(0)
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field=False))
    export_backbone(vit, tmp_path / "backbone.pth")
    teacher = build_teacher("checkpoint", weights=str(tmp_path / "backbone.pth"), image_size=32)
    assert teacher.grid(32) == ((4, 4), 64)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), vit.eval()(x)["patch"], atol=1e-5)


def test_the_teacher_renormalises_imagenet_input_to_its_own_statistics():
    seen = {}

    class Probe(torch.nn.Module):
        def forward_features(self, x):
            seen["x"] = x
            return x

    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher = FrozenTeacher(Probe(), "timm", mean=mean, std=std)
    rgb = torch.rand(1, 3, 2, 2)
    imagenet = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    teacher(imagenet)
    assert torch.allclose(seen["x"], (rgb - 0.5) / 0.25, atol=1e-5)

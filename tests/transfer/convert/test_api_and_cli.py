"""The entry point, format detection, the Python API and the frameworks' own loaders."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pretrain.export import export_backbone
from tests.support.paths import REPO
from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
    dinov2_checkpoint,
    image,
    mae_checkpoint,
    max_diff,
    needs_d2,
    needs_mmseg,
    ours_model,
    ours_reference,
)
from transfer.convert.readers import ReadOptions, read_checkpoint
from transfer.vitdet.plain_vit import plain_vit_kwargs

# the thin tools/ entry point, run from another directory on a junk file


@pytest.fixture(scope="module")
def script_on_junk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("script")
    src = tmp / "junk.pth"
    src.write_bytes(os.urandom(64))
    dst = tmp / "out.pth"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "convert_ckpt.py"),
            "--src",
            str(src),
            "--dst",
            str(dst),
            "--target",
            "mmseg",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    return proc, dst


def test_convert_script_run_from_another_directory_refuses_a_non_checkpoint(script_on_junk):
    proc, _ = script_on_junk
    assert proc.returncode != 0 and "not a PyTorch checkpoint" in proc.stderr


def test_convert_script_writes_no_output_when_it_refuses(script_on_junk):
    _, dst = script_on_junk
    assert not dst.exists()


# format detection and unwrapping


@pytest.fixture(scope="module")
def mae_blocks():
    """An MAE release's encoder tensors only (no decoder, no mask token): a plain timm ViT layout."""
    torch.manual_seed(0)
    _, mae = mae_checkpoint()
    return {k: v for k, v in mae.items() if not k.startswith(("decoder", "mask_token"))}


@pytest.fixture(scope="module")
def dino_release(mae_blocks):
    """A DINO/iBOT release: student behind DDP, teacher with a head, an epoch counter."""
    return {
        "student": {"module.backbone." + k: torch.zeros_like(v) for k, v in mae_blocks.items()},
        "teacher": {**{"backbone." + k: v for k, v in mae_blocks.items()}, "head.mlp.0.weight": torch.zeros(8, D)},
        "epoch": 100,
    }


def test_a_dinov2_hub_state_dict_is_detected_as_dinov2():
    """register_tokens and a (1, D) mask_token identify it."""
    from transfer.convert.readers import detect_format, unwrap

    _, flat = dinov2_checkpoint(chunks=1)
    assert detect_format(unwrap(flat)) == "dinov2"


def test_a_vit_state_dict_without_mae_decoder_is_detected_as_timm(mae_blocks):
    from transfer.convert.readers import detect_format, unwrap

    assert detect_format(unwrap(dict(mae_blocks))) == "timm"


def test_unwrapping_a_dino_release_prefers_the_teacher_over_the_student(dino_release):
    from transfer.convert.readers import unwrap

    assert unwrap(dino_release).wrappers == ["teacher"]


def test_unwrapping_a_dino_release_strips_the_backbone_prefix(dino_release):
    from transfer.convert.readers import unwrap

    assert unwrap(dino_release).prefixes == {"backbone."}


def test_a_dino_release_is_detected_as_the_mae_layout(dino_release):
    from transfer.convert.readers import detect_format, unwrap

    assert detect_format(unwrap(dino_release)) == "mae"


def test_reading_a_dino_release_takes_the_teachers_tensors(dino_release, mae_blocks):
    c, _ = read_checkpoint(dino_release, ReadOptions(num_heads=2))
    assert torch.equal(c.state["blocks.1.mlp.fc2.weight"], mae_blocks["blocks.1.mlp.fc2.weight"])


def test_reading_a_dino_release_drops_its_head_saying_why(dino_release):
    c, _ = read_checkpoint(dino_release, ReadOptions(num_heads=2))
    assert ("head.mlp.0.weight", "projection/classification head: not part of the backbone") in c.dropped


# the Python API


@pytest.fixture(scope="module")
def exported_ours(tmp_path_factory):
    """Our random ViT (position field, LayerScale) and its exported backbone file."""
    tmp = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    model = ours_model(field=True)
    src = tmp / "backbone.pth"
    export_backbone(model, src)
    return model, src


@pytest.fixture(scope="module")
def api_summary(exported_ours):
    from transfer.convert import convert_checkpoint

    _, src = exported_ours
    dst = src.parent / "d2.pth"
    return convert_checkpoint(src, dst, "detectron2", grid=(4, 4), quiet=True), dst


@needs_d2
def test_convert_checkpoint_reports_a_passing_parity_check(api_summary):
    s, _ = api_summary
    assert s["parity"].ok


@needs_d2
def test_convert_checkpoint_records_the_requested_grid_in_meta(api_summary):
    s, _ = api_summary
    assert s["meta"]["grid"] == [4, 4]


@needs_d2
def test_convert_checkpoint_writes_the_destination_file(api_summary):
    _, dst = api_summary
    assert dst.exists()


@needs_d2
def test_convert_checkpoint_refuses_a_non_square_grid_for_detectron2(exported_ours, tmp_path):
    from transfer.convert import ConversionError, convert_checkpoint

    _, src = exported_ours
    with pytest.raises(ConversionError, match="square grid"):
        convert_checkpoint(src, tmp_path / "bad.pth", "detectron2", grid=(4, 6), quiet=True)


@needs_d2
def test_convert_checkpoint_writes_nothing_when_it_refuses(exported_ours, tmp_path):
    from transfer.convert import ConversionError, convert_checkpoint

    _, src = exported_ours
    with pytest.raises(ConversionError):
        convert_checkpoint(src, tmp_path / "bad.pth", "detectron2", grid=(4, 6), quiet=True)
    assert not (tmp_path / "bad.pth").exists()


# the loaders the protocols use read the files


@pytest.fixture(scope="module")
def own_loaders_source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loaders")
    torch.manual_seed(0)
    model = ours_model(field=True, ls=True)
    src = tmp / "backbone.pth"
    export_backbone(model, src)
    return model, src, image((4, 4))


@pytest.fixture(scope="module")
def d2_checkpointer_load(own_loaders_source):
    """detectron2's DetectionCheckpointer (exact ``backbone.net.*`` keys, no heuristics) loading the d2 file into
    a ``backbone.net`` ViT: the wrapper, its state before the load, and the net's features on the image."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import ViT

    model, src, img = own_loaders_source
    d2 = convert(src.parent, src, "detectron2", "--grid", "4", "4")
    net = ViT(**plain_vit_kwargs(img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS)).eval()
    wrapper = nn.Module()
    wrapper.backbone = nn.Module()
    wrapper.backbone.net = net
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    DetectionCheckpointer(wrapper).load(d2)
    with torch.no_grad():
        got = net(img)["last_feat"].flatten(2).transpose(1, 2)
    return wrapper, before, got


@needs_d2
@needs_mmseg
def test_detection_checkpointer_overwrites_every_non_norm_backbone_parameter(d2_checkpointer_load):
    wrapper, before, _ = d2_checkpointer_load
    assert all(not torch.equal(before[k], v) for k, v in wrapper.state_dict().items() if "norm" not in k)


@needs_d2
@needs_mmseg
def test_detection_checkpointer_loaded_vit_reproduces_the_source_patch_features(
    own_loaders_source, d2_checkpointer_load
):
    model, _, img = own_loaders_source
    _, _, got = d2_checkpointer_load
    assert max_diff(got, ours_reference(model, img, False, False, False)) <= TOL


@needs_d2
@needs_mmseg
def test_mmseg_pretrained_init_cfg_loaded_vit_reproduces_the_source_patch_features(own_loaders_source):
    """MMSeg's ``init_cfg=Pretrained`` reads ``state_dict`` from the mmseg file."""
    from mmseg.models.backbones import VisionTransformer

    model, src, img = own_loaders_source
    mm = convert(src.parent, src, "mmseg", "--grid", "4", "4")
    vit = VisionTransformer(
        img_size=(64, 64),
        embed_dims=D,
        num_layers=2,
        num_heads=HEADS,
        final_norm=True,
        patch_bias=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        init_cfg=dict(type="Pretrained", checkpoint=mm),
    )
    vit.init_weights()
    vit.eval()
    with torch.no_grad():
        got = vit(img)[-1].flatten(2).transpose(1, 2)
    assert max_diff(got, ours_reference(model, img, True, False, True)) <= TOL

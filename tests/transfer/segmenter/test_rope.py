"""A RoPE backbone (docs/positions.md) through Segmenter: converted checkpoint -> toy config -> loaded segmentor."""

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402

from tests.support.models import exported_random_rope_vit  # noqa: E402
from tests.transfer.segmenter.helpers import TOY_CFG, _build_model  # noqa: E402
from transfer.convert.api import convert_checkpoint  # noqa: E402
from transfer.segmenter import integration  # noqa: E402


@pytest.fixture(scope="module")
def rope_seg(tmp_path_factory):
    """Our random RoPE ViT, its MMSeg conversion at a 4 x 4 grid, the toy config applied to it and the model."""
    d = tmp_path_factory.mktemp("rope_seg")
    model, _ = exported_random_rope_vit(d, embed_dim=32, img_size=64, noise=0.1)
    convert_checkpoint(d / "backbone.pth", d / "mmseg.pth", "mmseg", grid=(4, 4), quiet=True)
    seg_cfg = Config.fromfile(TOY_CFG)
    arch = integration.apply_checkpoint_to_config(seg_cfg, str(d / "mmseg.pth"))
    return model, str(d / "mmseg.pth"), seg_cfg, arch, _build_model(seg_cfg)


def test_the_config_switches_to_the_rope_backbone_with_the_recorded_rule(rope_seg):
    _, _, cfg, _, _ = rope_seg
    b = cfg.model.backbone
    assert b.type == "RoPEVisionTransformer"
    assert (b.rope_base, b.rope_rule, b.rope_coords) == (10000.0, "axial", "grid")


def test_every_backbone_tensor_is_loaded_from_the_file(rope_seg):
    _, path, _, _, seg = rope_seg
    assert integration.verify_backbone_loaded(seg.backbone, path) > 0
    assert "pos_embed" not in seg.backbone.state_dict()


def test_the_segmentor_backbone_reproduces_our_vit_at_any_input_size(rope_seg):
    model, _, _, _, seg = rope_seg
    seg.eval()
    for h, w in ((64, 64), (48, 96)):
        img = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(w))
        with torch.no_grad():
            out = seg.backbone(img)[-1].flatten(2).transpose(1, 2)
            ref = model(img)["patch"]
        assert torch.allclose(out, ref, atol=1e-4)
    with torch.no_grad():
        logits = seg(torch.randn(1, 3, 64, 64), mode="tensor")
    assert logits.shape[-2:] == (4, 4) and torch.isfinite(logits).all()


def test_a_plain_checkpoint_switches_the_backbone_back_to_mmsegs_vit():
    b = dict(type="RoPEVisionTransformer", rope_base=100.0, rope_rule="dinov3", rope_coords="normalized")
    integration.apply_checkpoint_positions(b, {"grid": [4, 4]})
    assert b == {"type": "VisionTransformer"}


def test_the_backbone_type_follows_the_checkpoints_tokens_and_positions():
    b = dict(type="VisionTransformer")
    integration.apply_checkpoint_positions(b, {"grid": [4, 4], "num_register_tokens": 4})
    assert b == {"type": "RegisterVisionTransformer", "num_register_tokens": 4}
    rope = {"base": 100.0, "rule": "dinov3", "coords": "normalized"}
    integration.apply_checkpoint_positions(b, {"grid": [4, 4], "num_register_tokens": 4, "rope": rope})
    assert b["type"] == "RoPEVisionTransformer" and b["num_register_tokens"] == 4 and b["rope_rule"] == "dinov3"
    integration.apply_checkpoint_positions(b, {"grid": [4, 4], "num_register_tokens": 0})
    assert b == {"type": "VisionTransformer"}

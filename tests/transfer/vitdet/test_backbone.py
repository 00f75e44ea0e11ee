"""Our SDPA ViT against detectron2's ViT: outputs, gradients, activation checkpointing, tokens."""

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling.backbone.utils import get_abs_pos  # noqa: E402

from tests.transfer.vitdet.helpers import (
    _fwd_bwd,
    _pair,
    _vit_kwargs,
)
from transfer.vitdet.backbone import SDPAViT  # noqa: E402


@pytest.mark.parametrize("act_ckpt", [False, True])
@pytest.mark.parametrize("img", [64, 80])  # 80: pos_embed interpolated (8x8 -> 10x10) in both
def test_backbone_matches_detectron2_vit(act_ckpt, img):
    ref, ours = _pair(residual_block_indexes=[1])
    ours.use_act_checkpoint = act_ckpt
    ref.train(), ours.train()
    x = torch.randn(2, 3, img, img)
    weight = torch.randn(2, 48, img // 8, img // 8)
    out_r, gx_r, g_r = _fwd_bwd(ref, x, weight)
    out_o, gx_o, g_o = _fwd_bwd(ours, x, weight)
    assert out_o.shape == (2, 48, img // 8, img // 8)
    torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-5)
    assert g_o.keys() == g_r.keys() and len(g_o) == len(list(ref.parameters()))
    for n in g_r:
        torch.testing.assert_close(g_o[n], g_r[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_act_checkpointing_same_gradients_and_eval_unaffected():
    _, ours = _pair()
    x, weight = torch.randn(2, 3, 64, 64), torch.randn(2, 48, 8, 8)
    ours.use_act_checkpoint = False
    out0, gx0, g0 = _fwd_bwd(ours, x, weight)
    ours.use_act_checkpoint = True
    out1, gx1, g1 = _fwd_bwd(ours, x, weight)
    torch.testing.assert_close(out1, out0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-6)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["last_feat"], out0, rtol=1e-6, atol=1e-6)


def test_extra_tokens_match_manual_reference():
    ref, _ = _pair()
    torch.manual_seed(1)
    ours = SDPAViT(use_cls_token=True, num_register_tokens=2, **_vit_kwargs())
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert sorted(missing) == ["cls_token", "reg_token"] and not unexpected
    assert ours.cls_token.shape == (1, 1, 48) and ours.reg_token.shape == (1, 2, 48)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x)["last_feat"]
        # manual: [CLS + pos_embed[:, :1], registers, patches + pos] through detectron2's own blocks
        t = ref.patch_embed(x)
        B, h, w, C = t.shape
        t = (t + get_abs_pos(ref.pos_embed, True, (h, w))).reshape(B, h * w, C)
        seq = torch.cat(
            [(ours.cls_token + ref.pos_embed[:, :1]).expand(B, -1, -1), ours.reg_token.expand(B, -1, -1), t], 1
        )
        seq = seq.unsqueeze(1)  # (B, 1, N, C): detectron2's Block/Attention on a 1 x N "map" = global attention
        for blk in ref.blocks:
            seq = blk(seq)
        manual = seq[:, 0, 3:].reshape(B, h, w, C).permute(0, 3, 1, 2)
        plain = ref(x)["last_feat"]
    assert out.shape == plain.shape == (2, 48, 8, 8)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
    assert (out - plain).abs().max() > 1e-3  # the tokens take part in attention


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(use_rel_pos=True), "use_rel_pos"),
        (dict(window_size=14, window_block_indexes=[0, 1]), "window"),
        (dict(window_size=14), "window"),
        (dict(use_cls_token=True, pretrain_use_cls_token=False), "pretrain_use_cls_token"),
    ],
)
def test_backbone_rejects_window_and_relpos(bad, match):
    with pytest.raises(ValueError, match=match):
        SDPAViT(**_vit_kwargs(**bad))

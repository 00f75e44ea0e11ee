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


class _Comparisons:
    """Forward + backward of detectron2's ViT and our SDPAViT (same weights, one residual block) per
    ``(act_ckpt, img)``, each computed once per module."""

    def __init__(self):
        self._cache = {}

    def __call__(self, act_ckpt, img):
        if (act_ckpt, img) not in self._cache:
            ref, ours = _pair(residual_block_indexes=[1])
            ours.use_act_checkpoint = act_ckpt
            ref.train(), ours.train()
            x = torch.randn(2, 3, img, img)
            weight = torch.randn(2, 48, img // 8, img // 8)
            self._cache[act_ckpt, img] = (ref, _fwd_bwd(ref, x, weight), _fwd_bwd(ours, x, weight))
        return self._cache[act_ckpt, img]


@pytest.fixture(scope="module")
def compared():
    return _Comparisons()


with_settings = pytest.mark.parametrize(
    "act_ckpt, img",
    [(False, 64), (True, 64), (False, 80), (True, 80)],  # 80: pos_embed interpolated (8x8 -> 10x10) in both
    ids=["64", "64-act_ckpt", "80", "80-act_ckpt"],
)


@with_settings
def test_sdpa_vit_outputs_the_detectron2_feature_map_shape(compared, act_ckpt, img):
    _, _, (out_o, _, _) = compared(act_ckpt, img)
    assert out_o.shape == (2, 48, img // 8, img // 8)


@with_settings
def test_sdpa_vit_output_matches_detectron2_vit(compared, act_ckpt, img):
    _, (out_r, _, _), (out_o, _, _) = compared(act_ckpt, img)
    torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)


@with_settings
def test_sdpa_vit_input_gradient_matches_detectron2_vit(compared, act_ckpt, img):
    _, (_, gx_r, _), (_, gx_o, _) = compared(act_ckpt, img)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-5)


@with_settings
def test_sdpa_vit_gives_every_parameter_a_gradient_as_detectron2_vit_does(compared, act_ckpt, img):
    ref, (_, _, g_r), (_, _, g_o) = compared(act_ckpt, img)
    assert g_o.keys() == g_r.keys() and len(g_o) == len(list(ref.parameters()))


@with_settings
def test_sdpa_vit_parameter_gradients_match_detectron2_vit(compared, act_ckpt, img):
    _, (_, _, g_r), (_, _, g_o) = compared(act_ckpt, img)
    for n in g_r:
        torch.testing.assert_close(g_o[n], g_r[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.fixture(scope="module")
def with_and_without_act_ckpt():
    """Our SDPAViT's forward + backward without, then with activation checkpointing (train mode), and its eval
    forward with checkpointing still switched on."""
    _, ours = _pair()
    x, weight = torch.randn(2, 3, 64, 64), torch.randn(2, 48, 8, 8)
    ours.use_act_checkpoint = False
    without = _fwd_bwd(ours, x, weight)
    ours.use_act_checkpoint = True
    with_ = _fwd_bwd(ours, x, weight)
    ours.eval()
    with torch.no_grad():
        eval_out = ours(x)["last_feat"]
    return without, with_, eval_out


def test_act_checkpointing_leaves_the_output_unchanged(with_and_without_act_ckpt):
    (out0, _, _), (out1, _, _), _ = with_and_without_act_ckpt
    torch.testing.assert_close(out1, out0, rtol=1e-6, atol=1e-6)


def test_act_checkpointing_leaves_the_input_gradient_unchanged(with_and_without_act_ckpt):
    (_, gx0, _), (_, gx1, _), _ = with_and_without_act_ckpt
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-6)


def test_act_checkpointing_leaves_the_parameter_gradients_unchanged(with_and_without_act_ckpt):
    (_, _, g0), (_, _, g1), _ = with_and_without_act_ckpt
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-6)


def test_act_checkpointing_flag_does_not_affect_eval_mode(with_and_without_act_ckpt):
    (out0, _, _), _, eval_out = with_and_without_act_ckpt
    torch.testing.assert_close(eval_out, out0, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def with_tokens():
    """detectron2's ViT, our SDPAViT with a CLS token and 2 registers loaded from its weights (non-strict), and
    the outputs on one batch: ours, a hand-built reference through detectron2's blocks, and detectron2's plain."""
    ref, _ = _pair()
    torch.manual_seed(1)
    ours = SDPAViT(use_cls_token=True, num_register_tokens=2, **_vit_kwargs())
    incompatible = ours.load_state_dict(ref.state_dict(), strict=False)
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
    return ours, incompatible, out, manual, plain


def test_detectron2_weights_lack_exactly_the_extra_tokens(with_tokens):
    _, (missing, unexpected), _, _, _ = with_tokens
    assert sorted(missing) == ["cls_token", "reg_token"] and not unexpected


def test_extra_tokens_have_one_cls_and_the_requested_registers(with_tokens):
    ours, _, _, _, _ = with_tokens
    assert ours.cls_token.shape == (1, 1, 48) and ours.reg_token.shape == (1, 2, 48)


def test_extra_tokens_leave_the_patch_feature_map_shape_unchanged(with_tokens):
    _, _, out, _, plain = with_tokens
    assert out.shape == plain.shape == (2, 48, 8, 8)


def test_extra_tokens_output_matches_a_manual_reference_through_detectron2_blocks(with_tokens):
    _, _, out, manual, _ = with_tokens
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_extra_tokens_take_part_in_attention(with_tokens):
    _, _, out, _, plain = with_tokens
    assert (out - plain).abs().max() > 1e-3


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(use_rel_pos=True), "use_rel_pos"),
        (dict(window_size=14, window_block_indexes=[0, 1]), "window"),
        (dict(window_size=14), "window"),
        (dict(use_cls_token=True, pretrain_use_cls_token=False), "pretrain_use_cls_token"),
    ],
)
def test_sdpa_vit_rejects_unsupported_options_naming_them(bad, match):
    """Windowed attention, relative positions, and a CLS token without its pretraining position slot."""
    with pytest.raises(ValueError, match=match):
        SDPAViT(**_vit_kwargs(**bad))

"""Attention statistics against closed forms; recomputed attention and the adapters."""

import math

import pytest
import torch

from pretrain.export import export_backbone
from tests.transfer.analysis.helpers import _brute_mean_pairwise_distance, _pico
from transfer.analysis import attention as att
from transfer.analysis.backbones import (
    AdapterError,
    OursAdapter,
    TimmAdapter,
    attention_block_forward,
    block_attention,
    build_timm_from_canonical,
    load_adapter,
)

# attention statistics: closed forms


def test_uniform_attention_nmi0_mad_mean_pairwise():
    gh, gw, patch = 3, 4, 16
    n = gh * gw
    a = torch.full((2, n, n), 1.0 / n)
    assert torch.allclose(att.attention_nmi(a), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    mad = att.mean_attention_distance(a, (gh, gw), patch)
    assert torch.allclose(mad, torch.full((2,), _brute_mean_pairwise_distance(gh, gw, patch), dtype=torch.float64))


def test_identity_attention_nmi1_mad0():
    a = torch.eye(9)[None].repeat(3, 1, 1)
    assert torch.allclose(att.attention_nmi(a), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(att.mean_attention_distance(a, (3, 3), 16), torch.zeros(3, dtype=torch.float64))
    # through the default eps=1e-8 path (Park et al.) the values move by < 1e-6
    t = torch.eye(10)[None, None]  # 1 CLS + 3x3 patches
    nmi, mad = att.layer_statistics(t, 1, (3, 3), 16)
    assert abs(float(nmi) - 1.0) < 1e-6 and abs(float(mad)) < 1e-5


def test_hand_computed_2x2_case():
    # 2x2 grid, row-major: 0=(0,0), 1=(0,1), 2=(1,0), 3=(1,1)
    a = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]],
        dtype=torch.float64,
    )
    # p(k) = column means = (2.25, 0.75, 0.75, 0.25) / 4
    pk = [0.5625, 0.1875, 0.1875, 0.0625]
    mi = 0.25 * (
        math.log(1 / 0.5625)  # q0
        + 2 * (0.5 * math.log(0.5 / 0.5625) + 0.5 * math.log(0.5 / 0.1875))  # q1, q2
        + 0.25 * (math.log(0.25 / 0.5625) + 2 * math.log(0.25 / 0.1875) + math.log(0.25 / 0.0625))  # q3
    )
    hk = -sum(p * math.log(p) for p in pk)
    hq = math.log(4)
    nmi = mi / math.sqrt(hq * hk)
    assert 0.3 < nmi < 0.6  # a sanity range for the hand numbers themselves
    # MAD: q0 -> 0; q1 -> 0.5*1; q2 -> 0.5*1; q3 -> 0.25*(sqrt2 + 1 + 1 + 0); times patch 16, mean over q
    mad = 16 * (0 + 0.5 + 0.5 + 0.25 * (2 + math.sqrt(2))) / 4
    assert float(att.attention_nmi(a)) == pytest.approx(nmi, abs=1e-12)
    assert float(att.mean_attention_distance(a, (2, 2), 16)) == pytest.approx(mad, abs=1e-12)
    # the pieces, from the same formula
    assert float(a.mean(0)[0]) == pytest.approx(0.5625)


def test_prefix_dropping_and_renormalisation():
    torch.manual_seed(1)
    gh, gw, npre = 3, 3, 3  # CLS + 2 registers
    n = gh * gw
    patch_only = torch.rand(2, 4, n, n) ** 3
    patch_only = patch_only / patch_only.sum(-1, keepdim=True)
    prefix_mass = torch.rand(2, 4, n + npre, 1) * 0.6  # each row puts this much on the prefix columns
    full = torch.rand(2, 4, n + npre, n + npre)
    full[..., :npre] = full[..., :npre] / full[..., :npre].sum(-1, keepdim=True) * prefix_mass
    full[..., npre:, npre:] = patch_only * (1 - prefix_mass[..., npre:, :])
    full[..., :npre, npre:] = torch.rand(2, 4, npre, n)  # prefix rows: anything, they are dropped
    nmi_full, mad_full = att.layer_statistics(full, npre, (gh, gw), 16, eps=0.0)
    nmi_ref = att.attention_nmi(patch_only).mean(-1)
    mad_ref = att.mean_attention_distance(patch_only.double(), (gh, gw), 16).mean(-1)
    assert torch.allclose(nmi_full, nmi_ref, atol=1e-6)
    assert torch.allclose(mad_full, mad_ref, atol=1e-5)
    stripped = att.strip_prefix(full, npre, eps=0.0)
    assert torch.allclose(stripped, patch_only.double(), atol=1e-6)
    with pytest.raises(ValueError):
        att.strip_prefix(full, n + npre)


def test_query_maps_pick_the_query_row():
    gh, gw = 2, 3
    n = gh * gw
    a = torch.zeros(1, 2, n + 1, n + 1)
    a[..., 0] = 0.5  # CLS column gets half of every row
    a[0, 0, 1 + 4, 1 + 2] = 0.5  # head 0: query patch 4 -> key patch 2
    a[0, 1, 1 + 4, 1 + 5] = 0.5  # head 1: query patch 4 -> key patch 5
    # query point in pixels of a 32x48 image with patch 16: (x=20, y=20) -> row 1, col 1 -> patch 4
    idx = att.query_patch_index((20, 20), (32, 48), (gh, gw))
    assert idx == 4
    assert att.query_patch_index((0.5, 0.75), (32, 48), (gh, gw)) == 4  # fractions
    maps = att.query_attention_maps(a, 1, (gh, gw), [idx])
    expect = torch.zeros(gh, gw)
    expect.view(-1)[2] = 0.5
    expect.view(-1)[5] = 0.5
    assert torch.allclose(maps[0, 0], expect)


# recomputed attention reproduces the blocks; adapters


@torch.no_grad()
def test_recomputed_attention_reproduces_blocks():
    torch.manual_seed(0)
    model = _pico(layerscale=None, num_register_tokens=1)
    with torch.no_grad():  # make attention far from uniform so the check has teeth
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(20)
    x = torch.randn(2, 3, 64, 80)
    seq, grid = model.prepare_tokens(x)
    adapter = OursAdapter(model)
    attns = adapter.attentions(x)
    assert len(attns) == 2 and attns[0].shape == (2, 2, 2 + 20, 2 + 20)
    for blk, a in zip(model.blocks, attns):
        out, a2 = attention_block_forward(blk, seq)
        ref = blk(seq)
        assert (out - ref).abs().max() < 1e-5
        assert torch.allclose(a, a2, atol=1e-6) and torch.allclose(block_attention(blk, seq), a2, atol=1e-6)
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)
        assert float(a.max()) > 0.5  # sharp, not uniform
        seq = out  # the adapter's chain
    toks = adapter.tokens(x, "all")
    inter, _ = model.block_outputs(x, norm=True)
    for t, ref in zip(toks, inter):
        assert torch.allclose(t, ref[:, model.num_prefix_tokens :], atol=1e-6)


def test_timm_adapter_and_converter_path(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tm = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0).eval()
    path = tmp_path / "timm_tiny.pth"
    torch.save(tm.state_dict(), path)
    ad = load_adapter(str(path), image_size=64, num_heads=2)
    assert isinstance(ad, TimmAdapter) and ad.num_prefix == 1 and ad.patch_size == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tm.forward_features(x)[:, 1:]
    assert torch.allclose(ad.tokens(x)[0], ref, atol=1e-5)
    a = ad.attentions(x)
    assert len(a) == 2 and a[-1].shape == (1, 2, 17, 17)
    with pytest.raises(AdapterError):
        ad.forward_masked(x, pos_mask=torch.zeros(1, 16, dtype=torch.bool))

    # our checkpoint through the converter's timm path equals our own model (field materialised at the grid)
    from transfer.convert.readers import ReadOptions, load_file, read_checkpoint

    ours = _pico(num_register_tokens=1)
    ck = tmp_path / "ours.pth"
    export_backbone(ours, ck)
    c, _ = read_checkpoint(load_file(str(ck)), ReadOptions())
    timm_model, _ = build_timm_from_canonical(c, (4, 4))
    t1 = OursAdapter(ours).tokens(x, "all")
    t2 = TimmAdapter(timm_model.eval()).tokens(x, "all")
    for u, v in zip(t1, t2):
        assert torch.allclose(u, v, atol=1e-4)

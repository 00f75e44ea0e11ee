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


def test_uniform_attention_has_nmi_0():
    n = 3 * 4
    a = torch.full((2, n, n), 1.0 / n)
    assert torch.allclose(att.attention_nmi(a), torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_uniform_attention_has_the_mean_pairwise_patch_distance_as_mad():
    gh, gw, patch = 3, 4, 16
    n = gh * gw
    a = torch.full((2, n, n), 1.0 / n)
    mad = att.mean_attention_distance(a, (gh, gw), patch)
    assert torch.allclose(mad, torch.full((2,), _brute_mean_pairwise_distance(gh, gw, patch), dtype=torch.float64))


def test_identity_attention_has_nmi_1():
    a = torch.eye(9)[None].repeat(3, 1, 1)
    assert torch.allclose(att.attention_nmi(a), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_identity_attention_has_mad_0():
    a = torch.eye(9)[None].repeat(3, 1, 1)
    assert torch.allclose(att.mean_attention_distance(a, (3, 3), 16), torch.zeros(3, dtype=torch.float64))


def test_the_default_eps_moves_identity_statistics_by_less_than_1e_6():
    """Through ``layer_statistics``' default eps=1e-8 path (Park et al.)."""
    t = torch.eye(10)[None, None]  # 1 CLS + 3x3 patches
    nmi, mad = att.layer_statistics(t, 1, (3, 3), 16)
    assert abs(float(nmi) - 1.0) < 1e-6 and abs(float(mad)) < 1e-5


# 2x2 grid, row-major: 0=(0,0), 1=(0,1), 2=(1,0), 3=(1,1)
HAND_2X2 = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]],
    dtype=torch.float64,
)


def test_nmi_of_a_hand_computed_2x2_case():
    a = HAND_2X2
    # p(k) = column means = (2.25, 0.75, 0.75, 0.25) / 4
    pk = [0.5625, 0.1875, 0.1875, 0.0625]
    assert float(a.mean(0)[0]) == pytest.approx(0.5625)  # the pieces, from the same formula
    mi = 0.25 * (
        math.log(1 / 0.5625)  # q0
        + 2 * (0.5 * math.log(0.5 / 0.5625) + 0.5 * math.log(0.5 / 0.1875))  # q1, q2
        + 0.25 * (math.log(0.25 / 0.5625) + 2 * math.log(0.25 / 0.1875) + math.log(0.25 / 0.0625))  # q3
    )
    hk = -sum(p * math.log(p) for p in pk)
    hq = math.log(4)
    nmi = mi / math.sqrt(hq * hk)
    assert 0.3 < nmi < 0.6  # a sanity range for the hand numbers themselves
    assert float(att.attention_nmi(a)) == pytest.approx(nmi, abs=1e-12)


def test_mad_of_a_hand_computed_2x2_case():
    # MAD: q0 -> 0; q1 -> 0.5*1; q2 -> 0.5*1; q3 -> 0.25*(sqrt2 + 1 + 1 + 0); times patch 16, mean over q
    mad = 16 * (0 + 0.5 + 0.5 + 0.25 * (2 + math.sqrt(2))) / 4
    assert float(att.mean_attention_distance(HAND_2X2, (2, 2), 16)) == pytest.approx(mad, abs=1e-12)


@pytest.fixture(scope="module")
def with_prefix():
    """Attention over CLS + 2 registers + a 3x3 grid whose patch-to-patch part, renormalised, is ``patch_only``."""
    torch.manual_seed(1)
    gh, gw, npre = 3, 3, 3
    n = gh * gw
    patch_only = torch.rand(2, 4, n, n) ** 3
    patch_only = patch_only / patch_only.sum(-1, keepdim=True)
    prefix_mass = torch.rand(2, 4, n + npre, 1) * 0.6  # each row puts this much on the prefix columns
    full = torch.rand(2, 4, n + npre, n + npre)
    full[..., :npre] = full[..., :npre] / full[..., :npre].sum(-1, keepdim=True) * prefix_mass
    full[..., npre:, npre:] = patch_only * (1 - prefix_mass[..., npre:, :])
    full[..., :npre, npre:] = torch.rand(2, 4, npre, n)  # prefix rows: anything, they are dropped
    return full, patch_only, npre, (gh, gw)


def test_layer_nmi_ignores_the_prefix_tokens(with_prefix):
    full, patch_only, npre, grid = with_prefix
    nmi_full, _ = att.layer_statistics(full, npre, grid, 16, eps=0.0)
    assert torch.allclose(nmi_full, att.attention_nmi(patch_only).mean(-1), atol=1e-6)


def test_layer_mad_ignores_the_prefix_tokens(with_prefix):
    full, patch_only, npre, grid = with_prefix
    _, mad_full = att.layer_statistics(full, npre, grid, 16, eps=0.0)
    assert torch.allclose(mad_full, att.mean_attention_distance(patch_only.double(), grid, 16).mean(-1), atol=1e-5)


def test_strip_prefix_drops_the_prefix_and_renormalises_the_rows(with_prefix):
    full, patch_only, npre, _ = with_prefix
    assert torch.allclose(att.strip_prefix(full, npre, eps=0.0), patch_only.double(), atol=1e-6)


def test_strip_prefix_refuses_to_strip_every_token(with_prefix):
    full, _, npre, (gh, gw) = with_prefix
    with pytest.raises(ValueError):
        att.strip_prefix(full, gh * gw + npre)


def test_query_patch_index_of_a_pixel_point():
    """(x=20, y=20) in a 32x48 image with patch 16 -> row 1, col 1 -> patch 4 of the 2x3 grid."""
    assert att.query_patch_index((20, 20), (32, 48), (2, 3)) == 4


def test_query_patch_index_of_a_fractional_point():
    assert att.query_patch_index((0.5, 0.75), (32, 48), (2, 3)) == 4


def test_query_maps_pick_the_query_row():
    gh, gw = 2, 3
    n = gh * gw
    a = torch.zeros(1, 2, n + 1, n + 1)
    a[..., 0] = 0.5  # CLS column gets half of every row
    a[0, 0, 1 + 4, 1 + 2] = 0.5  # head 0: query patch 4 -> key patch 2
    a[0, 1, 1 + 4, 1 + 5] = 0.5  # head 1: query patch 4 -> key patch 5
    maps = att.query_attention_maps(a, 1, (gh, gw), [4])
    expect = torch.zeros(gh, gw)
    expect.view(-1)[2] = 0.5
    expect.view(-1)[5] = 0.5
    assert torch.allclose(maps[0, 0], expect)


# recomputed attention reproduces the blocks; adapters


@pytest.fixture(scope="module")
@torch.no_grad()
def recomputed():
    """Our tiny ViT (1 register, sharpened attention) on a 64x80 batch: the adapter's attentions, per block the
    recomputed ``(output, attention)``, the block's own output and ``block_attention``; the adapter's tokens and
    the model's normed block outputs."""
    torch.manual_seed(0)
    model = _pico(layerscale=None, num_register_tokens=1)
    for blk in model.blocks:  # make attention far from uniform so the check has teeth
        blk.attn.qkv.weight.mul_(20)
    x = torch.randn(2, 3, 64, 80)
    seq, _ = model.prepare_tokens(x)
    adapter = OursAdapter(model)
    attns = adapter.attentions(x)
    per_block = []
    for blk in model.blocks:
        out, a2 = attention_block_forward(blk, seq)
        per_block.append(dict(out=out, attn=a2, ref=blk(seq), block_attention=block_attention(blk, seq)))
        seq = out  # the adapter's chain
    inter, _ = model.block_outputs(x, norm=True)
    return dict(attns=attns, per_block=per_block, tokens=adapter.tokens(x, "all"), inter=inter, model=model)


def test_adapter_attentions_are_one_map_per_block_and_head_over_all_tokens(recomputed):
    attns = recomputed["attns"]
    assert len(attns) == 2 and attns[0].shape == (2, 2, 2 + 20, 2 + 20)


def test_recomputed_block_forward_reproduces_the_blocks_output(recomputed):
    for b in recomputed["per_block"]:
        assert (b["out"] - b["ref"]).abs().max() < 1e-5


def test_adapter_and_block_attention_equal_the_recomputed_attention(recomputed):
    for a, b in zip(recomputed["attns"], recomputed["per_block"]):
        assert torch.allclose(a, b["attn"], atol=1e-6) and torch.allclose(b["block_attention"], b["attn"], atol=1e-6)


def test_adapter_attention_rows_sum_to_one(recomputed):
    for a in recomputed["attns"]:
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)


def test_sharpened_attention_is_far_from_uniform(recomputed):
    """The check above has teeth."""
    for a in recomputed["attns"]:
        assert float(a.max()) > 0.5


def test_adapter_tokens_are_the_normed_patch_outputs_of_every_block(recomputed):
    for t, ref in zip(recomputed["tokens"], recomputed["inter"]):
        assert torch.allclose(t, ref[:, recomputed["model"].num_prefix_tokens :], atol=1e-6)


@pytest.fixture(scope="module")
def timm_adapter(tmp_path_factory):
    """A saved random timm ViT, the adapter ``load_adapter`` makes for it, and an input."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tm = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0).eval()
    path = tmp_path_factory.mktemp("timm_adapter") / "timm_tiny.pth"
    torch.save(tm.state_dict(), path)
    return tm, load_adapter(str(path), image_size=64, num_heads=2), torch.randn(1, 3, 64, 64)


def test_a_timm_checkpoint_gets_a_timm_adapter_with_one_prefix_token_and_patch_16(timm_adapter):
    _, ad, _ = timm_adapter
    assert isinstance(ad, TimmAdapter) and ad.num_prefix == 1 and ad.patch_size == 16


def test_timm_adapter_tokens_are_the_timm_models_patch_features(timm_adapter):
    tm, ad, x = timm_adapter
    with torch.no_grad():
        ref = tm.forward_features(x)[:, 1:]
    assert torch.allclose(ad.tokens(x)[0], ref, atol=1e-5)


def test_timm_adapter_attentions_are_one_map_per_block_over_all_tokens(timm_adapter):
    _, ad, x = timm_adapter
    a = ad.attentions(x)
    assert len(a) == 2 and a[-1].shape == (1, 2, 17, 17)


def test_timm_adapter_refuses_masked_forwards(timm_adapter):
    _, ad, x = timm_adapter
    with pytest.raises(AdapterError):
        ad.forward_masked(x, pos_mask=torch.zeros(1, 16, dtype=torch.bool))


def test_our_checkpoint_through_the_converters_timm_path_equals_our_model(tmp_path):
    """The position field is materialised at the grid."""
    from transfer.convert.readers import ReadOptions, load_file, read_checkpoint

    torch.manual_seed(0)
    ours = _pico(num_register_tokens=1)
    ck = tmp_path / "ours.pth"
    export_backbone(ours, ck)
    c, _ = read_checkpoint(load_file(str(ck)), ReadOptions())
    timm_model, _ = build_timm_from_canonical(c, (4, 4))
    x = torch.randn(1, 3, 64, 64)
    t1 = OursAdapter(ours).tokens(x, "all")
    t2 = TimmAdapter(timm_model.eval()).tokens(x, "all")
    for u, v in zip(t1, t2):
        assert torch.allclose(u, v, atol=1e-4)


@torch.no_grad()
def test_rope_backbone_attention_is_the_one_its_blocks_use(tmp_path):
    """A RoPE ViT (no additive positions): the recomputed attention rotates q and k, so the hand-run blocks
    reproduce the model's own block outputs; without the rotation they would not (the check has teeth)."""
    from tests.support.models import exported_random_rope_vit

    model, path = exported_random_rope_vit(tmp_path, embed_dim=64, img_size=64, noise=0.2)
    for blk in model.blocks:
        blk.attn.qkv.weight.mul_(10)  # sharp attention: position matters
    adapter = OursAdapter(model)
    x = torch.randn(2, 3, 64, 64)
    attns = adapter.attentions(x)
    assert len(attns) == 2 and attns[0].shape == (2, 2, 17, 17)
    seq, grid = model.prepare_tokens(x)
    angles = model.attention_angles(grid)
    blk = model.blocks[0]
    out, a = attention_block_forward(blk, seq, angles, model.num_prefix_tokens)
    ref = blk(seq, angles, model.num_prefix_tokens)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-4)  # outputs of size ~50: float rounding only
    assert torch.allclose(a, attns[0], atol=1e-6)
    assert torch.allclose(block_attention(blk, seq, angles, model.num_prefix_tokens), a, atol=1e-6)
    unrotated, _ = attention_block_forward(blk, seq)
    assert (unrotated - ref).abs().max() > 0.1
    # the exported file through the tool's loader: statistics for every layer, no refusal
    images = list(torch.rand(2, 3, 64, 64))
    stats = att.attention_statistics(load_adapter(str(path), image_size=64), images, progress=False)
    assert len(stats["nmi"]) == 2 and all(math.isfinite(v) for v in stats["mad"])

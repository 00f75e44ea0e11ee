"""DropPos's position-accuracy evaluator: masks, the masked forward, the predictors and the CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.export import export_backbone
from pretrain.methods import droppos
from tests.transfer.analysis.helpers import _pico, _tool
from transfer.analysis import position_accuracy as pa
from transfer.analysis.backbones import BackboneAdapter, EmbedParts, OursAdapter, TimmAdapter

# masks: the official rounding, int(N * (1 - gamma)) visible and int(K * (1 - gamma_pos)) anchors, by hand at N = 196
#   K:            196 (gamma 0), 147 (.25), 98 (.5), 49 (.75)
#   anchors at gamma_pos .25 / .5 / .75 / .95 (1 - .95 = 0.050000000000000044):
#   K=196: 147, 98, 49, 9 (9.8);  K=147: 110 (110.25), 73 (73.5), 36 (36.75), 7 (7.35)
#   K=98:  73 (73.5), 49, 24 (24.5), 4 (4.9);  K=49: 36 (36.75), 24 (24.5), 12 (12.25), 2 (2.45)
HAND_COUNTS = {
    (0.0, 0.25): (196, 147),
    (0.0, 0.5): (196, 98),
    (0.0, 0.75): (196, 49),
    (0.0, 0.95): (196, 9),
    (0.25, 0.25): (147, 110),
    (0.25, 0.5): (147, 73),
    (0.25, 0.75): (147, 36),
    (0.25, 0.95): (147, 7),
    (0.5, 0.25): (98, 73),
    (0.5, 0.5): (98, 49),
    (0.5, 0.75): (98, 24),
    (0.5, 0.95): (98, 4),
    (0.75, 0.25): (49, 36),
    (0.75, 0.5): (49, 24),
    (0.75, 0.75): (49, 12),
    (0.75, 0.95): (49, 2),
}


@pytest.mark.parametrize("cell", sorted(HAND_COUNTS))
def test_each_grid_cell_keeps_and_anchors_as_many_patches_as_the_official_rounding(cell):
    ids_keep, dropped = pa.draw_masks(3, 196, *cell, torch.Generator().manual_seed(0))
    visible, anchors = HAND_COUNTS[cell]
    assert ids_keep.shape == (3, visible) and (~dropped).sum(1).tolist() == [anchors] * 3


def test_the_visible_count_truncates_rather_than_rounds():
    assert droppos.visible_count(196, 0.9) == 19  # 196 * 0.09999999999999998 = 19.6


def test_draw_masks_keeps_distinct_patches_of_the_grid():
    ids_keep, _ = pa.draw_masks(4, 16, 0.25, 0.5, torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 12 and 0 <= min(row) and max(row) < 16 for row in ids_keep)


def test_masks_repeat_with_the_seed():
    a = pa.draw_masks(2, 16, 0.5, 0.5, torch.Generator().manual_seed(3))
    b = pa.draw_masks(2, 16, 0.5, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------------------------------- the masked forward
def _tiny_timm(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True, **kw)
    return TimmAdapter(m.eval())


ADAPTERS = {
    "ours-field": lambda: OursAdapter(_pico()),
    "ours-pos-embed-registers": lambda: OursAdapter(_pico(pos_field=False, num_register_tokens=2)),
    "timm-registers": lambda: _tiny_timm(reg_tokens=2),
}


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_embed_parts_reassemble_the_adapters_first_block_input(kind):
    torch.manual_seed(1)
    ad, x = ADAPTERS[kind](), torch.randn(2, 3, 96, 96)  # 6 x 6: positions resampled from the 4 x 4 table
    parts = ad.embed_parts(x)
    seq = ad.input_norm(torch.cat([parts.prefix, parts.content + parts.pos], 1))
    assert torch.allclose(seq, ad.embed(x)[0], atol=1e-6) and parts.grid == (6, 6)


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_the_masked_forward_without_masking_equals_the_normal_forward(kind):
    torch.manual_seed(1)
    ad, x = ADAPTERS[kind](), torch.randn(2, 3, 64, 64)
    ids_keep, dropped = pa.draw_masks(2, 16, 0.0, 0.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        seq = pa.MaskedEncoder(ad)(x, ids_keep, dropped)
    ref = ad.sequences(x)[-1]
    p = ad.num_prefix
    patches = ref[:, p:].gather(1, ids_keep[..., None].expand(-1, -1, ref.shape[-1]))
    assert torch.allclose(seq[:, :p], ref[:, :p], atol=1e-5) and torch.allclose(seq[:, p:], patches, atol=1e-5)


class _ToyAdapter(BackboneAdapter):
    """No blocks, no final norm: the output is the first block's input. Content: zeros, or each patch's flattened
    (normalised) pixels (``pixels``); positions: a random table; prefix: one CLS token; a random [POSMASK] token."""

    def __init__(self, pixels: bool = False, dim: int = 768):
        g = torch.Generator().manual_seed(0)
        model = nn.Module()
        model.blocks, model.norm = nn.ModuleList(), nn.Identity()
        model.pos = nn.Parameter(torch.randn(16, dim, generator=g))
        model.posmask = nn.Parameter(torch.randn(dim, generator=g))
        model.cls = nn.Parameter(torch.randn(1, 1, dim, generator=g))
        self.pixels, self.dim = pixels, dim
        super().__init__(model, patch_size=16, num_prefix=1, name="toy")

    @property
    def embed_dim(self):
        return self.dim

    @property
    def position_mask_token(self):
        return self.model.posmask

    def embed_parts(self, x):
        b = x.shape[0]
        patches = x.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(b, 16, -1)
        content = patches if self.pixels else x.new_zeros(b, 16, self.dim)
        return EmbedParts(self.model.cls.expand(b, -1, -1), content, self.model.pos[None], (4, 4))


class _NearestRow(nn.Module):
    """Logits: cosine similarity of each token to each row of ``table`` ``(N, D)``."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, tokens):
        return F.normalize(tokens, dim=-1) @ F.normalize(self.table, dim=-1).T


@pytest.fixture(scope="module")
def position_only():
    """The position-only toy backbone, 32 images, masks at gamma 0 / gamma_pos 0.75 (12 dropped, 4 anchors) and
    the evaluated cell with a nearest-position head."""
    ad = _ToyAdapter()
    images = torch.rand(32, 3, 64, 64)
    ids_keep, dropped = pa.draw_masks(32, 16, 0.0, 0.75, torch.Generator().manual_seed(0))
    head = pa.OwnHead(_NearestRow(ad.model.pos.detach()), 16, num_prefix=1)
    cell = pa.evaluate_grid(pa.MaskedEncoder(ad), head, images, [0.0], [0.75], batch_size=32, seed=0)[0]
    return ad, images, ids_keep, dropped, cell


def test_dropped_slots_get_the_posmask_token_and_anchors_their_own_position(position_only):
    ad, images, ids_keep, dropped, _ = position_only
    with torch.no_grad():
        out = pa.MaskedEncoder(ad)(ad.normalize(images), ids_keep, dropped)[:, 1:]
    assert torch.equal(out[dropped], ad.model.posmask.detach().expand(int(dropped.sum()), -1))
    assert torch.equal(out[~dropped], ad.model.pos.detach()[ids_keep[~dropped]])


def test_a_position_only_backbone_predicts_every_anchor(position_only):
    assert position_only[4].anchor_top1 == 1.0


def test_a_position_only_backbone_predicts_every_dropped_patch_at_the_mask_tokens_place(position_only):
    """All dropped tokens equal [POSMASK], so all are predicted at one place p; that is right once per image in which
    p is dropped: 12/16 of the images on average, i.e. chance (1/16) per dropped patch."""
    ad, _, ids_keep, dropped, cell = position_only
    p = int(_NearestRow(ad.model.pos.detach())(ad.model.posmask.detach()[None]).argmax())
    hits = sum(int(p in ids_keep[i][dropped[i]].tolist()) for i in range(32))
    assert cell.num_dropped == 32 * 12 and cell.top1 == pytest.approx(hits / (32 * 12))
    assert abs(cell.top1 - 1 / 16) < 0.03


def _index_images(n: int, noise: float = 0.0, seed: int = 0):
    """64 x 64 images whose 4 x 4 patches each carry a fixed random pattern of their patch index, mixed with
    ``noise`` (1: pure noise)."""
    codes = torch.rand(4, 4, 3, 16, 16, generator=torch.Generator().manual_seed(123))
    base = codes.permute(2, 0, 3, 1, 4).reshape(3, 64, 64)
    return (1 - noise) * base + noise * torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_an_oracle_head_built_from_the_true_positions_predicts_every_dropped_patch():
    ad = _ToyAdapter(pixels=True)
    table = ad.embed_parts(ad.normalize(_index_images(1))).content[0]  # row j: patch j of the index image
    head = pa.OwnHead(_NearestRow(table), 16, num_prefix=1)
    cells = pa.evaluate_grid(pa.MaskedEncoder(ad, "zeros"), head, _index_images(4), seed=0)
    assert len(cells) == 16 and all(c.top1 == 1.0 for c in cells)


def test_an_own_head_that_sees_the_prefix_has_its_prefix_rows_dropped():
    head = pa.OwnHead(nn.Linear(8, 5), 5, num_prefix=2, with_prefix=True)
    assert head(torch.zeros(3, 2 + 7, 8)).shape == (3, 7, 5)


# ------------------------------------------------------------------------------------------- the linear probe
def _probe_cell(noise: float) -> pa.AccuracyCell:
    torch.manual_seed(0)
    enc = pa.MaskedEncoder(OursAdapter(_pico()), seed=1)
    probe, _ = pa.train_linear_probe(enc, _index_images(16, noise, 1), 20, 16, 1e-2, seed=1, progress=False)
    return pa.evaluate_grid(enc, probe, _index_images(16, noise, 2), [0.0], [0.25], seed=0)[0]


def test_the_linear_probe_reads_positions_from_content_that_encodes_them():
    assert _probe_cell(0.3).top1 >= 0.95


def test_the_linear_probe_is_near_chance_on_pure_noise():
    cell = _probe_cell(1.0)
    assert cell.num_dropped == 16 * 4 and cell.top1 <= 0.15  # chance 1/16


def test_a_backbone_without_a_posmask_token_gets_a_learned_one():
    assert pa.MaskedEncoder(_tiny_timm()).mode == "learned"


def test_the_learned_mask_token_is_trained_with_the_probe():
    enc = pa.MaskedEncoder(_tiny_timm(), seed=1)
    before = enc.token.detach().clone()
    pa.train_linear_probe(enc, torch.rand(4, 3, 64, 64), 2, 4, 1e-2, seed=1, progress=False)
    assert not torch.equal(before, enc.token.detach())


def test_asking_for_the_own_token_of_a_backbone_without_one_is_an_error():
    with pytest.raises(ValueError):
        pa.MaskedEncoder(_tiny_timm(), "own")


# ------------------------------------------------------------------------------------------- DropPos heads
def _droppos_backbone():
    torch.manual_seed(0)
    return _pico(pos_field=False, pos_embed_type="sincos")


def test_the_masked_forward_equals_the_droppos_methods_own_encoder_pass():
    from pretrain.methods.droppos import encode_visible

    vit, x = _droppos_backbone(), torch.randn(2, 3, 64, 64)
    ids_keep, dropped = pa.draw_masks(2, 16, 0.5, 0.75, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = pa.MaskedEncoder(OursAdapter(vit))(x, ids_keep, dropped)
        theirs = encode_visible(vit, x, ids_keep, dropped, "param")
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.fixture(scope="module")
def droppos_export(tmp_path_factory):
    """A DropPos-style export: backbone.pth (sin-cos pos_embed) with droppos_head.pth beside it, and 3 images."""
    from pretrain.methods.droppos import HEAD_FILE, HEAD_FORMAT, DropPosDecoder
    from toydata import make_toy_images

    root = tmp_path_factory.mktemp("droppos")
    export_backbone(_droppos_backbone(), str(root / "backbone.pth"))
    torch.manual_seed(0)
    dec = DropPosDecoder(64, 16, dim=32, depth=1, heads=2)
    meta = dict(dec.config, grid=[4, 4], mask_token_type="param", prefix_tokens=1)
    torch.save({"format": HEAD_FORMAT, "version": 1, "decoder": dec.state_dict(), "meta": meta}, root / HEAD_FILE)
    make_toy_images(str(root / "imgs"), num_images=3, size=(64, 64), seed=0)
    return root


def _run_tool(argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = _tool("probe_position").main(argv + ["--quiet"])
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def own_head_run(droppos_export):
    root = droppos_export
    out = root / "out"
    rc, text = _run_tool([str(root / "backbone.pth"), "--images", str(root / "imgs"), "--out", str(out)])
    return rc, text, out


def test_the_cli_uses_the_droppos_head_found_beside_the_backbone(own_head_run):
    rc, text, out = own_head_run
    info = json.load(open(out / "position_accuracy.json"))
    assert rc == 0 and info["predictor"] == "own head (droppos_head.pth)" and "predictor: own head" in text


def test_the_cli_evaluates_the_own_head_at_the_grid_it_was_trained_on(own_head_run):
    info = json.load(open(own_head_run[2] / "position_accuracy.json"))
    assert info["size"] == 64 and info["grid"] == [4, 4] and info["mask_token"] == "own"


def test_the_cli_refuses_a_size_the_own_head_cannot_classify(droppos_export, tmp_path):
    root = droppos_export
    argv = [str(root / "backbone.pth"), "--images", str(root / "imgs"), "--size", "96", "--out", str(tmp_path)]
    assert _run_tool(argv)[0] == 2


# ------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def probe_run(tiny_ckpts):
    """tools/probe_position.py on the exported tiny backbone and 3 toy images: a 2-epoch linear probe."""
    root, paths = tiny_ckpts
    out = root / "posacc_out"
    rc, text = _run_tool(
        [paths[0], "--images", str(root / "imgs"), "--size", "64", "--probe-epochs", "2"]
        + [
            "--out",
            str(out),
        ]
    )
    return rc, text, out


def test_the_cli_succeeds(probe_run):
    assert probe_run[0] == 0


def test_the_cli_writes_the_4x4_grid_with_gamma_rows_and_gamma_pos_columns(probe_run):
    rows = list(csv.reader(open(probe_run[2] / "position_accuracy.csv")))
    assert rows[0] == ["gamma \\ gamma_pos", "0.25", "0.5", "0.75", "0.95"]
    assert [r[0] for r in rows[1:]] == ["0", "0.25", "0.5", "0.75"] and all(len(r) == 5 for r in rows[1:])


def test_the_cli_json_mean_is_the_mean_of_its_grid(probe_run):
    info = json.load(open(probe_run[2] / "position_accuracy.json"))
    cells = [v for row in info["top1"] for v in row]
    assert len(cells) == 16 and info["mean_top1"] == pytest.approx(sum(cells) / 16)


def test_the_cli_says_which_predictor_and_mask_token_it_used(probe_run):
    text = probe_run[1]
    assert "predictor: linear probe" in text and "mask token: own" in text and "mean top-1 over the 16 cells" in text


def test_the_cli_reports_chance_as_one_over_the_number_of_positions(probe_run):
    assert json.load(open(probe_run[2] / "position_accuracy.json"))["chance"] == pytest.approx(1 / 16)


def test_the_cli_rejects_a_proxy_option_without_proxy(tiny_ckpts, tmp_path):
    root, paths = tiny_ckpts
    argv = [paths[0], "--images", str(root / "imgs"), "--reference", "position", "--out", str(tmp_path)]
    assert _run_tool(argv)[0] == 2


def test_a_cell_without_dropped_patches_has_nan_accuracy():
    ad = _ToyAdapter()
    head = pa.OwnHead(_NearestRow(ad.model.pos.detach()), 16, num_prefix=1)
    cell = pa.evaluate_grid(pa.MaskedEncoder(ad), head, torch.rand(1, 3, 64, 64), [0.0], [0.0])
    assert cell[0].num_dropped == 0 and math.isnan(cell[0].top1)

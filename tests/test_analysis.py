"""Analysis and quick probes (docs/protocols.md §4): attention NMI/MAD, dense 1-NN/linear probes, position proxy,
CLIs."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pretrain.data.toy import make_toy_ade, make_toy_images
from pretrain.export import export_backbone
from pretrain.models.vit import ViTConfig, build_vit
from transfer.analysis import attention as att
from transfer.analysis import position as pos
from transfer.analysis import probes
from transfer.analysis.backbones import (
    AdapterError,
    OursAdapter,
    TimmAdapter,
    attention_block_forward,
    block_attention,
    build_timm_from_canonical,
    load_adapter,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pico(**overrides):
    cfg = dict(patch_size=16, img_size=64, pos_field_size=[8, 8])
    cfg.update(overrides)
    return build_vit(ViTConfig.from_arch("vit_pico", **cfg)).eval()


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


# ----------------------------------------------------------------------------------------------------------------
# attention statistics: closed forms


def _brute_mean_pairwise_distance(gh, gw, patch):
    coords = [(r, c) for r in range(gh) for c in range(gw)]
    total = sum(math.hypot(r1 - r2, c1 - c2) for (r1, c1) in coords for (r2, c2) in coords)
    return patch * total / len(coords) ** 2


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


# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# dense probes


def test_miou_matches_mmseg_iou_metric():
    from mmseg.evaluation.metrics import IoUMetric

    g = torch.Generator().manual_seed(0)
    k = 6
    gt = torch.randint(0, k - 1, (500,), generator=g)  # class 5 never in gt
    gt[torch.rand(500, generator=g) < 0.15] = 255
    pred = torch.where(torch.rand(500, generator=g) < 0.6, gt, torch.randint(0, k, (500,), generator=g))
    pred[gt == 255] = torch.randint(0, k, (int((gt == 255).sum()),), generator=g)
    pred[pred == 255] = 0
    ours = probes.segmentation_metrics(pred, gt, k)
    inter, union, area_pred, area_gt = IoUMetric.intersect_and_union(pred, gt, k, 255)
    ref = IoUMetric.total_area_to_metrics(inter, union, area_pred, area_gt)
    assert ours["miou"] == pytest.approx(float(np.nanmean(ref["IoU"])), abs=1e-6)
    assert ours["acc"] == pytest.approx(float(ref["aAcc"]), abs=1e-6)
    assert ours["macc"] == pytest.approx(float(np.nanmean(ref["Acc"])), abs=1e-6)
    np.testing.assert_allclose(np.array(ours["iou"]), np.asarray(ref["IoU"], dtype=np.float64), atol=1e-6)

    # hand-made confusion: gt 0 0 1 1 2 ignore, pred 0 1 1 1 0 2, 4 classes (class 3 absent everywhere)
    gt = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    m = probes.segmentation_metrics(pred, gt, 4)
    # class 0: I=1, U=2+2-1=3; class 1: I=2, U=2+3-2=3; class 2: I=0, U=1; class 3: U=0 -> excluded
    assert m["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and math.isnan(m["iou"][3])
    assert m["miou"] == pytest.approx(1 / 3) and m["acc"] == pytest.approx(3 / 5)
    assert m["num_classes_present"] == 3


def test_majority_labels_and_reduce_zero():
    lab = torch.tensor(
        [
            [1, 1, 255, 255],
            [1, 2, 255, 3],
            [2, 2, 255, 4],
            [3, 3, 4, 255],
        ]
    )
    out = probes.majority_patch_labels(lab, 2)
    # (0,0): 1 wins 3:1; (0,1): ignore wins 3:1; (1,0): 2/3 tie -> smaller (2); (1,1): 4/255 tie -> 4
    assert out.tolist() == [[1, 255], [2, 4]]
    batched = probes.majority_patch_labels(torch.stack([lab, lab.flip(1)]), 2)
    assert batched.shape == (2, 2, 2) and batched[0].tolist() == [[1, 255], [2, 4]]
    assert probes.reduce_zero_label(torch.tensor([0, 1, 5])).tolist() == [255, 0, 4]
    # extra pixels beyond the last full patch are cropped
    assert probes.majority_patch_labels(torch.ones(5, 7, dtype=torch.long), 2).shape == (2, 3)


def test_top_variance_removal_drops_exactly_those_dims():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 5.0, 0.1, 3.0, 0.5, 8.0])
    x = torch.randn(2000, 6, generator=g) * scales
    dims = probes.top_variance_dims(x, 2)
    assert dims.tolist() == [5, 1]
    kept = probes.remove_dims(x, dims)
    assert torch.equal(kept, x[:, [0, 2, 3, 4]])
    assert probes.top_variance_dims(x, 0).numel() == 0
    with pytest.raises(ValueError):
        probes.top_variance_dims(x, 6)


def test_nn_probe_one_hot_tokens_is_perfect():
    g = torch.Generator().manual_seed(0)
    k = 5
    ytr = torch.randint(0, k, (200,), generator=g)
    ytr[:k] = torch.arange(k)
    yva = torch.randint(0, k, (80,), generator=g)
    xtr = torch.nn.functional.one_hot(ytr, k).float()
    xva = torch.nn.functional.one_hot(yva, k).float() * 3.0  # cosine: scale-invariant
    pred = probes.nn_probe(xtr, ytr, xva, chunk=7)
    m = probes.segmentation_metrics(pred, yva, k)
    assert m["acc"] == 1.0 and m["miou"] == 1.0
    pred_lin = probes.linear_probe(xtr + 0.01 * torch.randn(200, k, generator=g), ytr, xva, k, steps=100)
    assert probes.segmentation_metrics(pred_lin, yva, k)["acc"] == 1.0


def test_run_probes_skips_ignored_patches():
    # 2 images of a 2x2 grid; features are one-hot of a hidden label, some patches ignored
    lab = torch.tensor([[[0, 1], [2, 255]], [[1, 255], [0, 2]]])
    hidden = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2])  # the ignored patches' features are unrelated
    feats = {0: torch.nn.functional.one_hot(hidden, 3).float()}
    res = probes.run_probes(feats, lab, feats, lab, 3, probes=("nn",), remove_top_var=(0,), progress=False)
    assert len(res) == 1 and res[0].num_train_patches == 6 and res[0].num_val_patches == 6
    assert res[0].acc == 1.0 and res[0].layer == 1


# ----------------------------------------------------------------------------------------------------------------
# position proxy


class _FakeAdapter:
    """Designed tokens: reference = one-hot of the patch index; a position-masked patch i outputs one-hot of
    ``mapping[i]``; patches 16px, grid from the image size."""

    supports_masks = True
    name = "fake"
    patch_size = 16

    def __init__(self, mapping):
        self.mapping = torch.tensor(mapping)

    def normalize(self, x):
        return x

    def grid(self, h, w):
        return h // 16, w // 16

    def forward_masked(self, x, content_mask=None, pos_mask=None):
        b = x.shape[0]
        n = self.mapping.numel()
        idx = torch.arange(n).expand(b, n)
        if pos_mask is not None:
            idx = torch.where(pos_mask, self.mapping.expand(b, n), idx)
        return torch.nn.functional.one_hot(idx, n).float()


def test_position_match_hand_case(monkeypatch):
    # grid 2x3: 0=(0,0) 1=(0,1) 2=(0,2) 3=(1,0) 4=(1,1) 5=(1,2)
    mapping = [0, 2, 3, 5, 4, 5]  # 0->0 exact; 1->2 one off; 2->3 (dist 2); 3->5 (dist 2)
    fake = _FakeAdapter(mapping)
    pm = torch.tensor([[True, True, True, True, False, False]])
    x = torch.zeros(1, 3, 32, 48)
    m = pos.match_positions(fake.forward_masked(x, pos_mask=pm), fake.forward_masked(x), pm, (2, 3))
    assert m["target"].tolist() == [0, 1, 2, 3] and m["pred"].tolist() == [0, 2, 3, 5]
    assert m["distance"].tolist() == [0, 1, 2, 2]
    assert (m["num"], m["top1"], m["within1_count"]) == (4, 1, 2)

    # through the driver, with designed masks
    monkeypatch.setattr(
        pos,
        "sample_masks",
        lambda b, n, c, p, generator=None: (torch.zeros(b, n, dtype=torch.bool), pm.expand(b, n).clone()),
    )
    images = torch.zeros(2, 3, 32, 48)
    cells = pos.position_accuracy(fake, images, [0.0], [0.5], progress=False)
    assert len(cells) == 1
    c = cells[0]
    assert c.num_predictions == 8 and c.top1 == pytest.approx(0.25) and c.within1 == pytest.approx(0.5)
    assert c.chance == pytest.approx(1 / 6)


def test_position_nothing_to_predict_and_masks():
    fake = _FakeAdapter(list(range(6)))
    images = torch.zeros(2, 3, 32, 48)
    cells = pos.position_accuracy(fake, images, [0.0, 1.0], [0.0, 0.5], progress=False)
    by = {(c.content_ratio, c.pos_ratio): c for c in cells}
    assert by[(0.0, 0.0)].num_predictions == 0 and math.isnan(by[(0.0, 0.0)].top1)
    assert by[(1.0, 0.5)].num_predictions == 0  # everything content-masked: nothing visible to position-mask
    assert by[(0.0, 0.5)].num_predictions == 6 and by[(0.0, 0.5)].top1 == 1.0  # identity mapping
    assert pos.mean_over_cells(cells) == 1.0
    g = torch.Generator().manual_seed(0)
    cm, pm = pos.sample_masks(4, 20, 0.25, 0.5, g)
    assert not (cm & pm).any()
    assert cm.sum(1).tolist() == [5] * 4 and pm.sum(1).tolist() == [8] * 4  # 0.5 * (20 - 5) = 7.5 -> 8
    with pytest.raises(ValueError):
        pos.sample_masks(1, 4, 1.5, 0.1)


def test_position_on_real_model_content_unique():
    # random tiny model, tiny field: outputs are content-dominated, so with the unmasked reference every
    # position-masked patch of a noise image is found again at its own place
    torch.manual_seed(0)
    ad = OursAdapter(_pico())
    images = torch.rand(2, 3, 64, 64)
    cells = pos.position_accuracy(ad, images, [0.0, 0.25], [0.5], progress=False)
    assert all(c.num_predictions > 0 and c.top1 == 1.0 for c in cells)
    cells = pos.position_accuracy(ad, images, [0.0], [0.5], progress=False, reference="position")
    assert 0.0 <= cells[0].top1 <= 1.0


# ----------------------------------------------------------------------------------------------------------------
# CLI smoke


def test_analyze_attention_cli(tiny_ckpts):
    root, paths = tiny_ckpts
    out = root / "attn_out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "analyze_attention.py"),
        *paths,
        "--images",
        str(root / "imgs"),
        "--size",
        "64",
        "--queries",
        "0.5,0.5",
        "10,50",
        "--out",
        str(out),
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(out / "attention_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["checkpoint"], x["layer"]) for x in rows] == [
        ("tiny0", "1"),
        ("tiny0", "2"),
        ("tiny1", "1"),
        ("tiny1", "2"),
    ]
    for x in rows:  # random init: near-uniform attention
        assert 0 <= float(x["nmi"]) < 0.05
        assert float(x["mad"]) == pytest.approx(_brute_mean_pairwise_distance(4, 4, 16), rel=0.05)
    for name in ("attention_stats.png", "attention_maps_tiny0.png", "attention_maps_tiny1.png"):
        assert (out / name).stat().st_size > 1000
    bad = subprocess.run(
        cmd[:2] + [str(root / "missing.pth"), "--images", str(root / "imgs")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode == 2 and "error" in bad.stderr


def test_probe_dense_cli(tiny_ckpts, toy_ade, capsys):
    root, paths = tiny_ckpts
    tool = _tool("probe_dense")
    out = root / "probe_out"
    assert (
        tool.main(
            [
                paths[1],
                "--data",
                toy_ade,
                "--size",
                "64",
                "--probe",
                "both",
                "--layers",
                "all",
                "--remove-top-var",
                "0",
                "4",
                "--out",
                str(out),
                "--linear-steps",
                "50",
                "--quiet",
            ]
        )
        == 0
    )
    with open(out / "probe_results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2  # layers x m x probes
    assert {r["probe"] for r in rows} == {"nn", "linear"} and {r["layer"] for r in rows} == {"1", "2"}
    for r in rows:
        assert 0.0 <= float(r["miou"]) <= 1.0 and 0.0 <= float(r["acc"]) <= 1.0
        assert int(r["dim"]) == (64 if r["remove_top_var"] == "0" else 60)
    data = json.load(open(out / "probe_results.json"))
    assert len(data) == 8 and len(data[0]["iou"]) == 4
    assert "mIoU" in capsys.readouterr().out
    out2 = root / "probe_rand"
    assert (
        tool.main(
            [
                paths[0],
                "--data",
                toy_ade,
                "--size",
                "64",
                "--probe",
                "nn",
                "--random-init",
                "--out",
                str(out2),
                "--quiet",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out2 / "probe_results.csv")))
    assert len(rows) == 1 and rows[0]["init"] == "random"
    assert tool.main([paths[0], "--data", str(root), "--out", str(out2), "--quiet"]) == 2  # not an ADE layout


def test_probe_position_cli(tiny_ckpts):
    root, paths = tiny_ckpts
    tool = _tool("probe_position")
    out = root / "pos_out"
    assert (
        tool.main(
            [
                paths[0],
                "--images",
                str(root / "imgs"),
                "--size",
                "64",
                "--content-ratios",
                "0,0.5",
                "--pos-ratios",
                "0,0.5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = list(csv.reader(open(out / "position_top1.csv")))
    assert rows[0] == ["content_ratio \\ pos_ratio", "0", "0.5"] and [r[0] for r in rows[1:]] == ["0", "0.5"]
    assert rows[1][1] == "nan" and 0.0 <= float(rows[1][2]) <= 1.0
    assert (out / "position_within1.csv").exists() and (out / "position_results.csv").exists()

"""Checkpoint conversion (tools/convert_ckpt.py, transfer/convert): parity, position materialising, LayerScale
folding and bad input.

Every source kind is converted through the CLI, the output file is loaded by the TARGET library's own backbone
(detectron2 ``ViT``, MMSeg ``VisionTransformer``, timm ``VisionTransformer``) with strict key matching, and its
patch features are compared with a reference computed here, independently of ``transfer.convert``: our own
``pretrain`` model for our checkpoints, a hand-written plain-torch ViT forward for the DINOv2/timm/MAE layouts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.export import export_backbone
from pretrain.models.vit import ViTConfig, build_vit
from transfer.convert.canonical import fold_layerscale, patch_pos_at
from transfer.convert.cli import main
from transfer.convert.readers import ReadOptions, read_checkpoint

TOL = 1e-4
D, HEADS = 64, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------------------------
# helpers: hand-written references and target loaders


def bilinear_field(field: torch.Tensor, grid) -> torch.Tensor:
    """Hand-written bilinear sampling of a ``(1, D, h, w)`` field at the patch centres of the whole virtual image.

    Centre of patch (r, c): x = (c + 0.5) / gw in [0, 1]; with align_corners=False the field cell j covers
    [j/w, (j+1)/w], so the continuous pixel coordinate is u = x * w - 0.5, clamped to [0, w-1] (border padding).
    """
    _, d, h, w = field.shape
    gh, gw = grid
    out = torch.empty(gh * gw, d, dtype=torch.float64)
    f = field[0].double()
    for r in range(gh):
        v = min(max((r + 0.5) / gh * h - 0.5, 0.0), h - 1)
        y0 = int(v)
        y1, ty = min(y0 + 1, h - 1), v - y0
        for c in range(gw):
            u = min(max((c + 0.5) / gw * w - 0.5, 0.0), w - 1)
            x0 = int(u)
            x1, tx = min(x0 + 1, w - 1), u - x0
            val = (
                f[:, y0, x0] * (1 - ty) * (1 - tx)
                + f[:, y0, x1] * (1 - ty) * tx
                + f[:, y1, x0] * ty * (1 - tx)
                + f[:, y1, x1] * ty * tx
            )
            out[r * gw + c] = val
    return out[None].float()


def hand_blocks(sd: dict, x: torch.Tensor, depth: int, heads: int, eps: float = 1e-6) -> torch.Tensor:
    """Plain-torch pre-norm ViT blocks (timm names, optional ``ls1/ls2.gamma``), explicit softmax attention."""
    b, n, d = x.shape
    for i in range(depth):

        def g(name, i=i):
            return sd[f"blocks.{i}.{name}"].float()

        h = F.layer_norm(x, (d,), g("norm1.weight"), g("norm1.bias"), eps)
        qkv = F.linear(h, g("attn.qkv.weight"), g("attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1)
        a = F.linear((att @ v).transpose(1, 2).reshape(b, n, d), g("attn.proj.weight"), g("attn.proj.bias"))
        x = x + a * sd.get(f"blocks.{i}.ls1.gamma", torch.ones(d)).float()
        h = F.layer_norm(x, (d,), g("norm2.weight"), g("norm2.bias"), eps)
        m = F.linear(
            F.gelu(F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"), g("mlp.fc2.bias")
        )
        x = x + m * sd.get(f"blocks.{i}.ls2.gamma", torch.ones(d)).float()
    return x


def hand_vit_patches(sd, img, patch, pos, cls=None, regs=None, depth=2, final_norm=None, eps=1e-6):
    """Source reference for timm-style state dicts: tokens [cls, regs, patches + pos] -> blocks -> (norm) -> patches.

    ``sd``: timm-style names (already flattened); ``pos``: (1, N, D) patch positions at the image's grid;
    ``cls``: (1, 1, D) CLS token *including* its position, or None; ``final_norm``: (weight, bias) or None.
    """
    w = sd["patch_embed.proj.weight"].float()
    x = F.conv2d(img, w, sd["patch_embed.proj.bias"].float(), stride=patch).flatten(2).transpose(1, 2) + pos
    prefix = [t.expand(img.shape[0], -1, -1) for t in (cls, regs) if t is not None]
    x = hand_blocks(sd, torch.cat(prefix + [x], 1), depth, HEADS, eps)
    if final_norm is not None:
        x = F.layer_norm(x, (x.shape[-1],), final_norm[0].float(), final_norm[1].float(), eps)
    return x[:, sum(t.shape[1] for t in prefix) :]


def ours_reference(model, img, with_cls: bool, with_regs: bool, final_norm: bool) -> torch.Tensor:
    """Our ViT's own token preparation, optionally without CLS/registers, through its own blocks."""
    with torch.no_grad():
        seq, _ = model.prepare_tokens(img)
        r = model.num_prefix_tokens
        prefix = ([seq[:, :1]] if with_cls else []) + ([seq[:, 1:r]] if with_regs and r > 1 else [])
        x = torch.cat(prefix + [seq[:, r:]], 1)
        for blk in model.blocks:
            x = blk(x)
        if final_norm:
            x = model.norm(x)
        return x[:, sum(t.shape[1] for t in prefix) :]


def d2_features(path: str, img: torch.Tensor) -> torch.Tensor:
    """Load a detectron2-target file into detectron2's own ViT (strict) and return (B, N, D) patch features."""
    from detectron2.modeling import ViT

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    assert set(ckpt) == {"model", "meta"}
    assert all(k.startswith("backbone.net.") for k in ckpt["model"])
    gh, gw = meta["grid"]
    assert gh == gw and img.shape[-1] == gw * 16
    model = ViT(
        img_size=gh * 16,
        patch_size=16,
        embed_dim=meta["embed_dim"],
        depth=meta["depth"],
        num_heads=meta["num_heads"],
        mlp_ratio=meta["mlp_ratio"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=meta["norm_eps"]),
        window_size=0,
        use_rel_pos=False,
        pretrain_img_size=gh * 16,
        pretrain_use_cls_token=True,
    ).eval()
    sd = {k[len("backbone.net.") :]: v for k, v in ckpt["model"].items()}
    sd.pop("cls_token", None)
    sd.pop("reg_token", None)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return model(img)["last_feat"].flatten(2).transpose(1, 2)


def mmseg_features(path: str, img: torch.Tensor) -> torch.Tensor:
    """Load an mmseg-target file into MMSeg's own VisionTransformer (strict) and return (B, N, D) patch features."""
    from mmseg.models.backbones import VisionTransformer

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    assert set(ckpt) == {"state_dict", "meta"}
    gh, gw = meta["grid"]
    model = VisionTransformer(
        img_size=(gh * 16, gw * 16),
        patch_size=16,
        embed_dims=meta["embed_dim"],
        num_layers=meta["depth"],
        num_heads=meta["num_heads"],
        mlp_ratio=int(meta["mlp_ratio"]),
        qkv_bias=True,
        final_norm=True,
        with_cls_token=True,
        patch_bias=True,
        norm_cfg=dict(type="LN", eps=meta["norm_eps"]),
        interpolate_mode="bicubic",
        output_cls_token=False,
    )
    model.eval()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    with torch.no_grad():
        return model(img)[-1].flatten(2).transpose(1, 2)


def timm_features(path: str, img: torch.Tensor) -> torch.Tensor:
    from timm.models.vision_transformer import VisionTransformer

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = VisionTransformer(**ckpt["meta"]["timm_kwargs"]).eval()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    with torch.no_grad():
        return model.forward_features(img)[:, model.num_prefix_tokens :]


def convert(tmp_path, src, target, *extra, name=None):
    dst = str(tmp_path / (name or f"{target}.pth"))
    rc = main(["--src", str(src), "--dst", dst, "--target", target, *extra])
    assert rc == 0
    return dst


def max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def randomise_(model: nn.Module) -> None:
    """Non-trivial values everywhere (LayerScale gammas far from their 1e-5 init, visible CLS/registers)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.3, 1.5)
            elif "norm" in n and n.endswith("weight"):
                p.uniform_(0.7, 1.3)
            elif n.endswith("bias"):
                p.normal_(0, 0.1)
            elif "token" in n or "pos" in n:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.08)


def rand_block_state(depth, d=D, hidden=4 * D, ls=False, prefix=lambda i: f"blocks.{i}."):
    sd = {}
    for i in range(depth):
        p = prefix(i)
        sd.update(
            {
                p + "norm1.weight": 1 + 0.1 * torch.randn(d),
                p + "norm1.bias": 0.1 * torch.randn(d),
                p + "attn.qkv.weight": 0.08 * torch.randn(3 * d, d),
                p + "attn.qkv.bias": 0.05 * torch.randn(3 * d),
                p + "attn.proj.weight": 0.08 * torch.randn(d, d),
                p + "attn.proj.bias": 0.05 * torch.randn(d),
                p + "norm2.weight": 1 + 0.1 * torch.randn(d),
                p + "norm2.bias": 0.1 * torch.randn(d),
                p + "mlp.fc1.weight": 0.08 * torch.randn(hidden, d),
                p + "mlp.fc1.bias": 0.05 * torch.randn(hidden),
                p + "mlp.fc2.weight": 0.08 * torch.randn(d, hidden),
                p + "mlp.fc2.bias": 0.05 * torch.randn(d),
            }
        )
        if ls:
            sd[p + "ls1.gamma"] = torch.empty(d).uniform_(0.3, 1.5)
            sd[p + "ls2.gamma"] = torch.empty(d).uniform_(0.3, 1.5)
    return sd


def image(grid, batch=2, seed=1):
    return torch.randn(batch, 3, grid[0] * 16, grid[1] * 16, generator=torch.Generator().manual_seed(seed))


def ours_model(field=True, regs=0, ls=True, img_size=64, field_size=(5, 5)):
    cfg = ViTConfig(
        arch="vit_pico",
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        patch_size=16,
        img_size=img_size,
        num_register_tokens=regs,
        pos_field=field,
        pos_field_size=list(field_size),
        layerscale=1e-5 if ls else None,
    )
    model = build_vit(cfg).eval()
    randomise_(model)
    return model


needs_d2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("detectron2") is None, reason="detectron2 not installed"
)
needs_mmseg = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mmseg") is None, reason="mmsegmentation not installed"
)


# ------------------------------------------------------------------------------------------------------------------
# parity: our checkpoints


@needs_d2
@needs_mmseg
@pytest.mark.parametrize(
    "field,regs,ls",
    [(True, 2, True), (True, 0, False), (False, 0, True)],
    ids=["field-registers-layerscale", "field-plain", "pos_embed-layerscale"],
)
def test_ours_parity_detectron2_and_mmseg(tmp_path, capsys, field, regs, ls):
    model = ours_model(field=field, regs=regs, ls=ls)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    grid = (6, 6)
    img = image(grid)
    d2_extra = ["--keep-tokens"] if regs else []
    d2 = convert(tmp_path, src, "detectron2", "--grid", "6", "6", *d2_extra)
    assert "format: ours" in capsys.readouterr().out
    ref = ours_reference(model, img, with_cls=False, with_regs=False, final_norm=False)
    assert max_diff(d2_features(d2, img), ref) <= TOL
    ck = torch.load(d2, weights_only=True)
    meta = ck["meta"]
    assert meta["grid"] == [6, 6] and meta["num_heads"] == HEADS and meta["source_format"] == "ours"
    assert meta["cls_token_kept"] == bool(regs) and meta["num_register_tokens"] == regs
    assert ck["model"]["backbone.net.pos_embed"].shape == (1, 1 + 36, D)
    if regs:  # --keep-tokens: tokens for the project's SDPA backbone, CLS slot = the CLS position
        assert torch.equal(ck["model"]["backbone.net.reg_token"], model.reg_token.detach())
        assert torch.equal(ck["model"]["backbone.net.cls_token"], model.cls_token.detach())
        assert torch.allclose(ck["model"]["backbone.net.pos_embed"][:, :1], model.cls_pos().detach())

    mm_extra = ["--drop-registers"] if regs else []
    mm = convert(tmp_path, src, "mmseg", "--grid", "6", "6", *mm_extra)
    ref = ours_reference(model, img, with_cls=True, with_regs=False, final_norm=True)
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_ours_parity_timm_nonsquare_grid(tmp_path):
    model = ours_model(field=True, regs=2, ls=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    dst = convert(tmp_path, src, "timm", "--grid", "3", "5")
    img = image((3, 5))
    with torch.no_grad():
        ref = model(img)["patch"]  # the full source: CLS and registers kept, final-normed
    assert max_diff(timm_features(dst, img), ref) <= TOL


def test_training_checkpoint_converts_like_the_exported_teacher(tmp_path, capsys):
    """A full training checkpoint (student, teacher, heads, optimiser, config) converts from its EMA teacher:
    the same tensors as converting the exported teacher backbone, metadata (heads of a 96-d ViT, which the
    standard table lacks) from the embedded config, and features equal to the student-free teacher's."""
    from pretrain.engine.checkpoint import save_checkpoint
    from pretrain.engine.config import load_config, to_container
    from pretrain.engine.optim import build_optimizer
    from pretrain.ssl import SSLMetaArch

    cfg = load_config(["configs/pretrain/tiny_demo.yaml"], ["train.data=unused", "pos_field.size=[6,6]"])
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    randomise_(model.teacher["backbone"])  # teacher != student, so picking the wrong one shows
    ckpt = save_checkpoint(str(tmp_path / "run"), 7, model, build_optimizer(model.student, cfg), to_container(cfg))
    export_backbone(model.teacher["backbone"], tmp_path / "backbone.pth")
    for target, extra in (("timm", ("--grid", "6", "6")), ("detectron2", ())):
        a = torch.load(convert(tmp_path, ckpt, target, *extra, name=f"train_{target}.pth"), weights_only=True)
        b = torch.load(
            convert(tmp_path, tmp_path / "backbone.pth", target, *extra, name=f"exp_{target}.pth"), weights_only=True
        )
        sa, sb = a.get("state_dict", a.get("model")), b.get("state_dict", b.get("model"))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    out = capsys.readouterr().out
    assert "'model->teacher'" in out
    img = image((6, 6))
    with torch.no_grad():
        ref = model.teacher["backbone"](img)["patch"]
    assert max_diff(timm_features(str(tmp_path / "train_timm.pth"), img), ref) <= TOL


# ------------------------------------------------------------------------------------------------------------------
# parity: DINOv2 layout (patch 14, block_chunks, registers, LayerScale, teacher checkpoint)


def dinov2_checkpoint(depth=4, chunks=2, regs=4, n=5):
    per = depth // chunks
    blocks = rand_block_state(depth, ls=True, prefix=lambda i: f"blocks.{i // per}.{i}.")
    sd = {
        "cls_token": 0.5 * torch.randn(1, 1, D),
        "pos_embed": 0.5 * torch.randn(1, 1 + n * n, D),
        "register_tokens": 0.5 * torch.randn(1, regs, D),
        "mask_token": torch.zeros(1, D),
        "patch_embed.proj.weight": 0.05 * torch.randn(D, 3, 14, 14),
        "patch_embed.proj.bias": 0.1 * torch.randn(D),
        "norm.weight": 1 + 0.1 * torch.randn(D),
        "norm.bias": 0.1 * torch.randn(D),
        **blocks,
    }
    teacher = {"backbone." + k: v for k, v in sd.items()}
    teacher.update({"dino_head.mlp.0.weight": torch.randn(32, D), "ibot_head.last_layer.weight_g": torch.randn(8, 1)})
    flat = {}
    for k, v in sd.items():  # the test's own flattening of blocks.<chunk>.<i>.
        parts = k.split(".")
        flat[".".join(["blocks"] + parts[2:]) if k.startswith("blocks.") else k] = v
    return {"teacher": teacher, "iteration": 10}, flat


def dinov2_reference(flat, img, grid, with_cls, with_regs, final_norm):
    from timm.layers import resample_patch_embed

    sd = dict(flat)
    sd["patch_embed.proj.weight"] = resample_patch_embed(flat["patch_embed.proj.weight"], [16, 16])
    n = int((flat["pos_embed"].shape[1] - 1) ** 0.5)
    g = flat["pos_embed"][:, 1:].reshape(1, n, n, D).permute(0, 3, 1, 2)
    pos = F.interpolate(g, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    cls = flat["cls_token"] + flat["pos_embed"][:, :1] if with_cls else None
    regs = flat["register_tokens"] if with_regs else None
    fn = (flat["norm.weight"], flat["norm.bias"]) if final_norm else None
    return hand_vit_patches(sd, img, 16, pos, cls, regs, depth=4, final_norm=fn)


@needs_d2
@needs_mmseg
def test_dinov2_parity(tmp_path, capsys):
    ckpt, flat = dinov2_checkpoint()
    src = tmp_path / "dinov2_teacher.pth"
    torch.save(ckpt, src)
    grid = (4, 4)
    img = image(grid)
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: dinov2" in out and "dino_head.mlp.0.weight" in out and "mask_token: training-only" in out
    assert "flattened" in out and "resampled" in out and "norm.weight" in out
    ref = dinov2_reference(flat, img, grid, False, False, False)
    assert max_diff(d2_features(d2, img), ref) <= TOL

    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--drop-registers", "--num-heads", "2")
    ref = dinov2_reference(flat, img, grid, True, False, True)
    assert max_diff(mmseg_features(mm, img), ref) <= TOL

    tm = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2")  # registers kept
    ref = dinov2_reference(flat, img, grid, True, True, True)
    assert max_diff(timm_features(tm, img), ref) <= TOL
    assert torch.load(tm, weights_only=True)["meta"]["num_register_tokens"] == 4


# ------------------------------------------------------------------------------------------------------------------
# parity: timm ViT and MAE release


@needs_d2
@needs_mmseg
def test_timm_parity(tmp_path, capsys):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=D, depth=2, num_heads=HEADS, init_values=1e-5, num_classes=10
    ).eval()
    randomise_(model)
    src = tmp_path / "timm_vit.pth"
    torch.save(model.state_dict(), src)
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: timm" in out and "head.weight: projection/classification head" in out
    sd = model.state_dict()
    pos = sd["pos_embed"][:, 1:]  # native grid 4x4 == target grid: no resampling
    ref = hand_vit_patches(sd, img, 16, pos)
    assert max_diff(d2_features(d2, img), ref) <= TOL
    with torch.no_grad():  # and the hand reference is the timm model itself
        assert (
            max_diff(
                model.forward_features(img)[:, 1:],
                hand_vit_patches(
                    sd,
                    img,
                    16,
                    pos,
                    sd["cls_token"] + sd["pos_embed"][:, :1],
                    final_norm=(sd["norm.weight"], sd["norm.bias"]),
                ),
            )
            <= TOL
        )
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    with torch.no_grad():
        ref = model.forward_features(img)[:, 1:]
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_timm_registers_no_embed_class_to_timm(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=64,
        patch_size=16,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        reg_tokens=3,
        no_embed_class=True,
        init_values=1e-5,
        num_classes=0,
        global_pool="avg",
        fc_norm=False,
    ).eval()
    randomise_(model)
    src = tmp_path / "timm_reg.pth"
    torch.save(model.state_dict(), src)
    dst = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2")
    img = image((4, 4))
    with torch.no_grad():
        ref = model.forward_features(img)[:, model.num_prefix_tokens :]
    assert max_diff(timm_features(dst, img), ref) <= TOL


def mae_checkpoint(fc_norm=False, n=4, hidden=2 * D):
    sd = {
        "cls_token": 0.5 * torch.randn(1, 1, D),
        "pos_embed": 0.5 * torch.randn(1, 1 + n * n, D),
        "mask_token": torch.randn(1, 1, 32),
        "patch_embed.proj.weight": 0.05 * torch.randn(D, 3, 16, 16),
        "patch_embed.proj.bias": 0.1 * torch.randn(D),
        "decoder_embed.weight": torch.randn(32, D),
        "decoder_pos_embed": torch.randn(1, 1 + n * n, 32),
        "decoder_blocks.0.norm1.weight": torch.randn(32),
        "decoder_norm.weight": torch.randn(32),
        "decoder_pred.weight": torch.randn(768, 32),
        **rand_block_state(2, hidden=hidden),
    }
    norm = "fc_norm" if fc_norm else "norm"
    sd[norm + ".weight"] = 1 + 0.1 * torch.randn(D)
    sd[norm + ".bias"] = 0.1 * torch.randn(D)
    return {"model": sd}, sd


@needs_d2
@needs_mmseg
def test_mae_parity(tmp_path, capsys):
    ckpt, sd = mae_checkpoint()
    src = tmp_path / "mae.pth"
    torch.save(ckpt, src)
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4", "--num-heads", "2")
    out = capsys.readouterr().out
    assert "format: mae" in out and "decoder_pred.weight: MAE decoder" in out and "mask_token" in out
    assert "mlp_ratio=2" in out
    ref = hand_vit_patches(sd, img, 16, sd["pos_embed"][:, 1:])
    assert max_diff(d2_features(d2, img), ref) <= TOL
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    ref = hand_vit_patches(
        sd,
        img,
        16,
        sd["pos_embed"][:, 1:],
        sd["cls_token"] + sd["pos_embed"][:, :1],
        final_norm=(sd["norm.weight"], sd["norm.bias"]),
    )
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


@needs_mmseg
def test_mae_fc_norm_used_as_final_norm(tmp_path, capsys):
    ckpt, sd = mae_checkpoint(fc_norm=True)
    src = tmp_path / "mae_gp.pth"
    torch.save(ckpt, src)
    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4", "--num-heads", "2")
    assert "'fc_norm.*' (global-pool MAE) used as the final norm" in capsys.readouterr().out
    out = torch.load(mm, weights_only=True)["state_dict"]
    assert torch.equal(out["ln1.weight"], sd["fc_norm.weight"]) and torch.equal(out["ln1.bias"], sd["fc_norm.bias"])


# ------------------------------------------------------------------------------------------------------------------
# position materialising and LayerScale folding


def test_materialised_field_equals_direct_sampling_and_hand_bilinear(tmp_path):
    model = ours_model(field=True, field_size=(3, 4))
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    for grid in [(5, 7), (2, 2), (8, 3)]:
        dst = convert(tmp_path, src, "timm", "--grid", *map(str, grid), name=f"t{grid}.pth")
        written = torch.load(dst, weights_only=True)["state_dict"]["pos_embed"]
        assert written.shape == (1, 1 + grid[0] * grid[1], D)
        assert torch.equal(written[:, :1], model.cls_pos_embed.detach())  # CLS slot first
        patch = written[:, 1:]
        with torch.no_grad():
            direct = model.pos_field(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, grid)
        assert max_diff(patch, direct) <= 1e-6
        assert max_diff(patch, bilinear_field(model.pos_field.field.detach(), grid)) <= 1e-5


def test_pos_embed_grid_resized_once_bicubic():
    c, _ = read_checkpoint(mae_checkpoint(n=3)[0], ReadOptions(num_heads=2))
    pe = c.pos_grid
    want = F.interpolate(pe, size=(5, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert max_diff(patch_pos_at(c, (5, 4)), want) <= 1e-6
    assert torch.equal(patch_pos_at(c, (3, 3)), pe.flatten(2).transpose(1, 2))  # same grid: untouched


def test_layerscale_folding_is_exact():
    ckpt, flat = dinov2_checkpoint()
    c, _ = read_checkpoint(ckpt, ReadOptions(num_heads=2))
    folded = fold_layerscale(c)
    assert c.has_layerscale and not folded.has_layerscale and folded.layerscale_folded
    assert not any("ls1" in k or "ls2" in k for k in folded.state)
    x = torch.randn(2, 10, D)
    assert max_diff(hand_blocks(c.state, x, 4, HEADS), hand_blocks(folded.state, x, 4, HEADS)) <= 1e-5
    # the proj rows are scaled, nothing else changed
    g = c.state["blocks.2.ls1.gamma"]
    assert torch.allclose(folded.state["blocks.2.attn.proj.weight"], c.state["blocks.2.attn.proj.weight"] * g[:, None])
    assert torch.allclose(
        folded.state["blocks.2.mlp.fc2.bias"], c.state["blocks.2.mlp.fc2.bias"] * c.state["blocks.2.ls2.gamma"]
    )
    assert torch.equal(folded.state["blocks.2.mlp.fc1.weight"], c.state["blocks.2.mlp.fc1.weight"])


# ------------------------------------------------------------------------------------------------------------------
# bad input: non-zero exit, a message naming the problem, no output file


def _fails(tmp_path, capsys, src, target="timm", *extra, expect=()):
    dst = tmp_path / "out.pth"
    rc = main(["--src", str(src), "--dst", str(dst), "--target", target, "--grid", "4", "4", *extra])
    err = capsys.readouterr().err
    assert rc != 0
    for e in expect:
        assert e in err, err
    assert not dst.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # no temp file left either
    return err


def _exported_with(tmp_path, edit):
    model = ours_model(field=True)
    src = tmp_path / "backbone.pth"
    obj = export_backbone(model, src)
    edit(obj["model"])
    torch.save(obj, src)
    return src


def test_bad_non_checkpoint_file(tmp_path, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("this is not a checkpoint\n")
    _fails(tmp_path, capsys, src, expect=("not a PyTorch checkpoint",))
    _fails(tmp_path, capsys, tmp_path / "missing.pth", expect=("not found",))


def test_bad_unknown_layout(tmp_path, capsys):
    src = tmp_path / "weird.pth"
    torch.save({"encoder_layers": {"w": torch.zeros(3)}, "epoch": 3}, src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "epoch"))
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "conv1.weight"))
    torch.save([torch.zeros(2)], src)
    _fails(tmp_path, capsys, src, expect=("unknown checkpoint layout", "list"))


def test_bad_missing_tensor(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.pop("blocks.1.mlp.fc2.weight"))
    _fails(tmp_path, capsys, src, expect=("missing tensor", "blocks.1.mlp.fc2.weight"))
    src = _exported_with(tmp_path, lambda sd: sd.pop("pos_field.field"))
    _fails(tmp_path, capsys, src, expect=("missing position embedding", "pos_field.field"))


def test_bad_wrong_shape(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.proj.weight", torch.zeros(D, D + 1)))
    _fails(tmp_path, capsys, src, expect=("wrong shape", "blocks.0.attn.proj.weight", "(64, 65)"))


def test_bad_unknown_key(tmp_path, capsys):
    src = _exported_with(tmp_path, lambda sd: sd.__setitem__("blocks.0.attn.q_norm.weight", torch.ones(32)))
    _fails(tmp_path, capsys, src, expect=("unknown key", "blocks.0.attn.q_norm.weight"))


def test_bad_registers_for_mmseg_without_drop(tmp_path, capsys):
    model = ours_model(field=True, regs=2)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    _fails(tmp_path, capsys, src, "mmseg", expect=("2 register tokens", "--drop-registers"))
    _fails(tmp_path, capsys, src, "detectron2", expect=("register tokens", "--keep-tokens"))


def test_bad_python_objects_need_unsafe_load(tmp_path, capsys):
    ckpt, _ = mae_checkpoint()
    ckpt["args"] = argparse.Namespace(arch="vit_small")  # as in old DINO/iBOT checkpoints
    src = tmp_path / "dino_like.pth"
    torch.save(ckpt, src)
    _fails(tmp_path, capsys, src, "timm", "--num-heads", "2", expect=("--unsafe-load", "non-tensor"))
    dst = convert(tmp_path, src, "timm", "--grid", "4", "4", "--num-heads", "2", "--unsafe-load")
    assert os.path.exists(dst)


def test_bad_heads_not_inferable(tmp_path, capsys):
    ckpt, _ = mae_checkpoint()
    src = tmp_path / "mae.pth"
    torch.save(ckpt, src)
    _fails(tmp_path, capsys, src, expect=("num_heads", "--num-heads", "embed_dim 64"))


def test_cli_script_subprocess(tmp_path):
    """The thin tools/ entry point works from any directory and exits non-zero on bad input."""
    src = tmp_path / "junk.pth"
    src.write_bytes(os.urandom(64))
    dst = tmp_path / "out.pth"
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
        cwd=str(tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode != 0 and "not a PyTorch checkpoint" in proc.stderr
    assert not dst.exists()


def test_format_detection_wrappers_and_prefixes():
    from transfer.convert.readers import detect_format, unwrap

    _, flat = dinov2_checkpoint(chunks=1)
    assert detect_format(unwrap(flat)) == "dinov2"  # hub state dict: register_tokens, (1, D) mask_token
    _, mae = mae_checkpoint()
    blocks = {k: v for k, v in mae.items() if not k.startswith(("decoder", "mask_token"))}
    assert detect_format(unwrap(dict(blocks))) == "timm"
    dino = {  # DINO/iBOT release: student behind DDP, teacher preferred, heads dropped
        "student": {"module.backbone." + k: torch.zeros_like(v) for k, v in blocks.items()},
        "teacher": {**{"backbone." + k: v for k, v in blocks.items()}, "head.mlp.0.weight": torch.zeros(8, D)},
        "epoch": 100,
    }
    u = unwrap(dino)
    assert u.wrappers == ["teacher"] and u.prefixes == {"backbone."} and detect_format(u) == "mae"
    c, _ = read_checkpoint(dino, ReadOptions(num_heads=2))
    assert torch.equal(c.state["blocks.1.mlp.fc2.weight"], blocks["blocks.1.mlp.fc2.weight"])
    assert ("head.mlp.0.weight", "projection/classification head: not part of the backbone") in c.dropped


@needs_d2
def test_python_api(tmp_path):
    from transfer.convert import ConversionError, convert_checkpoint

    model = ours_model(field=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    s = convert_checkpoint(src, tmp_path / "d2.pth", "detectron2", grid=(4, 4), quiet=True)
    assert s["parity"].ok and s["meta"]["grid"] == [4, 4] and (tmp_path / "d2.pth").exists()
    with pytest.raises(ConversionError, match="square grid"):
        convert_checkpoint(src, tmp_path / "bad.pth", "detectron2", grid=(4, 6), quiet=True)
    assert not (tmp_path / "bad.pth").exists()


@needs_d2
@needs_mmseg
def test_frameworks_own_loaders_read_the_files(tmp_path):
    """The files load through the loaders the protocols use: detectron2's DetectionCheckpointer (exact
    ``backbone.net.*`` keys, no heuristics) and MMSeg's ``init_cfg=Pretrained`` (reads ``state_dict``)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import ViT
    from mmseg.models.backbones import VisionTransformer

    model = ours_model(field=True, ls=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    img = image((4, 4))
    d2 = convert(tmp_path, src, "detectron2", "--grid", "4", "4")
    net = ViT(
        img_size=64,
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        window_size=0,
        use_rel_pos=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        pretrain_img_size=64,
    ).eval()
    wrapper = nn.Module()
    wrapper.backbone = nn.Module()
    wrapper.backbone.net = net
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    DetectionCheckpointer(wrapper).load(d2)
    assert all(not torch.equal(before[k], v) for k, v in wrapper.state_dict().items() if "norm" not in k)
    with torch.no_grad():
        got = net(img)["last_feat"].flatten(2).transpose(1, 2)
    assert max_diff(got, ours_reference(model, img, False, False, False)) <= TOL

    mm = convert(tmp_path, src, "mmseg", "--grid", "4", "4")
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

"""Hand-written references (a plain-torch ViT forward for the DINOv2/timm/MAE layouts) and the target
libraries' own loaders, independent of transfer.convert."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.vit import ViTConfig, build_vit
from transfer.convert.cli import main
from transfer.vitdet.plain_vit import plain_vit_kwargs

TOL = 1e-4
D, HEADS = 64, 2


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
    arch = {k: meta[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps")}
    model = ViT(**plain_vit_kwargs(img_size=gh * 16, patch_size=16, **arch)).eval()
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


def convert_logged(directory, src, target, *extra, name=None):
    """``convert`` with its printed summary captured (module-scoped fixtures cannot use capsys): ``(dst, stdout)``."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dst = convert(directory, src, target, *extra, name=name)
    return dst, buf.getvalue()


def saved(obj, path):
    """``torch.save(obj, path)``; returns ``path``."""
    torch.save(obj, path)
    return path


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


def ours_model(field=True, regs=0, ls=True, img_size=64, field_size=(5, 5), **vit):
    """Our tiny ViT (randomised); ``vit`` adds or replaces :class:`ViTConfig` fields (position kinds, RoPE)."""
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
        **vit,
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

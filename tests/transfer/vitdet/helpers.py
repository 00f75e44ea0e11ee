"""detectron2 ViT pairs, converted checkpoints and run helpers for the ViTDet tests."""

import json
import os
import subprocess

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.modeling import ViT  # noqa: E402

from tests.support.paths import REPO
from transfer.vitdet.backbone import SDPAViT  # noqa: E402
from transfer.vitdet.plain_vit import plain_vit_kwargs  # noqa: E402

CFG_DIR = os.path.join(REPO, "configs", "vitdet")


def _vit_kwargs(**over):
    kw = plain_vit_kwargs(img_size=64, patch_size=8, embed_dim=48, depth=3, num_heads=4)
    kw.update(over)
    return kw


def _pair(**over):
    """A detectron2 ViT and our SDPAViT holding the same (random) weights."""
    torch.manual_seed(0)
    ref = ViT(**_vit_kwargs(**over))
    with torch.no_grad():  # make the (zero-initialised) biases and norms non-trivial
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = SDPAViT(**_vit_kwargs(**over))
    ours.load_state_dict(ref.state_dict(), strict=True)  # same parameter names
    return ref, ours


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _fwd_bwd(model, x, weight):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)["last_feat"]
    (out * weight).sum().backward()
    return out.detach(), x.grad.detach(), _grads(model)


def _converted_checkpoint(path, embed_dim=64, depth=2, num_heads=2, patch=16, grid=8, tokens=False):
    """A checkpoint in the converter's detectron2 format, from a detectron2 ViT's state dict."""
    torch.manual_seed(0)
    vit = ViT(
        **_vit_kwargs(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            patch_size=patch,
            img_size=grid * patch,
            pretrain_img_size=grid * patch,
        )
    )
    sd = {f"backbone.net.{k}": v for k, v in vit.state_dict().items()}
    if tokens:
        sd["backbone.net.cls_token"] = torch.randn(1, 1, embed_dim) * 0.02
    meta = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "patch_size": patch,
        "grid": [grid, grid],
        "num_register_tokens": 0,
        "cls_token_kept": tokens,
    }
    torch.save({"model": sd, "meta": meta}, path)
    return sd


def _tiny_model(embed_dim=64, depth=2, num_heads=2):
    cfg = LazyConfig.load(os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py"))
    net = cfg.model.backbone.net
    net.embed_dim, net.depth, net.num_heads = embed_dim, depth, num_heads
    return cfg, instantiate(cfg.model)


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _iterations_logged(out_dir):
    its = []
    with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "total_loss" in rec:
                its.append(rec["iteration"])
    return its


def _final_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics_final.json"), encoding="utf-8") as f:
        return json.load(f)

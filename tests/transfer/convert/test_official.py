"""Converted checkpoints reproduce the OFFICIAL models' final-normed patch tokens (fixtures made once from the
official code by tools/make_reference_fixtures.py) to 1e-4, at three input sizes (one the stored grid), in timm,
in the project's ViTDet backbone (SDPAViT, tokens kept; its output final-normed with the source's norm) and in
MMSeg (registers kept in the project's RegisterVisionTransformer)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.support.official_fixtures import load_fixture, parse_size
from transfer.convert.api import convert_checkpoint
from transfer.convert.canonical import ConversionError

TOL = 1e-4
# fixture -> (patch size, converter source format)
SOURCES = {
    "dinov2": (14, "dinov2"),
    "dinov2_chunks": (14, "dinov2"),
    "dinov2_reg": (14, "dinov2"),
    "dinov3": (16, "dinov3"),
    "mae": (16, "mae"),
    "timm": (16, "timm"),
    "timm_reg": (16, "timm"),
}
CASES = [(name, key) for name in SOURCES for key in sorted(load_fixture(name)["tokens"])]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each fixture's checkpoint saved as the official code saves it."""
    d = tmp_path_factory.mktemp("official")
    out = {}
    for name in SOURCES:
        fx = load_fixture(name)
        path = d / f"{name}.pth"
        torch.save(fx["checkpoint"], path)
        out[name] = (path, fx)
    return out


def _convert(tmp_path, src, target, grid, patch, **kw):
    dst = tmp_path / f"{target}.pth"
    s = convert_checkpoint(src, dst, target, grid=grid, patch_size=patch, num_heads=2, quiet=True, **kw)
    return torch.load(dst, map_location="cpu", weights_only=True), s


def timm_tokens(ckpt: dict, img: torch.Tensor) -> torch.Tensor:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    meta = ckpt["meta"]
    if meta.get("timm_model"):
        model = timm.create_model(meta["timm_model"], pretrained=False, **meta["timm_kwargs"])
    else:
        model = VisionTransformer(**meta["timm_kwargs"], norm_layer=partial(nn.LayerNorm, eps=meta["norm_eps"]))
    model.eval().load_state_dict(ckpt["state_dict"], strict=True)
    with torch.no_grad():
        return model.forward_features(img)[:, model.num_prefix_tokens :]


def vitdet_tokens(path, ckpt: dict, img: torch.Tensor, norm: tuple) -> torch.Tensor:
    """The ViTDet training path: architecture from the file (read_backbone_arch), SDPAViT, strict load."""
    from transfer.vitdet.backbone import SDPAViT
    from transfer.vitdet.checkpoint import read_backbone_arch
    from transfer.vitdet.plain_vit import plain_vit_kwargs

    arch = read_backbone_arch(str(path))
    arch.pop("grid")
    arch.pop("norm_eps", None)  # a LayerNorm argument, passed below
    base = {k: arch.pop(k) for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")}
    kw = plain_vit_kwargs(img_size=arch["pretrain_img_size"], norm_eps=ckpt["meta"]["norm_eps"], **base)
    kw.update(arch)
    model = SDPAViT(**kw).eval()
    sd = {k[len("backbone.net.") :]: v for k, v in ckpt["model"].items()}
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        x = model(img)[model._out_features[0]].flatten(2).transpose(1, 2)
    return F.layer_norm(x, (x.shape[-1],), norm[0], norm[1], ckpt["meta"]["norm_eps"])


def mmseg_tokens(ckpt: dict, img: torch.Tensor) -> torch.Tensor:
    from mmseg.models.backbones import VisionTransformer

    from transfer.segmenter.register_vit import RegisterVisionTransformer
    from transfer.segmenter.rope_vit import RoPEVisionTransformer

    meta = ckpt["meta"]
    extra, cls = {}, VisionTransformer
    if meta["num_register_tokens"] and not meta.get("rope"):
        cls, extra = RegisterVisionTransformer, dict(num_register_tokens=meta["num_register_tokens"])
    elif meta.get("rope"):
        r = meta["rope"]
        cls = RoPEVisionTransformer
        extra = dict(rope_base=r["base"], rope_rule=r["rule"], rope_coords=r["coords"],
                     num_register_tokens=meta["num_register_tokens"])  # fmt: skip
    gh, gw = meta["grid"]
    p = meta["patch_size"]
    model = cls(img_size=(gh * p, gw * p), patch_size=p, embed_dims=meta["embed_dim"], num_layers=meta["depth"],
                num_heads=meta["num_heads"], mlp_ratio=int(meta["mlp_ratio"]), qkv_bias=True, final_norm=True,
                with_cls_token=True, patch_bias=True, norm_cfg=dict(type="LN", eps=meta["norm_eps"]),
                interpolate_mode="bicubic", output_cls_token=False, **extra)  # fmt: skip
    model.eval()
    model.load_state_dict(ckpt["state_dict"], strict=True)
    with torch.no_grad():
        return model(img)[-1].flatten(2).transpose(1, 2)


def _final_norm(fx: dict) -> tuple:
    sd = fx["checkpoint"].get("model", fx["checkpoint"])
    return sd["norm.weight"], sd["norm.bias"]


def _check(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    diff = float((out - ref).abs().max())
    assert diff <= TOL * max(1.0, float(ref.abs().max())), diff
    return diff


@pytest.mark.parametrize("name,key", CASES)
def test_timm_target_reproduces_official(sources, tmp_path, name, key):
    path, fx = sources[name]
    patch, fmt = SOURCES[name]
    h, w = parse_size(key)
    ckpt, summary = _convert(tmp_path, path, "timm", (h // patch, w // patch), patch, src_format=fmt)
    _check(timm_tokens(ckpt, fx["images"][key]), fx["tokens"][key])


@pytest.mark.parametrize("name,key", [(n, k) for n, k in CASES if parse_size(k)[0] == parse_size(k)[1]])
def test_vitdet_backbone_reproduces_official(sources, tmp_path, name, key):
    path, fx = sources[name]
    patch, fmt = SOURCES[name]
    g = parse_size(key)[0] // patch
    ckpt, _ = _convert(tmp_path, path, "detectron2", (g, g), patch, src_format=fmt, keep_tokens=True)
    _check(vitdet_tokens(tmp_path / "detectron2.pth", ckpt, fx["images"][key], _final_norm(fx)), fx["tokens"][key])


@pytest.mark.parametrize("name,key", CASES)
def test_mmseg_reproduces_official(sources, tmp_path, name, key):
    """Registers (DINOv2-reg, timm) stay in the sequence with --keep-tokens: the project's
    RegisterVisionTransformer; DINOv3's storage tokens in the RoPE backbone."""
    path, fx = sources[name]
    patch, fmt = SOURCES[name]
    h, w = parse_size(key)
    ckpt, _ = _convert(tmp_path, path, "mmseg", (h // patch, w // patch), patch, src_format=fmt, keep_tokens=True)
    assert ckpt["meta"]["backbone_type"] == {"dinov2_reg": "RegisterVisionTransformer", "timm_reg": (
        "RegisterVisionTransformer"), "dinov3": "RoPEVisionTransformer"}.get(name, "VisionTransformer")  # fmt: skip
    _check(mmseg_tokens(ckpt, fx["images"][key]), fx["tokens"][key])


def test_registers_for_mmseg_need_a_choice(sources, tmp_path):
    path, _ = sources["dinov2_reg"]
    with pytest.raises(ConversionError, match="--keep-tokens .*RegisterVisionTransformer.* or --drop-registers"):
        _convert(tmp_path, path, "mmseg", (4, 4), 14)


def test_format_detected_and_rule_reported(sources, tmp_path):
    """auto-detection picks each official layout, and the summary names the interpolation rule used."""
    expect = {"dinov2": "'dinov2'", "dinov2_reg": "'size_antialias'", "timm": "'size_antialias'", "mae": "'size'"}
    for name, rule in expect.items():
        path, _ = sources[name]
        _, s = _convert(tmp_path, path, "timm", (4, 4), SOURCES[name][0])
        assert s["source_format"] == SOURCES[name][1]
        assert any(f"rule {rule}" in n for n in s["notes"]), s["notes"]
    _, s = _convert(tmp_path, sources["dinov3"][0], "timm", (4, 4), 16)
    assert s["source_format"] == "dinov3"


def test_wrong_rule_misses_the_official_dinov2(sources, tmp_path):
    """Resizing DINOv2's 7x7 grid by size instead of its own rule is visibly wrong: the rule matters."""
    path, fx = sources["dinov2"]
    ckpt, _ = _convert(tmp_path, path, "timm", (4, 4), 14, pos_interpolation="size")
    diff = float((timm_tokens(ckpt, fx["images"]["56x56"]) - fx["tokens"]["56x56"]).abs().max())
    assert diff > 1e-3


def test_dinov3_timm_layout_is_read(sources, tmp_path):
    """timm's vit_*_patch16_dinov3 layout (gamma_1/2, q_bias/v_bias, reg_token) converts to the same model."""
    timm = pytest.importorskip("timm")
    from timm.models.eva import checkpoint_filter_fn

    path, fx = sources["dinov3"]
    eva = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, embed_dim=32, depth=2, num_heads=2)
    eva_sd = checkpoint_filter_fn(dict(fx["checkpoint"]), eva)
    src = tmp_path / "timm_dinov3.pth"
    torch.save(eva_sd, src)
    ckpt, s = _convert(tmp_path, src, "mmseg", (4, 6), 16)
    assert s["source_format"] == "dinov3"
    _check(mmseg_tokens(ckpt, fx["images"]["64x96"]), fx["tokens"]["64x96"])

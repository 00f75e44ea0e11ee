"""Hugging Face transformers layouts (transfer/convert/hf_layouts.py) against fixtures made once by
tools/make_hf_fixtures.py from transformers itself: the renamed official-layout weights, run through independent
plain-torch forwards that follow the official semantics (learned grid resized by the rule ``info`` names; DINOv3's
rotate-half RoPE), reproduce the transformers models' final-normed patch tokens to 1e-4 at four input sizes (the
stored grid, a smaller and a larger one, a non-square one); so do the converter's timm, MMSeg and ViTDet targets
made from them. No transformers import: the fixtures hold the tensors and config.json."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.support.official_fixtures import load_fixture, parse_size
from tests.transfer.convert.references import hand_blocks
from tests.transfer.convert.test_official import mmseg_tokens, timm_tokens, vitdet_tokens
from transfer.convert.api import convert_checkpoint
from transfer.convert.canonical import ConversionError
from transfer.convert.hf_layouts import backbone_state, detect_hf, hf_to_native, is_hf_source, load_hf, read_hf

TOL = 1e-4
# fixture -> (kind, native format, patch size)
FIXTURES = {
    "hf_dinov2": ("hf_dinov2", "dinov2", 14),
    "hf_dinov2_reg": ("hf_dinov2", "dinov2", 14),
    "hf_vitmae": ("hf_vitmae", "mae", 16),
    "hf_dinov3": ("hf_dinov3", "dinov3", 16),
}
FX = {name: load_fixture(name) for name in FIXTURES}
CASES = [(name, key) for name, fx in FX.items() for key in sorted(fx["tokens"])]
# the official fixture of tools/make_reference_fixtures.py with the same architecture, for the key layout
OFFICIAL_TWIN = {"hf_dinov2": "dinov2", "hf_dinov2_reg": "dinov2_reg", "hf_vitmae": "mae", "hf_dinov3": "dinov3"}


def write_hf_dir(directory, fx: dict, state: dict | None = None, config: dict | None = None):
    """An HF model directory as save_pretrained writes it: config.json + model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in (state or fx["checkpoint"]).items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config if config is not None else fx["hf_config"]))
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: write_hf_dir(root / name, fx) for name, fx in FX.items()}


# ----------------------------------------------------------------------------------------------------------------
# independent references


def resize_grid(pos_embed: torch.Tensor, grid, rule: str) -> torch.Tensor:
    """The patch part of a ``(1, 1+n*n, D)`` pos_embed at ``grid`` under ``rule``, ``(1, gh*gw, D)``: plain
    F.interpolate, bicubic, align_corners=False (by size; with antialias; or DINOv2's scale factor + 0.1)."""
    patch = pos_embed[:, 1:]
    n, d = math.isqrt(patch.shape[1]), patch.shape[-1]
    g = patch.reshape(1, n, n, d).permute(0, 3, 1, 2)
    if tuple(grid) != (n, n):
        if rule == "dinov2":
            how = {"scale_factor": ((grid[0] + 0.1) / n, (grid[1] + 0.1) / n)}
        else:
            how = {"size": tuple(grid), "antialias": rule == "size_antialias"}
        g = F.interpolate(g.float(), mode="bicubic", align_corners=False, **how)
    return g.permute(0, 2, 3, 1).reshape(1, -1, d)


def hand_grid_vit(sd: dict, img: torch.Tensor, patch: int, rule: str, heads: int, eps: float) -> torch.Tensor:
    """Official DINOv2 / MAE forward of a native state: [CLS + pos0, registers (no position), patches + pos]."""
    gh, gw = img.shape[-2] // patch, img.shape[-1] // patch
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2) + resize_grid(sd["pos_embed"], (gh, gw), rule)
    prefix = [sd["cls_token"] + sd["pos_embed"][:, :1]]
    if "register_tokens" in sd:
        prefix.append(sd["register_tokens"])
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    x = hand_blocks(sd, torch.cat(prefix + [x], 1), depth, heads, eps)
    x = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps)
    return x[:, sum(t.shape[1] for t in prefix) :]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def dinov3_sincos(gh: int, gw: int, head_dim: int, base: float, per_axis: bool = True):
    """DINOv3's RoPE ``(sin, cos)`` tables (official rope_position_encoding.py semantics, eval mode): patch centres
    ``(i + 0.5) / n`` per axis (``per_axis=False``: over ``max(gh, gw)``) mapped to [-1, 1], periods
    ``base ** (4t / head_dim)``, angles ``2 pi c / period`` as [y angles, x angles] tiled twice (rotate-half)."""
    sh, sw = (gh, gw) if per_axis else (max(gh, gw),) * 2
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) / sh * 2 - 1
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) / sw * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    periods = base ** (4 * torch.arange(head_dim // 4, dtype=torch.float64) / head_dim)
    angles = (2 * math.pi * coords[:, :, None] / periods).reshape(coords.shape[0], -1).tile(2)
    return angles.sin().float(), angles.cos().float()


def hand_dinov3(sd: dict, img: torch.Tensor, heads: int, base: float, eps: float, per_axis: bool = True):
    """Official DINOv3 forward of a native state: [CLS, storage tokens, patches]; RoPE on patch q/k only."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    gh, gw = img.shape[-2] // p, img.shape[-1] // p
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"], sd["storage_tokens"], x], 1)
    b, n, d = x.shape
    hd, r = d // heads, n - gh * gw
    sin, cos = dinov3_sincos(gh, gw, hd, base, per_axis)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        w = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (d,), w["norm1.weight"], w["norm1.bias"], eps)
        q, k, v = (
            F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        )
        q = torch.cat([q[:, :, :r], q[:, :, r:] * cos + rotate_half(q[:, :, r:]) * sin], 2)
        k = torch.cat([k[:, :, :r], k[:, :, r:] * cos + rotate_half(k[:, :, r:]) * sin], 2)
        att = (q @ k.transpose(-2, -1) * hd**-0.5).softmax(-1)
        a = F.linear((att @ v).transpose(1, 2).reshape(b, n, d), w["attn.proj.weight"], w["attn.proj.bias"])
        x = x + a * w["ls1.gamma"]
        h = F.layer_norm(x, (d,), w["norm2.weight"], w["norm2.bias"], eps)
        m = F.linear(
            F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"]
        )
        x = x + m * w["ls2.gamma"]
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return x[:, r:]


def reference_tokens(native: dict, info: dict, img: torch.Tensor, patch: int, rule: str | None = None):
    if info["kind"] == "hf_dinov3":
        return hand_dinov3(native, img, info["num_heads"], info["rope_base"], info["norm_eps"])
    rule = rule or info["pos_interpolation"]
    return hand_grid_vit(native, img, patch, rule, info["num_heads"], info["norm_eps"])


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return float((out - ref).abs().max()) / max(1.0, float(ref.abs().max()))


# ----------------------------------------------------------------------------------------------------------------
# layout and semantics


@pytest.mark.parametrize("name", list(FIXTURES))
def test_directory_read_detected_and_renamed(hf_dirs, name):
    """load_hf reads exactly the saved tensors and config; the layout, native format and the config's semantics
    come out as the generator recorded them."""
    fx, (kind, fmt, _) = FX[name], FIXTURES[name]
    assert is_hf_source(hf_dirs[name])
    state, cfg = load_hf(hf_dirs[name])
    assert set(state) == set(fx["checkpoint"]) and all(torch.equal(state[k], fx["checkpoint"][k]) for k in state)
    assert cfg == fx["hf_config"]
    assert detect_hf(state, cfg) == kind == detect_hf(state, None)
    native, native_fmt, info = hf_to_native(state, cfg, kind)
    c = fx["config"]
    assert native_fmt == fmt
    assert (info["num_heads"], info["norm_eps"]) == (c["num_heads"], c["norm_eps"])
    assert info["num_registers"] == c.get("num_register_tokens", 0)
    assert info["pos_interpolation"] == c.get("pos_interpolation")  # None for DINOv3: RoPE, nothing to resize
    assert info["rope_base"] == c.get("rope_base")
    assert not any(k.startswith(("embeddings.", "encoder.", "layer.", "layers.")) for k in native)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_native_layout_is_the_official_one(name):
    """Same keys and shapes as the official code's own state dict for the same architecture (the fixtures of
    tools/make_reference_fixtures.py), except DINOv3's bias_mask buffer (absent = unmasked) and MAE's decoder."""
    kind = FIXTURES[name][0]
    native, _, _ = hf_to_native(FX[name]["checkpoint"], FX[name]["hf_config"], kind)
    official = load_fixture(OFFICIAL_TWIN[name])["checkpoint"]
    official = official.get("model", official)
    official = {
        k: v
        for k, v in official.items()
        if not k.endswith(".bias_mask") and not k.startswith(("decoder", "mask_token"))
    }
    if kind != "hf_vitmae":
        official["mask_token"] = load_fixture(OFFICIAL_TWIN[name])["checkpoint"]["mask_token"]
    assert {k: tuple(v.shape) for k, v in native.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_qkv_concatenated_in_q_k_v_order():
    fx = FX["hf_dinov2"]
    native, _, _ = hf_to_native(fx["checkpoint"], fx["hf_config"], "hf_dinov2")
    pre = "encoder.layer.1.attention.attention."
    ck = fx["checkpoint"]
    want = torch.cat([ck[pre + p + ".weight"] for p in ("query", "key", "value")])
    assert torch.equal(native["blocks.1.attn.qkv.weight"], want)
    assert torch.equal(native["blocks.1.ls2.gamma"], ck["encoder.layer.1.layer_scale2.lambda1"])
    assert torch.equal(native["norm.weight"], ck["layernorm.weight"])


@pytest.mark.parametrize("name,key", CASES)
def test_native_reproduces_transformers_tokens(name, key):
    """The converted weights under the official semantics give the transformers model's tokens (1e-4)."""
    fx, (kind, _, patch) = FX[name], FIXTURES[name]
    native, _, info = hf_to_native(fx["checkpoint"], fx["hf_config"], kind)
    with torch.no_grad():
        out = reference_tokens(native, info, fx["images"][key], patch)
    assert max_err(out, fx["tokens"][key]) <= TOL


@pytest.mark.parametrize(
    "name,wrong", [("hf_dinov2", "dinov2"), ("hf_dinov2", "size_antialias"), ("hf_dinov2_reg", "size")]
)
def test_other_interpolation_rules_miss(name, wrong):
    """The rule matters: HF Dinov2Model is 'size' (not DINOv2's own offset rule), the registers model antialiases;
    any other rule misses the transformers tokens at a resized grid by far more than the tolerance."""
    fx, (kind, _, patch) = FX[name], FIXTURES[name]
    native, _, info = hf_to_native(fx["checkpoint"], fx["hf_config"], kind)
    with torch.no_grad():
        out = reference_tokens(native, info, fx["images"]["56x56"], patch, rule=wrong)
    assert max_err(out, fx["tokens"]["56x56"]) > 1e-3


def test_dinov3_rope_base_and_coords_matter():
    """The DINOv3 reference is sensitive to the RoPE semantics: another base, or coordinates normalised by
    max(H, W) (the official code's ``normalize_coords="max"``) instead of per axis, miss at the non-square input."""
    fx = FX["hf_dinov3"]
    native, _, info = hf_to_native(fx["checkpoint"], fx["hf_config"], "hf_dinov3")
    img, ref = fx["images"]["64x96"], fx["tokens"]["64x96"]
    with torch.no_grad():
        assert max_err(hand_dinov3(native, img, 2, 10000.0, info["norm_eps"]), ref) > 1e-3
        assert max_err(hand_dinov3(native, img, 2, 100.0, info["norm_eps"], per_axis=False), ref) > 1e-3
        assert max_err(hand_dinov3(native, img, 2, 100.0, info["norm_eps"]), ref) <= TOL


def test_dinov3_official_extras():
    """mask_token (1, D), storage tokens from register_tokens, rope_embed.periods = base ** (4t / head_dim), the
    k third of the qkv bias zero (HF has no k bias), no bias_mask."""
    fx = FX["hf_dinov3"]
    ck = fx["checkpoint"]
    native, _, info = hf_to_native(ck, fx["hf_config"], "hf_dinov3")
    d = ck["norm.weight"].shape[0]
    assert native["mask_token"].shape == (1, d)
    assert torch.equal(native["storage_tokens"], ck["embeddings.register_tokens"])
    hd = d // 2
    assert torch.allclose(native["rope_embed.periods"], 100.0 ** (4 * torch.arange(hd // 4).float() / hd))
    bias = native["blocks.0.attn.qkv.bias"]
    assert torch.equal(bias[:d], ck["layer.0.attention.q_proj.bias"]) and not bias[d : 2 * d].any()
    assert torch.equal(bias[2 * d :], ck["layer.0.attention.v_proj.bias"])
    assert info["k_bias"] is False and not any(k.endswith("bias_mask") for k in native)
    assert info["rope"] == {"rule": "dinov3", "base": 100.0, "coords": "normalized"}


def test_dinov3_nonzero_k_bias_is_kept():
    fx = FX["hf_dinov3"]
    state = dict(fx["checkpoint"])
    kb = torch.linspace(-1, 1, state["norm.weight"].shape[0])
    state["layer.1.attention.k_proj.bias"] = kb
    native, _, info = hf_to_native(state, fx["hf_config"], "hf_dinov3")
    d = kb.shape[0]
    assert info["k_bias"] is True and any("nonzero bias" in n for n in info["notes"])
    assert torch.equal(native["blocks.1.attn.qkv.bias"][d : 2 * d], kb)
    assert not native["blocks.0.attn.qkv.bias"][d : 2 * d].any()


@pytest.mark.parametrize("name", list(FIXTURES))
def test_transformers5_in_memory_names(name):
    """The in-memory state_dict() names of transformers 5 (q_proj/o_proj, ViTMAE 'layers.<i>', DINOv3
    'model.layer.<i>') give the same native state as the saved layout."""
    fx, kind = FX[name], FIXTURES[name][0]
    memory = {fx["config"]["state_dict_keys"][k]: v for k, v in fx["checkpoint"].items()}
    assert set(memory) != set(fx["checkpoint"])
    assert detect_hf(memory, fx["hf_config"]) == kind
    a, _, _ = hf_to_native(fx["checkpoint"], fx["hf_config"], kind)
    b, _, _ = hf_to_native(memory, fx["hf_config"], kind)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name,prefix,extra",
    [
        ("hf_dinov2", "dinov2.", {"classifier.weight": torch.ones(3, 64), "classifier.bias": torch.ones(3)}),
        ("hf_dinov2_reg", "dinov2_with_registers.", {"classifier.weight": torch.ones(3, 64)}),
        (
            "hf_vitmae",
            "vit.",
            {"decoder.decoder_embed.weight": torch.ones(16, 32), "decoder.mask_token": torch.ones(1, 1, 16)},
        ),
        ("hf_dinov3", "model.", {"classifier.weight": torch.ones(3, 64)}),
    ],
)
def test_task_model_prefix_and_heads_dropped(name, prefix, extra):
    fx, kind = FX[name], FIXTURES[name][0]
    wrapped = {prefix + k: v for k, v in fx["checkpoint"].items()} | extra
    inner, dropped, found = backbone_state(wrapped)
    assert found == prefix and set(inner) == set(fx["checkpoint"])
    assert sorted(k for k, _ in dropped) == sorted(extra)
    assert detect_hf(wrapped, fx["hf_config"]) == kind
    a, _, _ = hf_to_native(fx["checkpoint"], fx["hf_config"], kind)
    b, _, info = hf_to_native(wrapped, fx["hf_config"], kind)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert {k for k, _ in info["dropped"]} == set(extra)
    assert any("decoder" in r for _, r in info["dropped"]) == (name == "hf_vitmae")


def test_single_safetensors_file_with_config_beside(tmp_path):
    fx = FX["hf_vitmae"]
    d = write_hf_dir(tmp_path / "m", fx)
    native, fmt, info = read_hf(d / "model.safetensors")
    assert fmt == "mae" and info["norm_eps"] == 1e-12 and info["num_heads"] == 2
    with torch.no_grad():
        out = reference_tokens(native, info, fx["images"]["64x64"], 16)
    assert max_err(out, fx["tokens"]["64x64"]) <= TOL


def test_pytorch_model_bin_and_preprocessor_mean_std(tmp_path):
    fx = FX["hf_dinov2"]
    d = tmp_path / "bin"
    d.mkdir()
    torch.save(fx["checkpoint"], d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(fx["hf_config"]))
    (d / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    native, fmt, info = read_hf(d)
    assert fmt == "dinov2" and (info["mean"], info["std"]) == ([0.5] * 3, [0.25] * 3)
    assert torch.equal(native["pos_embed"], fx["checkpoint"]["embeddings.position_embeddings"])


def test_without_config_the_keys_suffice(tmp_path):
    """No config.json: the layout comes from the keys, transformers' defaults from the registers' presence
    (eps 1e-6; 'size_antialias' with registers), num_heads stays open (None: the reader's table or --num-heads)."""
    for name, rule in (("hf_dinov2", "size"), ("hf_dinov2_reg", "size_antialias")):
        d = tmp_path / name
        d.mkdir()
        save_file(dict(FX[name]["checkpoint"]), str(d / "model.safetensors"))
        native, fmt, info = read_hf(d)
        assert (fmt, info["pos_interpolation"], info["norm_eps"], info["num_heads"]) == ("dinov2", rule, 1e-6, None)
        assert any("no config.json" in n for n in info["notes"])


def test_dinov3_without_config_needs_heads(tmp_path):
    d = tmp_path / "v3"
    d.mkdir()
    save_file(dict(FX["hf_dinov3"]["checkpoint"]), str(d / "model.safetensors"))
    with pytest.raises(ConversionError, match="num_heads"):
        read_hf(d)
    native, fmt, info = read_hf(d, num_heads=2)
    assert fmt == "dinov3" and info["rope_base"] == 100.0 and native["rope_embed.periods"].shape == (4,)


# ----------------------------------------------------------------------------------------------------------------
# bad input


def test_directory_without_weights_names_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FX["hf_dinov2"]["hf_config"]))
    with pytest.raises(ConversionError, match=rf"no weights in the model directory {tmp_path}.*model\.safetensors"):
        load_hf(tmp_path)


def test_missing_source_and_wrong_file_type(tmp_path):
    with pytest.raises(ConversionError, match="source not found"):
        load_hf(tmp_path / "nope")
    (tmp_path / "x.pth").write_bytes(b"0")
    with pytest.raises(ConversionError, match="not a Hugging Face source"):
        load_hf(tmp_path / "x.pth")


def test_unknown_model_type_named(tmp_path):
    cfg = dict(FX["hf_dinov2"]["hf_config"], model_type="siglip_vision_model", architectures=["SiglipVisionModel"])
    d = write_hf_dir(tmp_path / "s", FX["hf_dinov2"], config=cfg)
    with pytest.raises(ConversionError, match="unsupported Hugging Face model_type 'siglip_vision_model'"):
        read_hf(d)


def test_model_type_disagreeing_with_keys(tmp_path):
    cfg = dict(FX["hf_dinov2"]["hf_config"], model_type="vit_mae")
    d = write_hf_dir(tmp_path / "s", FX["hf_dinov2"], config=cfg)
    with pytest.raises(ConversionError, match="model_type 'vit_mae' but the weights look like hf_dinov2"):
        read_hf(d)


def test_bad_config_json(tmp_path):
    d = write_hf_dir(tmp_path / "s", FX["hf_dinov2"])
    (d / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="cannot read the config .*config.json"):
        load_hf(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ConversionError, match="JSON list, not an object"):
        load_hf(d)


def test_corrupt_weights(tmp_path):
    d = write_hf_dir(tmp_path / "s", FX["hf_dinov2"])
    (d / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ConversionError, match="cannot read the weights .*model.safetensors"):
        load_hf(d)


def test_other_safetensors_pass_through(tmp_path):
    """A .safetensors state dict of another layout with a non-transformers config.json (timm's hub layout) comes
    back untouched for the format readers."""
    d = tmp_path / "t"
    d.mkdir()
    state = {"blocks.0.norm1.weight": torch.ones(4), "patch_embed.proj.weight": torch.ones(4, 3, 2, 2)}
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 0}))
    assert detect_hf(state) is None
    out, fmt, info = read_hf(d / "model.safetensors")
    assert (fmt, info) == (None, None) and set(out) == set(state)


def test_mae_masking_noted():
    fx = FX["hf_vitmae"]
    _, _, info = hf_to_native(fx["checkpoint"], dict(fx["hf_config"], mask_ratio=0.75), "hf_vitmae")
    assert any("mask_ratio=0.75" in n for n in info["notes"])
    _, _, info = hf_to_native(fx["checkpoint"], fx["hf_config"], "hf_vitmae")
    assert not any("mask_ratio" in n for n in info["notes"])


def test_swiglu_and_gated_mlps_refused():
    fx = FX["hf_dinov2"]
    state = {k.replace("mlp.fc1", "mlp.weights_in").replace("mlp.fc2", "mlp.weights_out"): v
             for k, v in fx["checkpoint"].items()}  # fmt: skip
    with pytest.raises(ConversionError, match="SwiGLU"):
        hf_to_native(state, fx["hf_config"], "hf_dinov2")
    with pytest.raises(ConversionError, match="SwiGLU / gated MLP"):
        hf_to_native(fx["checkpoint"], dict(fx["hf_config"], use_swiglu_ffn=True), "hf_dinov2")
    fx3 = FX["hf_dinov3"]
    state3 = dict(fx3["checkpoint"], **{"layer.0.mlp.gate_proj.weight": torch.ones(128, 32)})
    with pytest.raises(ConversionError, match="gated MLP"):
        hf_to_native(state3, fx3["hf_config"], "hf_dinov3")


def test_config_and_weights_disagree():
    fx = FX["hf_vitmae"]
    for field, value, msg in (
        ("hidden_size", 48, "hidden_size=48 but the weights have 32"),
        ("num_hidden_layers", 3, "num_hidden_layers=3 but the weights have 2"),
        ("hidden_act", "relu", "hidden_act 'relu'"),
        ("patch_size", 14, r"patch_size=14 but the kernel is \(16, 16\)"),
        ("num_register_tokens", 4, "num_register_tokens=4 but the weights have 0"),
    ):
        with pytest.raises(ConversionError, match=msg):
            hf_to_native(fx["checkpoint"], dict(fx["hf_config"], **{field: value}), "hf_vitmae")


def test_missing_projection_named():
    fx = FX["hf_vitmae"]
    state = {k: v for k, v in fx["checkpoint"].items() if "layer.1.attention.attention.key." not in k}
    with pytest.raises(ConversionError, match=r"block 1: missing attention projection\(s\) \['k'\]"):
        hf_to_native(state, fx["hf_config"], "hf_vitmae")


def test_unknown_key_named():
    fx = FX["hf_dinov3"]
    state = dict(fx["checkpoint"], **{"layer.0.attention.extra.weight": torch.ones(2)})
    with pytest.raises(ConversionError, match=r"unknown key\(s\) in the hf_dinov3 source: \['layer.0.attention.extra"):
        hf_to_native(state, fx["hf_config"], "hf_dinov3")


# ----------------------------------------------------------------------------------------------------------------
# end to end: the converter's targets reproduce the transformers tokens


def convert_native(tmp_path, hf_dir, target: str, grid, patch: int, **kw):
    """What the converter does with an HF source: read_hf, then the native layout through convert_checkpoint with
    the options ``info`` carries (heads, eps, the position rule). Returns ``(target checkpoint, dst, summary)``."""
    native, fmt, info = read_hf(hf_dir)
    src = tmp_path / f"native_{fmt}.pth"
    torch.save(native, src)
    dst = tmp_path / f"{target}.pth"
    s = convert_checkpoint(src, dst, target, grid=grid, patch_size=patch, src_format=fmt, num_heads=info["num_heads"],
                           norm_eps=info["norm_eps"], pos_interpolation=info["pos_interpolation"] or "auto",
                           quiet=True, **kw)  # fmt: skip
    return torch.load(dst, map_location="cpu", weights_only=True), dst, s


@pytest.mark.parametrize("name,key", CASES)
def test_timm_target_reproduces_transformers(hf_dirs, tmp_path, name, key):
    fx, patch = FX[name], FIXTURES[name][2]
    h, w = parse_size(key)
    ckpt, _, s = convert_native(tmp_path, hf_dirs[name], "timm", (h // patch, w // patch), patch)
    assert s["source_format"] == FIXTURES[name][1]
    assert max_err(timm_tokens(ckpt, fx["images"][key]), fx["tokens"][key]) <= TOL


# MMSeg's stock ViT has no registers (the RoPE one has); one resized, non-stored input per model keeps this quick
MMSEG_CASES = [("hf_dinov2", "56x56"), ("hf_vitmae", "192x192"), ("hf_dinov3", "64x96"), ("hf_dinov3", "112x112")]


@pytest.mark.parametrize("name,key", MMSEG_CASES)
def test_mmseg_target_reproduces_transformers(hf_dirs, tmp_path, name, key):
    fx, patch = FX[name], FIXTURES[name][2]
    h, w = parse_size(key)
    ckpt, _, _ = convert_native(tmp_path, hf_dirs[name], "mmseg", (h // patch, w // patch), patch)
    assert max_err(mmseg_tokens(ckpt, fx["images"][key]), fx["tokens"][key]) <= TOL


@pytest.mark.parametrize("name", list(FIXTURES))
def test_vitdet_backbone_reproduces_transformers(hf_dirs, tmp_path, name):
    """detectron2 target (tokens kept) in the project's SDPAViT at a resized square grid."""
    fx, patch = FX[name], FIXTURES[name][2]
    key = {14: "168x168", 16: "192x192"}[patch]
    g = parse_size(key)[0] // patch
    ckpt, dst, _ = convert_native(tmp_path, hf_dirs[name], "detectron2", (g, g), patch, keep_tokens=True)
    norm = (fx["checkpoint"].get("layernorm.weight", fx["checkpoint"].get("norm.weight")),
            fx["checkpoint"].get("layernorm.bias", fx["checkpoint"].get("norm.bias")))  # fmt: skip
    assert max_err(vitdet_tokens(dst, ckpt, fx["images"][key], norm), fx["tokens"][key]) <= TOL


@pytest.mark.parametrize("name,key", CASES)
def test_hf_directory_converts_with_no_options(hf_dirs, tmp_path, name, key):
    """``convert_checkpoint(<HF directory>)``: heads, eps and the position rule come from config.json."""
    fx, (_, fmt, patch) = FX[name], FIXTURES[name]
    h, w = parse_size(key)
    dst = tmp_path / "timm.pth"
    s = convert_checkpoint(hf_dirs[name], dst, "timm", grid=(h // patch, w // patch), patch_size=patch, quiet=True)
    assert s["source_format"] == fmt and any("Hugging Face" in n for n in s["notes"])
    ckpt = torch.load(dst, map_location="cpu", weights_only=True)
    assert max_err(timm_tokens(ckpt, fx["images"][key]), fx["tokens"][key]) <= TOL

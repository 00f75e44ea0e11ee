"""``model.init_from``: continued pretraining from a converted checkpoint. The fixture is a DINOv2 model made by the
official code (tools/make_reference_fixtures.py, ``dinov2_pico``: our vit_pico's size, patch 14, 7x7 stored grid)
with the official model's own patch tokens, so the teacher's first-step features are checked against DINOv2
itself."""

from __future__ import annotations

import pytest
import torch

from pretrain.engine.config import load_config
from pretrain.engine.init_from import InitFromError, init_backbones_from
from pretrain.methods import build_method
from tests.support.official_fixtures import load_fixture
from tests.support.runs import read_losses, run_train
from tests.support.tiny import tiny_overrides

FULL_BOX = torch.tensor([[0.0, 0.0, 1.0, 1.0]])


@pytest.fixture(scope="module")
def dinov2_src(tmp_path_factory):
    fx = load_fixture("dinov2_pico")
    path = tmp_path_factory.mktemp("init") / "dinov2_pico.pth"
    torch.save(fx["checkpoint"], path)
    return path, fx


def _method(src, **extra):
    over = {"model.init_from": str(src), "model.patch_size": 14, "crops.global_size": 98, "crops.local_size": 28}
    over.update(extra)
    return build_method(load_config([], tiny_overrides("x", "y", **over)))


def _teacher_tokens(method, img, boxes=None):
    with torch.no_grad():
        return method.teacher["backbone"](img, boxes=boxes)["patch"]


def _init(method, src):
    return init_backbones_from(method, str(src))


def test_field_starts_from_the_checkpoint_and_the_teacher_reproduces_dinov2(dinov2_src):
    """Field 7x7 = the stored grid: over the whole virtual image the teacher computes exactly DINOv2's tokens."""
    src, fx = dinov2_src
    m = _method(src, **{"pos_field.size": "[7,7]"})
    lines = _init(m, src)
    assert any("position field 7x7 from the checkpoint's pos_embed 7x7" in line for line in lines), lines
    out = _teacher_tokens(m, fx["images"]["98x98"], FULL_BOX)
    ref = fx["tokens"]["98x98"]
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))
    s, t = m.student["backbone"].state_dict(), m.teacher["backbone"].state_dict()
    assert all(torch.equal(s[k], t[k]) for k in s)  # student and teacher start equal


def test_learned_pos_embed_is_resized_by_dinov2s_rule(dinov2_src):
    """Field off at 56 px: pos_embed resized 7x7 -> 4x4 by DINOv2's offset rule, so the teacher equals DINOv2 run
    at 56 px; the by-size rule would not."""
    src, fx = dinov2_src
    m = _method(src, **{"pos_field.enabled": False, "crops.global_size": 56})
    _init(m, src)
    out, ref = _teacher_tokens(m, fx["images"]["56x56"]), fx["tokens"]["56x56"]
    assert float((out - ref).abs().max()) < 1e-4 * max(1.0, float(ref.abs().max()))


def test_heads_and_mask_tokens_start_fresh_and_the_kernel_is_resampled(dinov2_src):
    from timm.layers import resample_patch_embed

    src, fx = dinov2_src
    torch.manual_seed(0)
    p16 = {"model.patch_size": 16, "crops.global_size": 96, "crops.local_size": 32}
    fresh = _method(src, **p16)
    torch.manual_seed(0)
    m = _method(src, **p16)
    lines = _init(m, src)
    assert any("patch size 14 -> 16" in line for line in lines), lines
    w = fx["checkpoint"]["patch_embed.proj.weight"]
    expect = resample_patch_embed(w, [16, 16], interpolation="bicubic", antialias=True)
    torch.testing.assert_close(m.student["backbone"].patch_embed.proj.weight, expect)
    for part in ("dino_head",):
        a, b = fresh.student[part].state_dict(), m.student[part].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(fresh.student["backbone"].mask_token, m.student["backbone"].mask_token)


def test_an_architecture_mismatch_is_named(dinov2_src):
    src, _ = dinov2_src
    m = build_method(load_config([], tiny_overrides("x", "y", **{"model.arch": "vit_nano"})))
    with pytest.raises(InitFromError, match="embed_dim: config 96 vs checkpoint 64"):
        _init(m, src)


def test_a_missing_file_is_named(tmp_path):
    m = _method(tmp_path / "nope.pth")
    with pytest.raises(InitFromError, match="nope.pth"):
        _init(m, tmp_path / "nope.pth")


def test_init_from_trains_on_the_toy_images(dinov2_src, tmp_path):
    from toydata import ImagesSpec, ToySpec, ensure_toy_data

    src, _ = dinov2_src
    data = ensure_toy_data(str(tmp_path / "toy"), ToySpec(images=ImagesSpec(num=8, size=112)))["images"]
    out = tmp_path / "run"
    over = {"model.init_from": str(src), "model.patch_size": 14, "crops.global_size": 56, "crops.local_size": 28,
            "pos_field.size": "[7,7]", "optim.epochs": 2, "train.epoch_length": 2}  # fmt: skip
    p = run_train(tiny_overrides(str(data), str(out), **over))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-3000:]
    assert "model.init_from:" in log and "format dinov2" in log and "position field 7x7" in log
    losses = read_losses(str(out))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())

"""Our checkpoints (exported and training) through the CLI into each target's own backbone."""

from __future__ import annotations

import pytest
import torch

from pretrain.export import export_backbone
from tests.transfer.convert.references import (
    HEADS,
    TOL,
    D,
    convert,
    d2_features,
    image,
    max_diff,
    mmseg_features,
    needs_d2,
    needs_mmseg,
    ours_model,
    ours_reference,
    randomise_,
    timm_features,
)

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
    from pretrain.methods import IntertwinedDistillation

    cfg = load_config(["configs/pretrain/tiny_demo.yaml"], ["train.data=unused", "pos_field.size=[6,6]"])
    torch.manual_seed(0)
    model = IntertwinedDistillation(cfg)
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

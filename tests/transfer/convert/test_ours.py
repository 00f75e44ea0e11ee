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
    convert_logged,
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

VARIANTS = {  # id: (pos field, registers, LayerScale)
    "field-registers-layerscale": (True, 2, True),
    "field-plain": (True, 0, False),
    "pos_embed-layerscale": (False, 0, True),
}
with_variant = pytest.mark.parametrize("variant", list(VARIANTS))


class _OursConversions:
    """Per variant, built once per module: our random ViT, its export converted to detectron2 (tokens kept when it
    has registers) with the printed summary, and lazily to mmseg (registers dropped)."""

    def __init__(self, root):
        self.root = root
        self._cache = {}

    def _get(self, variant, what, build):
        key = (variant, what)
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def source(self, variant):
        def build():
            field, regs, ls = VARIANTS[variant]
            torch.manual_seed(0)
            model = ours_model(field=field, regs=regs, ls=ls)
            d = self.root / variant
            d.mkdir()
            export_backbone(model, d / "backbone.pth")
            return model, d / "backbone.pth"

        return self._get(variant, "source", build)

    def regs(self, variant):
        return VARIANTS[variant][1]

    def detectron2(self, variant):
        """``(path, printed summary, loaded file)``."""

        def build():
            _, src = self.source(variant)
            extra = ["--keep-tokens"] if self.regs(variant) else []
            dst, out = convert_logged(src.parent, src, "detectron2", "--grid", "6", "6", *extra)
            return dst, out, torch.load(dst, weights_only=True)

        return self._get(variant, "detectron2", build)

    def mmseg(self, variant):
        def build():
            _, src = self.source(variant)
            extra = ["--drop-registers"] if self.regs(variant) else []
            return convert_logged(src.parent, src, "mmseg", "--grid", "6", "6", *extra)[0]

        return self._get(variant, "mmseg", build)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return _OursConversions(tmp_path_factory.mktemp("ours"))


@needs_d2
@with_variant
def test_conversion_log_detects_our_format(ours, variant):
    _, out, _ = ours.detectron2(variant)
    assert "format: ours" in out


@needs_d2
@with_variant
def test_ours_to_detectron2_matches_the_source_without_cls_registers_or_final_norm(ours, variant):
    model, _ = ours.source(variant)
    d2, _, _ = ours.detectron2(variant)
    img = image((6, 6))
    ref = ours_reference(model, img, with_cls=False, with_regs=False, final_norm=False)
    assert max_diff(d2_features(d2, img), ref) <= TOL


@needs_d2
@with_variant
def test_detectron2_meta_records_grid_heads_and_source_format(ours, variant):
    _, _, ck = ours.detectron2(variant)
    meta = ck["meta"]
    assert meta["grid"] == [6, 6] and meta["num_heads"] == HEADS and meta["source_format"] == "ours"


@needs_d2
@with_variant
def test_detectron2_meta_records_which_prefix_tokens_were_kept(ours, variant):
    _, _, ck = ours.detectron2(variant)
    regs = ours.regs(variant)
    meta = ck["meta"]
    assert meta["cls_token_kept"] == bool(regs) and meta["num_register_tokens"] == regs


@needs_d2
@with_variant
def test_detectron2_pos_embed_has_a_cls_slot_and_one_row_per_patch(ours, variant):
    _, _, ck = ours.detectron2(variant)
    assert ck["model"]["backbone.net.pos_embed"].shape == (1, 1 + 36, D)


# --keep-tokens: tokens for the project's SDPA backbone, CLS slot = the CLS position
KEPT = "field-registers-layerscale"


@needs_d2
def test_keep_tokens_writes_the_source_register_tokens(ours):
    model, _ = ours.source(KEPT)
    _, _, ck = ours.detectron2(KEPT)
    assert torch.equal(ck["model"]["backbone.net.reg_token"], model.reg_token.detach())


@needs_d2
def test_keep_tokens_writes_the_source_cls_token(ours):
    model, _ = ours.source(KEPT)
    _, _, ck = ours.detectron2(KEPT)
    assert torch.equal(ck["model"]["backbone.net.cls_token"], model.cls_token.detach())


@needs_d2
def test_keep_tokens_fills_the_pos_embed_cls_slot_with_the_cls_position(ours):
    model, _ = ours.source(KEPT)
    _, _, ck = ours.detectron2(KEPT)
    assert torch.allclose(ck["model"]["backbone.net.pos_embed"][:, :1], model.cls_pos().detach())


@needs_mmseg
@with_variant
def test_ours_to_mmseg_matches_the_source_with_cls_and_final_norm_without_registers(ours, variant):
    model, _ = ours.source(variant)
    mm = ours.mmseg(variant)
    img = image((6, 6))
    ref = ours_reference(model, img, with_cls=True, with_regs=False, final_norm=True)
    assert max_diff(mmseg_features(mm, img), ref) <= TOL


def test_ours_to_timm_on_a_non_square_grid_reproduces_the_full_source_model(tmp_path):
    """CLS and registers kept, final-normed: the timm model is the whole source."""
    model = ours_model(field=True, regs=2, ls=True)
    src = tmp_path / "backbone.pth"
    export_backbone(model, src)
    dst = convert(tmp_path, src, "timm", "--grid", "3", "5")
    img = image((3, 5))
    with torch.no_grad():
        ref = model(img)["patch"]
    assert max_diff(timm_features(dst, img), ref) <= TOL


# a full training checkpoint (student, teacher, heads, optimiser, config) converts from its EMA teacher


@pytest.fixture(scope="module")
def training_and_exported(tmp_path_factory):
    """A training checkpoint whose teacher differs from its student, the teacher's exported backbone, and the
    conversions of both to timm (grid 6x6) and detectron2, with the printed summaries. The metadata (heads of a
    96-d ViT, which the standard table lacks) must come from the embedded config."""
    from pretrain.engine.checkpoint import save_checkpoint
    from pretrain.engine.config import load_config, to_container
    from pretrain.engine.optim import build_optimizer
    from pretrain.methods import IntertwinedDistillation

    tmp = tmp_path_factory.mktemp("training")
    cfg = load_config(["configs/pretrain/tiny_demo.yaml"], ["train.data=unused", "pos_field.size=[6,6]"])
    torch.manual_seed(0)
    model = IntertwinedDistillation(cfg)
    randomise_(model.teacher["backbone"])  # teacher != student, so picking the wrong one shows
    ckpt = save_checkpoint(str(tmp / "run"), 7, model, build_optimizer(model.student, cfg), to_container(cfg))
    export_backbone(model.teacher["backbone"], tmp / "backbone.pth")
    files, logs = {}, []
    for target, extra in (("timm", ("--grid", "6", "6")), ("detectron2", ())):
        a, out_a = convert_logged(tmp, ckpt, target, *extra, name=f"train_{target}.pth")
        b, out_b = convert_logged(tmp, tmp / "backbone.pth", target, *extra, name=f"exp_{target}.pth")
        files[target] = (a, b)
        logs += [out_a, out_b]
    return model, files, "".join(logs)


def _state(path):
    ck = torch.load(path, weights_only=True)
    return ck.get("state_dict", ck.get("model"))


@pytest.mark.parametrize("target", ["timm", "detectron2"])
def test_training_checkpoint_converts_to_the_same_keys_as_the_exported_teacher(training_and_exported, target):
    _, files, _ = training_and_exported
    sa, sb = map(_state, files[target])
    assert sa.keys() == sb.keys()


@pytest.mark.parametrize("target", ["timm", "detectron2"])
def test_training_checkpoint_converts_to_the_same_tensors_as_the_exported_teacher(training_and_exported, target):
    _, files, _ = training_and_exported
    sa, sb = map(_state, files[target])
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_training_checkpoint_conversion_log_says_it_took_the_teacher(training_and_exported):
    _, _, out = training_and_exported
    assert "'model->teacher'" in out


def test_training_checkpoint_to_timm_reproduces_the_teachers_patch_features(training_and_exported):
    model, files, _ = training_and_exported
    img = image((6, 6))
    with torch.no_grad():
        ref = model.teacher["backbone"](img)["patch"]
    assert max_diff(timm_features(files["timm"][0], img), ref) <= TOL

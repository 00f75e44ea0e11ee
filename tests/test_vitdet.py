"""ViTDet transfer (transfer/vitdet, configs/vitdet): backbone parity, configs, loud checkpoint checks, toy run."""

import json
import math
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn as nn

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.modeling import ViT  # noqa: E402
from detectron2.modeling.backbone.utils import get_abs_pos  # noqa: E402

from transfer.vitdet.backbone import SDPAViT  # noqa: E402
from transfer.vitdet.checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    StrictDetectionCheckpointer,
    read_backbone_arch,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG_DIR = os.path.join(REPO, "configs", "vitdet")


def _vit_kwargs(**over):
    kw = dict(
        img_size=64,
        patch_size=8,
        embed_dim=48,
        depth=3,
        num_heads=4,
        drop_path_rate=0.0,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_size=0,
        window_block_indexes=[],
        use_rel_pos=False,
        pretrain_img_size=64,
        pretrain_use_cls_token=True,
    )
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


@pytest.mark.parametrize("act_ckpt", [False, True])
@pytest.mark.parametrize("img", [64, 80])  # 80: pos_embed interpolated (8x8 -> 10x10) in both
def test_backbone_matches_detectron2_vit(act_ckpt, img):
    ref, ours = _pair(residual_block_indexes=[1])
    ours.use_act_checkpoint = act_ckpt
    ref.train(), ours.train()
    x = torch.randn(2, 3, img, img)
    weight = torch.randn(2, 48, img // 8, img // 8)
    out_r, gx_r, g_r = _fwd_bwd(ref, x, weight)
    out_o, gx_o, g_o = _fwd_bwd(ours, x, weight)
    assert out_o.shape == (2, 48, img // 8, img // 8)
    torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-5)
    assert g_o.keys() == g_r.keys() and len(g_o) == len(list(ref.parameters()))
    for n in g_r:
        torch.testing.assert_close(g_o[n], g_r[n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def test_act_checkpointing_same_gradients_and_eval_unaffected():
    _, ours = _pair()
    x, weight = torch.randn(2, 3, 64, 64), torch.randn(2, 48, 8, 8)
    ours.use_act_checkpoint = False
    out0, gx0, g0 = _fwd_bwd(ours, x, weight)
    ours.use_act_checkpoint = True
    out1, gx1, g1 = _fwd_bwd(ours, x, weight)
    torch.testing.assert_close(out1, out0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-6, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-6)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["last_feat"], out0, rtol=1e-6, atol=1e-6)


def test_extra_tokens_match_manual_reference():
    ref, _ = _pair()
    torch.manual_seed(1)
    ours = SDPAViT(use_cls_token=True, num_register_tokens=2, **_vit_kwargs())
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert sorted(missing) == ["cls_token", "reg_token"] and not unexpected
    assert ours.cls_token.shape == (1, 1, 48) and ours.reg_token.shape == (1, 2, 48)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x)["last_feat"]
        # manual: [CLS + pos_embed[:, :1], registers, patches + pos] through detectron2's own blocks
        t = ref.patch_embed(x)
        B, h, w, C = t.shape
        t = (t + get_abs_pos(ref.pos_embed, True, (h, w))).reshape(B, h * w, C)
        seq = torch.cat(
            [(ours.cls_token + ref.pos_embed[:, :1]).expand(B, -1, -1), ours.reg_token.expand(B, -1, -1), t], 1
        )
        seq = seq.unsqueeze(1)  # (B, 1, N, C): detectron2's Block/Attention on a 1 x N "map" = global attention
        for blk in ref.blocks:
            seq = blk(seq)
        manual = seq[:, 0, 3:].reshape(B, h, w, C).permute(0, 3, 1, 2)
        plain = ref(x)["last_feat"]
    assert out.shape == plain.shape == (2, 48, 8, 8)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
    assert (out - plain).abs().max() > 1e-3  # the tokens take part in attention


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(use_rel_pos=True), "use_rel_pos"),
        (dict(window_size=14, window_block_indexes=[0, 1]), "window"),
        (dict(window_size=14), "window"),
        (dict(use_cls_token=True, pretrain_use_cls_token=False), "pretrain_use_cls_token"),
    ],
)
def test_backbone_rejects_window_and_relpos(bad, match):
    with pytest.raises(ValueError, match=match):
        SDPAViT(**_vit_kwargs(**bad))


# ------------------------------------------------------------------------------------------------ configs
def _group_of(optim, param):
    for g in optim.param_groups:
        if any(p is param for p in g["params"]):
            return g
    raise KeyError("parameter not in optimizer")


@pytest.mark.parametrize("size, dims, lr", [("s", (384, 12, 6), 1e-4), ("b", (768, 12, 12), 3e-4)])
def test_configs_load_and_instantiate(size, dims, lr):
    cfg = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py"))
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads) == dims
    assert list(net.window_block_indexes) == [] and net.window_size == 0 and net.use_rel_pos is False
    assert net.pretrain_img_size == 1024 and net.pretrain_use_cls_token is True and net.drop_path_rate == 0.1
    assert cfg.model.backbone.square_pad == 1024
    assert cfg.train.max_iter == 22128 and cfg.train.amp.enabled is True
    assert list(cfg.lr_multiplier.milestones) == [19667, 21306] and cfg.lr_multiplier.warmup_iters == 250
    assert cfg.optimizer.lr == lr and cfg.optimizer.weight_decay == 0.1
    assert cfg.dataloader.train.total_batch_size == 64
    augs = cfg.dataloader.train.mapper.augmentations
    assert [a._target_.__name__ for a in augs] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert (augs[1].min_scale, augs[1].max_scale, augs[1].target_height, list(augs[2].crop_size)) == (
        0.1,
        2.0,
        1024,
        [1024, 1024],
    )
    assert cfg.dataloader.train.mapper.image_format == "RGB" and cfg.dataloader.train.mapper.recompute_boxes
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == 1024

    sched = instantiate(cfg.lr_multiplier)
    n = cfg.train.max_iter
    assert math.isclose(sched(0.0), 0.001)
    for it, want in [(250, 1.0), (19666, 1.0), (19667, 0.1), (21305, 0.1), (21306, 0.01), (22127, 0.01)]:
        assert math.isclose(sched(it / n), want, rel_tol=1e-6), (it, sched(it / n))

    model = instantiate(cfg.model)
    assert type(model.backbone.net) is SDPAViT
    assert model.backbone.net.pos_embed.shape == (1, 64 * 64 + 1, dims[0])
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    bb = model.backbone.net
    for param, layer_factor, wd in [
        (bb.blocks[11].mlp.fc1.weight, 0.7**1, 0.1),
        (bb.blocks[0].attn.qkv.weight, 0.7**12, 0.1),
        (bb.blocks[5].norm1.weight, 0.7**7, 0.0),
        (bb.patch_embed.proj.weight, 0.7**13, 0.1),
        (bb.pos_embed, 0.7**13, 0.0),
        (model.roi_heads.box_predictor.cls_score.weight, 1.0, 0.1),
    ]:
        g = _group_of(optim, param)
        assert math.isclose(g["lr"], lr * layer_factor, rel_tol=1e-6) and g["weight_decay"] == wd


@pytest.mark.parametrize("size", ["s", "b"])
def test_50ep_configs_scale_schedule(size):
    c12 = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py"))
    c50 = LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_50ep.py"))
    assert c50.train.max_iter == round(22128 * 50 / 12) == 92200
    assert list(c50.lr_multiplier.milestones) == [round(m * 50 / 12) for m in (19667, 21306)]
    assert c50.optimizer.lr == c12.optimizer.lr and c50.model.backbone.net.embed_dim == c12.model.backbone.net.embed_dim
    # loading the 50ep file does not leak into the 12ep one
    assert LazyConfig.load(os.path.join(CFG_DIR, f"mask_rcnn_vit_{size}_12ep.py")).train.max_iter == 22128


def test_extra_tokens_get_embedding_lr_and_no_weight_decay():
    cfg = LazyConfig.load(os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py"))
    net = cfg.model.backbone.net
    net.embed_dim, net.depth, net.num_heads, net.use_cls_token, net.num_register_tokens = 64, 2, 2, True, 2
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    lr = cfg.optimizer.lr
    for param in (model.backbone.net.cls_token, model.backbone.net.reg_token, model.backbone.net.pos_embed):
        g = _group_of(optim, param)
        assert math.isclose(g["lr"], lr * 0.7**3, rel_tol=1e-6) and g["weight_decay"] == 0.0
    g = _group_of(optim, model.backbone.net.blocks[1].attn.proj.weight)
    assert math.isclose(g["lr"], lr * 0.7, rel_tol=1e-6) and g["weight_decay"] == 0.1


# ------------------------------------------------------------------------------------------------ data
def test_lsj_mapper_and_toy_registration(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from pretrain.data.toy import make_toy_coco
    from transfer.vitdet.data import check_datasets_available, lsj_dataloader, register_toy_coco

    make_toy_coco(str(tmp_path / "a"), num_train=3, num_val=1, image_size=(96, 128), seed=0)
    make_toy_coco(str(tmp_path / "b"), num_train=2, num_val=1, image_size=(96, 128), seed=1)
    assert register_toy_coco(str(tmp_path / "a"), name_prefix="toy_coco_unit") == [
        "toy_coco_unit_train",
        "toy_coco_unit_val",
    ]
    register_toy_coco(str(tmp_path / "a"), name_prefix="toy_coco_unit")  # same files: no-op
    assert len(DatasetCatalog.get("toy_coco_unit_train")) == 3
    register_toy_coco(str(tmp_path / "b"), name_prefix="toy_coco_unit")  # other files: replaced
    assert len(DatasetCatalog.get("toy_coco_unit_train")) == 2
    assert MetadataCatalog.get("toy_coco_unit_train").thing_classes[:2] == ["disk", "square"]
    check_datasets_available(["toy_coco_unit_train", "toy_coco_unit_val"])
    with pytest.raises(FileNotFoundError, match="incomplete"):
        register_toy_coco(str(tmp_path / "missing"), name_prefix="toy_coco_unit")

    dl = lsj_dataloader(image_size=64, train_names="toy_coco_unit_train", test_names="toy_coco_unit_val")
    mapper = instantiate(dl.train.mapper)
    torch.manual_seed(0)
    for d in DatasetCatalog.get("toy_coco_unit_train") * 4:
        out = mapper(d)
        _, h, w = out["image"].shape
        assert h <= 64 and w <= 64  # ResizeScale (0.1-2.0 of 64) then FixedSizeCrop(64), no padding
        inst = out["instances"]
        assert inst.has("gt_masks") and len(inst) == len(inst.gt_boxes)
        boxes = inst.gt_boxes.tensor
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all())
    test_out = instantiate(dl.test.mapper)(DatasetCatalog.get("toy_coco_unit_val")[0])
    assert max(test_out["image"].shape[1:]) == 64  # longer side -> image_size


def test_missing_coco_names_the_env_var():
    from detectron2.data import MetadataCatalog

    from transfer.vitdet.data import check_datasets_available

    if os.path.isfile(MetadataCatalog.get("coco_2017_val").json_file):
        pytest.skip("COCO is installed here")
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        check_datasets_available("coco_2017_val")
    with pytest.raises(KeyError, match="TOY_COCO_ROOT"):
        check_datasets_available("toy_coco_nowhere_train")


# ------------------------------------------------------------------------------------------------ checkpoints
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


def test_read_backbone_arch(tmp_path):
    p = str(tmp_path / "c.pth")
    _converted_checkpoint(p, tokens=True)
    arch = read_backbone_arch(p)
    assert arch == {
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 2,
        "patch_size": 16,
        "pretrain_img_size": 128,
        "pretrain_use_cls_token": True,
        "use_cls_token": True,
        "num_register_tokens": 0,
        "mlp_ratio": 4,
        "qkv_bias": True,
        "grid": [8, 8],
    }


@pytest.mark.parametrize(
    "edit, key, what",
    [
        ("drop", "backbone.net.blocks.1.attn.qkv.weight", "missing"),
        ("shape", "backbone.net.pos_embed", "wrong shape"),
        ("extra", "backbone.net.blocks.0.ls1.gamma", "not in the model"),
    ],
)
def test_init_checkpoint_mismatch_fails_naming_the_key(tmp_path, edit, key, what):
    p = str(tmp_path / "c.pth")
    sd = _converted_checkpoint(p)
    if edit == "drop":
        del sd[key]
    elif edit == "shape":
        sd[key] = torch.zeros(1, 50, 64)
    else:
        sd[key] = torch.ones(64)
    torch.save({"model": sd}, p)
    _, model = _tiny_model()
    ckpt = StrictDetectionCheckpointer(model, strict="backbone")
    with pytest.raises(CheckpointMismatchError, match=what) as e:
        ckpt.load(p, checkpointables=[])
    assert key in str(e.value)


def test_good_init_checkpoint_loads_exactly(tmp_path):
    p = str(tmp_path / "c.pth")
    sd = _converted_checkpoint(p)
    _, model = _tiny_model()
    StrictDetectionCheckpointer(model, strict="backbone").load(p, checkpointables=[])
    msd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(msd[k], v), k
    # strict="all" (evaluation / resume) also wants the heads
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint: backbone.simfp_2"):
        StrictDetectionCheckpointer(model, strict="all").load(p, checkpointables=[])


def test_config_override_contradicting_checkpoint_is_an_error(tmp_path):
    from transfer.vitdet.train import build_parser, setup_config

    p = str(tmp_path / "c.pth")
    _converted_checkpoint(p, tokens=True)
    cfg_file = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
    args = build_parser().parse_args(["--config-file", cfg_file, "--init", p, "--output", str(tmp_path / "o")])
    cfg = setup_config(args)
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.pretrain_img_size, net.use_cls_token) == (64, 2, 2, 128, True)
    assert cfg.train.device == ("cuda" if torch.cuda.is_available() else "cpu")
    args = build_parser().parse_args(["--config-file", cfg_file, "--init", p, "model.backbone.net.embed_dim=96"])
    with pytest.raises(ValueError, match="embed_dim=96"):
        setup_config(args)


# ------------------------------------------------------------------------------------------------ end to end
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


@pytest.mark.slow
def test_toy_training_eval_and_resume(tmp_path):
    """CLI run from a converter-format checkpoint, finite AP; --resume through tools/train_vitdet.sh; --eval-only."""
    from pretrain.data.toy import make_toy_coco

    make_toy_coco(str(tmp_path / "coco"), num_train=6, num_val=3, image_size=(128, 128), seed=0)
    ckpt = str(tmp_path / "converted.pth")
    _converted_checkpoint(ckpt)
    out = str(tmp_path / "out")
    cfg = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
    env = dict(os.environ, TOY_COCO_ROOT=str(tmp_path / "coco"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    train = [sys.executable, "-m", "transfer.vitdet.train", "--config-file", cfg]

    log1 = train + [
        "--init",
        ckpt,
        "--output",
        out,
        "train.max_iter=6",
        "train.checkpointer.period=3",
        "train.log_period=1",
    ]
    log1 = _run(log1, env)
    assert "ViTDet result: box AP" in log1 and "| mask AP" in log1
    assert "loaded the backbone from" in log1
    m = _final_metrics(out)
    assert m["iteration"] == 6
    for task in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            assert m[task][k] is not None and math.isfinite(m[task][k]), (task, k, m[task])
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["meta"]["embed_dim"] == 64 and final["meta"]["num_heads"] == 2  # from the init checkpoint
    assert final["model"]["backbone.net.pos_embed"].shape == (1, 65, 64)
    assert _iterations_logged(out) == [0, 1, 2, 3, 4, 5]

    # resume through the shell wrapper: continues at iteration 6 (not 0) up to the new max_iter
    wrapper = [
        os.path.join(REPO, "tools", "train_vitdet.sh"),
        cfg,
        ckpt,
        "--resume",
        "train.max_iter=9",
        "train.log_period=1",
    ]
    log2 = _run(wrapper, dict(env, OUTPUT_DIR=out, GPUS="1"))
    assert "Starting training from iteration 6" in log2, log2[-3000:]
    assert _iterations_logged(out) == list(range(9))  # continued, not restarted
    assert _final_metrics(out)["iteration"] == 9

    # evaluation only, from the trained model (its checkpoint carries the architecture in "meta")
    out_eval = str(tmp_path / "eval")
    log3 = _run(train + ["--eval-only", "--init", os.path.join(out, "model_final.pth"), "--output", out_eval], env)
    assert "ViTDet result: box AP" in log3
    m_train, m_eval = _final_metrics(out), _final_metrics(out_eval)
    assert m_eval["eval_only"] is True
    for task in ("bbox", "segm"):
        assert m_eval[task]["AP"] == pytest.approx(m_train[task]["AP"], abs=1e-6)


def test_train_vitdet_sh_usage_errors(tmp_path):
    sh = os.path.join(REPO, "tools", "train_vitdet.sh")
    proc = subprocess.run([sh], capture_output=True, text=True)
    assert proc.returncode == 2 and "CONFIG CKPT" in proc.stderr
    proc = subprocess.run([sh, str(tmp_path / "nope.py"), str(tmp_path / "nope.pth")], capture_output=True, text=True)
    assert proc.returncode == 2 and "config not found" in proc.stderr
    cfg = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
    ck = tmp_path / "c.pth"
    ck.write_bytes(b"")
    proc = subprocess.run([sh, cfg, str(ck), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown flag --bogus" in proc.stderr

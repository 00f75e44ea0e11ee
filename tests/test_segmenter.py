"""ADE20K Segmenter linear protocol: configs, checkpoint integration, train entry, resume, sweep summary."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402

from transfer.segmenter import integration, sweep  # noqa: E402
from transfer.segmenter.integration import CheckpointLoadError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG_DIR = os.path.join(REPO, "configs", "ade20k")
TOY_CFG = os.path.join(CFG_DIR, "segmenter_linear_vit_tiny_toy.py")
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]

# tiny reference architecture (64 px input, patch 16 -> 4x4 grid)
DIM, DEPTH, HEADS, PATCH, GRID = 32, 2, 2, 16, 4


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------
def make_toy_ade_fixture(root, num_train=8, num_val=4, size=64, num_classes=4, seed=0):
    """ADE-layout toy set: class-coloured rectangles plus noise; labels 1..K, 0 = ignore (a thin border)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes + 1, 3))
    for split, n in (("training", num_train), ("validation", num_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(n):
            label = np.full((size, size), rng.integers(1, num_classes + 1), dtype=np.uint8)
            for _ in range(3):
                y0, x0 = rng.integers(0, size - 8, size=2)
                h, w = rng.integers(8, size // 2, size=2)
                label[y0 : y0 + h, x0 : x0 + w] = rng.integers(1, num_classes + 1)
            label[:, :2] = 0
            img = np.clip(colours[label] + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, "images", split, f"toy_{i:04d}.jpg"), quality=95)
            Image.fromarray(label).save(os.path.join(root, "annotations", split, f"toy_{i:04d}.png"))
    return root


def reference_vit(seed=1):
    """An mmseg VisionTransformer with random weights far from any default init."""
    from mmseg.models.backbones import VisionTransformer

    torch.manual_seed(seed)
    ref = VisionTransformer(
        img_size=(GRID * PATCH, GRID * PATCH),
        patch_size=PATCH,
        embed_dims=DIM,
        num_layers=DEPTH,
        num_heads=HEADS,
        final_norm=True,
        patch_bias=True,
        with_cls_token=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        interpolate_mode="bicubic",
    )
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("ln1.weight") or name.endswith("ln2.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    ref.eval()
    return ref


def save_converted(ref, path, rename=None):
    """Write a converter-format MMSeg-target checkpoint of ``ref`` (optionally renaming one key)."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    if rename:
        old, new = rename
        sd[new] = sd.pop(old)
    meta = dict(
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        patch_size=PATCH,
        grid=[GRID, GRID],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        source="test",
    )
    torch.save({"state_dict": sd, "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return make_toy_ade_fixture(str(tmp_path_factory.mktemp("toy_ade")))


@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory):
    ref = reference_vit()
    path = save_converted(ref, str(tmp_path_factory.mktemp("ckpt") / "tiny_mmseg.pth"))
    return ref, path


def _build_model(cfg):
    from mmseg.registry import MODELS

    integration.setup_mmseg()
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


# ----------------------------------------------------------------------------------------------------------
# checkpoint integration
# ----------------------------------------------------------------------------------------------------------
def test_toy_config_loads_checkpoint_exactly(ref_ckpt):
    ref, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    arch = integration.apply_checkpoint_to_config(cfg, path)
    assert arch["embed_dims"] == DIM and arch["num_layers"] == DEPTH and arch["grid"] == (GRID, GRID)
    assert cfg.model.backbone.embed_dims == DIM and cfg.model.backbone.num_heads == HEADS
    assert tuple(cfg.model.backbone.img_size) == (GRID * PATCH, GRID * PATCH)
    assert cfg.model.decode_head.in_channels == DIM and cfg.model.decode_head.channels == DIM
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=os.path.abspath(path))
    model = _build_model(cfg)
    # the fresh init differs from the file; after init_weights every tensor must equal the file's
    assert integration.verify_backbone_loaded(model.backbone, path) == len(ref.state_dict())
    model.backbone.eval()
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        ours = model.backbone(x)[-1]
        theirs = ref(x)[-1]
    assert ours.shape == (2, DIM, GRID, GRID)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_real_converter_output_loads_into_toy_config(tmp_path):
    """timm ViT -> tools/convert_ckpt.py's mmseg target -> our config: same patch features as the timm model."""
    timm = pytest.importorskip("timm")
    try:
        from transfer.convert.cli import convert_checkpoint
    except ImportError:
        pytest.skip("transfer.convert is not available")
    torch.manual_seed(3)
    src = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, embed_dim=48, depth=2, num_heads=3, num_classes=0
    ).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(src.state_dict(), tmp_path / "timm.pth")
    dst = str(tmp_path / "mmseg.pth")
    convert_checkpoint(tmp_path / "timm.pth", dst, "mmseg", grid=(4, 4), quiet=True, src_format="timm", num_heads=3)
    cfg = Config.fromfile(TOY_CFG)
    integration.apply_checkpoint_to_config(cfg, dst)
    model = _build_model(cfg)
    integration.verify_backbone_loaded(model.backbone, dst)
    model.backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)[-1].flatten(2).transpose(1, 2)
        theirs = src.forward_features(x)[:, 1:]
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_broken_checkpoint_fails_loudly_naming_the_key(ref_ckpt, tmp_path):
    ref, _ = ref_ckpt
    bad = save_converted(ref, str(tmp_path / "broken.pth"), rename=("layers.1.ln2.weight", "layers.1.norm2.weight"))
    cfg = Config.fromfile(TOY_CFG)
    integration.apply_checkpoint_to_config(cfg, bad)
    model = _build_model(cfg)  # mmseg itself loads with strict=False and says nothing
    with pytest.raises(CheckpointLoadError) as err:
        integration.verify_backbone_loaded(model.backbone, bad)
    msg = str(err.value)
    assert "layers.1.norm2.weight" in msg  # file key that was dropped
    assert "layers.1.ln2.weight" in msg  # backbone parameter left at its fresh init


def test_patch_bias_trap_and_strict_config_mismatch(ref_ckpt):
    _, path = ref_ckpt
    cfg = Config.fromfile(TOY_CFG)
    cfg.model.backbone.patch_bias = False
    with pytest.raises(CheckpointLoadError, match="patch_bias"):
        integration.apply_checkpoint_to_config(cfg, path)
    # the paper's configs check instead of adapting: a tiny checkpoint does not fit ViT-S at 512
    cfg = Config.fromfile(os.path.join(CFG_DIR, "segmenter_linear_vit_s_160k.py"))
    with pytest.raises(CheckpointLoadError, match="embed_dims"):
        integration.apply_checkpoint_to_config(cfg, path)


# ----------------------------------------------------------------------------------------------------------
# the paper's configs
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,dim,heads", [("segmenter_linear_vit_s_160k.py", 384, 6), ("segmenter_linear_vit_b_160k.py", 768, 12)]
)
def test_paper_configs(name, dim, heads):
    cfg = Config.fromfile(os.path.join(CFG_DIR, name))
    assert cfg.train_cfg.type == "IterBasedTrainLoop"
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_cfg.val_interval == 16000
    assert cfg.default_hooks.checkpoint.interval == 16000
    assert cfg.total_batch_size == 16 and cfg.train_dataloader.batch_size == 16
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == "AdamW" and opt.lr == 3e-5 and opt.weight_decay == 1e-2
    (poly,) = [s for s in cfg.param_scheduler if s.type == "PolyLR"]
    assert poly.power == 0.9 and poly.end == 160000 and not poly.by_epoch
    assert math.isclose(poly.eta_min, 0.1 * opt.lr) and cfg.min_lr_ratio == 0.1
    bb = cfg.model.backbone
    assert bb.type == "VisionTransformer" and bb.patch_bias is True and bb.final_norm is True
    assert bb.with_cls_token and tuple(bb.img_size) == (512, 512) and bb.patch_size == 16
    assert bb.embed_dims == dim and bb.num_heads == heads and bb.num_layers == 12
    assert bb.norm_cfg == dict(type="LN", eps=1e-6) and bb.interpolate_mode == "bicubic" and bb.drop_path_rate == 0.1
    assert bb.out_indices == -1 and bb.init_cfg is None
    head = cfg.model.decode_head
    assert head.type == "FCNHead" and head.num_convs == 0 and head.concat_input is False
    assert head.in_channels == head.channels == dim and head.num_classes == 150 and head.dropout_ratio == 0.0
    pre = cfg.model.data_preprocessor
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD and pre.bgr_to_rgb
    assert cfg.val_evaluator.type == "IoUMetric" and cfg.val_evaluator.iou_metrics == ["mIoU"]
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"
    assert cfg.model.test_cfg.mode == "slide" and tuple(cfg.model.test_cfg.crop_size) == (512, 512)
    assert "VerifyPretrainedBackboneHook" in [h["type"] for h in cfg.custom_hooks]
    # nothing may download
    assert "http" not in cfg.pretty_text


def test_entry_derives_batch_and_eta_min(ref_ckpt, toy_root, monkeypatch, tmp_path):
    from transfer.segmenter import train

    _, path = ref_ckpt
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = train.parse_args(
        [TOY_CFG, "--init", path, "--data-root", toy_root, "--lr", "8e-5", "--launcher", "pytorch"]
        + ["--work-dir", str(tmp_path)]
    )
    cfg, info = train.prepare_config(args)
    assert cfg.train_dataloader.batch_size == 2 and info["total_batch_size"] == 4
    assert math.isclose(cfg.param_scheduler[0].eta_min, 8e-6) and cfg.param_scheduler[0].end == 300
    assert info["num_classes"] == 4 and cfg.model.decode_head.num_classes == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="not divisible"):
        train.prepare_config(args)


# ----------------------------------------------------------------------------------------------------------
# sweep bookkeeping
# ----------------------------------------------------------------------------------------------------------
def _fake_metrics(lr, seed):
    return dict(mIoU=10 + 1e5 * lr + 3 * seed, aAcc=70 + seed, mAcc=20 + 2e5 * lr - seed)


def test_sweep_summary_and_skip(tmp_path, monkeypatch):
    cfg_path, ckpt = str(tmp_path / "cfg.py"), str(tmp_path / "ck.pth")
    open(cfg_path, "w").write("x = 1\n")
    open(ckpt, "wb").write(b"0")
    work = str(tmp_path / "work")
    calls = []

    def fake_run(cmd, log_path):
        calls.append(cmd)
        out = cmd[cmd.index("--work-dir") + 1]
        lr, seed = float(cmd[cmd.index("--lr") + 1]), int(cmd[cmd.index("--seed") + 1])
        os.makedirs(out, exist_ok=True)
        json.dump(_fake_metrics(lr, seed), open(os.path.join(out, "metrics_final.json"), "w"))
        return 0

    monkeypatch.delenv("GPUS", raising=False)
    monkeypatch.delenv("NNODES", raising=False)
    argv = [cfg_path, ckpt, "--lrs", "8e-5,1e-5", "--wds", "1e-4", "--seeds", "2", "--work-dir", work, "a.b=1"]
    assert sweep.main(argv, runner=fake_run) == 0
    assert len(calls) == 4
    assert calls[0][:3] == [sys.executable, "-m", "transfer.segmenter.train"]
    assert calls[0][-2:] == ["--cfg-options", "a.b=1"] and "--resume" not in calls[0]
    assert os.path.isdir(os.path.join(work, "lr8e-05_wd0.0001", "seed1"))

    rows = list(csv.DictReader(open(os.path.join(work, "summary.csv"))))
    assert len(rows) == 2
    for row in rows:
        lr = float(row["lr"])
        assert int(row["num_seeds"]) == 2
        for key in ("mIoU", "aAcc", "mAcc"):
            vals = np.array([_fake_metrics(lr, s)[key] for s in (0, 1)])
            assert math.isclose(float(row[f"{key}_mean"]), vals.mean(), abs_tol=1e-4)
            assert math.isclose(float(row[f"{key}_std"]), vals.std(), abs_tol=1e-4)
    best = [r for r in rows if r["best"] == "1"]
    assert len(best) == 1 and float(best[0]["lr"]) == 8e-5
    md = open(os.path.join(work, "summary.md")).read()
    assert "**best**" in md and "| 8e-05 | 0.0001 | 2 |" in md

    # rerun: everything finished -> nothing runs
    calls.clear()
    assert sweep.main(argv, runner=fake_run) == 0
    assert calls == []
    # an interrupted run (checkpoint, no metrics) is resumed, the others stay skipped
    out = os.path.join(work, "lr1e-05_wd0.0001", "seed0")
    os.remove(os.path.join(out, "metrics_final.json"))
    open(os.path.join(out, "iter_5.pth"), "wb").write(b"0")
    open(os.path.join(out, "last_checkpoint"), "w").write(os.path.join(out, "iter_5.pth"))
    assert sweep.main(argv, runner=fake_run) == 0
    assert len(calls) == 1 and "--resume" in calls[0]


def test_sweep_grid_and_launcher(monkeypatch):
    assert len(sweep.plan_runs(sweep.SWEEP_LRS, sweep.SWEEP_WDS, 2)) == 16
    assert set(sweep.SWEEP_LRS) == {8e-5, 3e-5, 1e-5, 8e-6} and set(sweep.SWEEP_WDS) == {1e-2, 1e-4}
    env = dict(GPUS="4", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    cmd = sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env=env)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234", "--nproc_per_node=4"):
        assert flag in cmd
    assert cmd[cmd.index("--launcher") + 1] == "pytorch"
    cmd = sweep.build_command("c.py", "k.pth", "out", 3e-5, 1e-2, 1, env={})
    assert cmd[1:3] == ["-m", "transfer.segmenter.train"] and cmd[cmd.index("--launcher") + 1] == "none"
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "tools", "train_ade.sh")]).returncode == 0


# ----------------------------------------------------------------------------------------------------------
# real toy runs through the entry
# ----------------------------------------------------------------------------------------------------------
def _train(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", TOY_CFG, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def test_toy_run_and_resume(ref_ckpt, toy_root, tmp_path):
    _, path = ref_ckpt
    work = str(tmp_path / "run")
    common = ["--init", path, "--work-dir", work, "--data-root", toy_root, "--seed", "0", "--cfg-options"]
    common += ["default_hooks.checkpoint.interval=5", "train_cfg.val_interval=10", "default_hooks.logger.interval=5"]
    log = _train(["--max-iters", "10"] + common)
    assert "verified" in log and "pretrained backbone tensors" in log
    first = json.load(open(os.path.join(work, "metrics_final.json")))
    assert first["iter"] == 10 and first["start_iter"] == 0
    assert all(math.isfinite(first[k]) for k in ("mIoU", "aAcc", "mAcc"))
    assert 0.0 <= first["mIoU"] <= 100.0
    assert os.path.isfile(os.path.join(work, "iter_10.pth"))
    # "interruption": continue the same work dir to 15 iterations from its latest checkpoint (weights_only load)
    log = _train(["--max-iters", "15", "--resume"] + common)
    assert "resumed at iteration 10" in log
    second = json.load(open(os.path.join(work, "metrics_final.json")))
    assert second["start_iter"] == 10 and second["iter"] == 15
    assert math.isfinite(second["mIoU"])


def test_entry_fails_loudly_on_broken_checkpoint(ref_ckpt, toy_root, tmp_path):
    ref, _ = ref_ckpt
    # passes the pre-flight checks (dims, grid, flags), so it is the hook before iteration 1 that must catch it
    bad = save_converted(ref, str(tmp_path / "broken.pth"), rename=("layers.0.ffn.layers.1.weight", "layers.0.mlp.w"))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "transfer.segmenter.train", TOY_CFG, "--init", bad, "--work-dir", str(tmp_path / "w")]
        + ["--data-root", toy_root, "--max-iters", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "CheckpointLoadError" in out and "layers.0.mlp.w" in out and "layers.0.ffn.layers.1.weight" in out
    assert not os.path.exists(os.path.join(str(tmp_path / "w"), "metrics_final.json"))

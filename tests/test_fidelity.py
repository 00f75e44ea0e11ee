"""DINOv2's code as the default (docs/fidelity.md): clipping, blur, weight decay, head init and gain, field-off
interpolation, srun's world size, multi-process training in every masking mode, and the former choices."""

import glob
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_engine import tiny_overrides
from torch import nn

from pretrain.data.multicrop import MultiCropAugmentation
from pretrain.data.toy import make_toy_images
from pretrain.engine.config import load_config
from pretrain.engine.optim import clip_gradients, param_groups
from pretrain.models import DINOHead, ViTConfig, build_vit
from pretrain.models.position_field import interpolate_pos_embed, resize_pos_grid
from pretrain.ssl import SSLMetaArch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "pretrain", "**", "*.yaml"), recursive=True))


def overrides(**extra):
    """The engine tests' tiny run, 3 iterations long."""
    base = {"optim.epochs": 3, "train.epoch_length": 1}
    return tiny_overrides(extra.pop("train.data", "x"), extra.pop("train.output_dir", "y"), **dict(base, **extra))


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    make_toy_images(str(d), num_images=16, size=(48, 48), seed=0)
    return str(d)


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_pretraining_config_loads_and_validates(path):
    cfg = load_config([path], ["train.data=x"])
    total = cfg.train.batch_size_per_gpu
    factor = {"sqrt_wrt_1024": math.sqrt(total / 1024), "linear_wrt_256": total / 256, "none": 1.0}
    assert math.isclose(cfg.optim.lr, cfg.optim.base_lr * factor[cfg.optim.lr_scaling])
    SSLMetaArch(
        load_config(
            [path],
            [
                "train.data=x",
                "model.arch=vit_pico",
                "heads.n_prototypes=16",
                "heads.hidden_dim=16",
                "heads.bottleneck_dim=8",
            ],
        )
    )  # builds


def test_config_count_covers_the_folder():
    names = {os.path.relpath(p, os.path.join(REPO, "configs", "pretrain")) for p in CONFIGS}
    assert {"tiny_demo.yaml", "vits16_dinov2.yaml", "vitb16_dinov2.yaml", "ablations/t5b_all_content.yaml"} <= names


# ------------------------------------------------------------------------------------------- many processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODES = {
    "content_only_field_off": {
        "pos_field.enabled": "false",
        "masking.mask_probability": 0.5,
        "masking.content_fraction": 1.0,
    },
    "position_only": {"masking.content_fraction": 0.0},
    "both": {},
    "none": {"masking.mask_probability": 0.0},
}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_gloo_processes_train_in_every_masking_mode(mode, toy_images, tmp_path):
    """The real entry point under torchrun on 2 CPU processes: 3 iterations, then the exported backbone. Each
    mode leaves one of [MASK] / [POSMASK] (or both) unused, which DDP rejects at the second iteration unless the
    unused tokens are tied into the loss."""
    out = tmp_path / mode
    args = overrides(**MODES[mode], **{"train.data": toy_images, "train.output_dir": str(out)})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "pretrain.engine.train",
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    ibot, pos = rows[-1]["ibot"], rows[-1]["pos"]
    expect_ibot = mode in ("content_only_field_off", "both")
    expect_pos = mode in ("position_only", "both")
    assert (ibot > 0) == expect_ibot and (pos > 0) == expect_pos, (mode, ibot, pos)
    assert "2 processes x batch 4 = 8" in p.stdout + p.stderr
    assert (out / "backbone.pth").is_file()


# ------------------------------------------------------------------------------------------- clipping
def _two_modules_with_grads(huge: float):
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    for m, scale in ((a, huge), (b, 1.0)):
        for p in m.parameters():
            p.grad = torch.full_like(p, scale * 0.01)
    return {"backbone": a, "dino_head": b}


def test_per_module_clipping_leaves_other_modules_alone():
    mods = _two_modules_with_grads(huge=1e6)
    before = [p.grad.clone() for p in mods["dino_head"].parameters()]
    norms = clip_gradients(mods, 3.0, per_module=True)
    for g, p in zip(before, mods["dino_head"].parameters()):
        assert torch.equal(p.grad, g)  # its own norm 0.2 < 3: untouched
    clipped = torch.nn.utils.get_total_norm([p.grad for p in mods["backbone"].parameters()])
    assert math.isclose(float(clipped), 3.0, rel_tol=1e-4)
    assert math.isclose(norms["dino_head"], 0.01 * math.sqrt(20), rel_tol=1e-5)
    assert math.isclose(norms["total"], math.hypot(norms["backbone"], norms["dino_head"]), rel_tol=1e-9)


def test_joint_clipping_scales_every_module_by_one_factor():
    mods = _two_modules_with_grads(huge=1e6)
    norms = clip_gradients(mods, 3.0, per_module=False)
    factor = 3.0 / norms["total"]
    head = mods["dino_head"].weight.grad
    assert torch.allclose(head, torch.full_like(head, 0.01 * factor), rtol=1e-4)
    assert head.abs().max() < 1e-6  # the huge backbone gradient starves the head


# ------------------------------------------------------------------------------------------- blur
def _count_blurs(aug, n_images):
    counts = {k: 0 for k in aug.blurs}
    for kind, blur in aug.blurs.items():
        inner = blur.transforms[0]

        def counting(img, kind=kind, inner=inner):
            counts[kind] += 1
            return inner(img)

        blur.transforms[0] = counting
    img = Image.new("RGB", (40, 40), (120, 60, 30))
    for _ in range(n_images):
        aug(img)
    return counts


@pytest.mark.parametrize("probs", [(0.0, 0.9, 0.5), (1.0, 0.1, 0.5)], ids=["dinov2_code", "dinov2_paper"])
def test_blur_frequency_per_crop_kind_within_binomial_bounds(probs):
    torch.manual_seed(0)
    n, n_local = 400, 2
    aug = MultiCropAugmentation(global_size=16, local_size=16, n_global=2, n_local=n_local, blur_prob=probs)
    counts = _count_blurs(aug, n)
    for kind, p, trials in (("global1", probs[0], n), ("global2", probs[1], n), ("local", probs[2], n * n_local)):
        sd = math.sqrt(trials * p * (1 - p))
        assert abs(counts[kind] - trials * p) <= 4 * sd + 1e-9, (kind, counts[kind], trials * p)


def test_default_blur_is_what_dinov2_code_applies():
    cfg = load_config([], ["train.data=x"])
    assert list(cfg.crops.blur_prob) == [0.0, 0.9, 0.5]
    assert MultiCropAugmentation().blur_prob == (0.0, 0.9, 0.5)


# ------------------------------------------------------------------------------------------- weight decay
def _exempt(cfg):
    groups = param_groups(SSLMetaArch(cfg).student, bool(cfg.optim.decay_tokens_and_positions))
    return {n for g in groups if g["wd_mult"] == 0 for n in g["names"]}


def test_parameter_groups_without_weight_decay_dinov2_rule():
    cfg = load_config([], overrides(**{"model.num_register_tokens": 1, "heads.last_layer_gain": "learned"}))
    exempt = _exempt(cfg)
    assert "dino_head.last_layer_gain" not in exempt  # DINOv2 decays its weight_g
    # biases, norms, LayerScale: and nothing else
    assert all(n.endswith(".bias") or "norm" in n or ".gamma" in n for n in exempt), sorted(exempt)
    assert {
        "backbone.blocks.0.ls1.gamma",
        "backbone.blocks.1.norm2.weight",
        "backbone.norm.bias",
        "dino_head.mlp.0.bias",
    } <= exempt
    for decayed in (
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.reg_token",
        "backbone.cls_pos_embed",
        "backbone.pos_field.field",
    ):
        assert decayed not in exempt, decayed


def test_parameter_groups_without_weight_decay_former_rule():
    cfg = load_config([], overrides(**{"optim.decay_tokens_and_positions": "false", "pos_field.enabled": "false"}))
    exempt = _exempt(cfg)
    assert {
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.pos_embed",
        "backbone.blocks.0.ls1.gamma",
    } <= exempt
    assert "backbone.blocks.0.attn.qkv.weight" not in exempt


# ------------------------------------------------------------------------------------------- heads
def test_head_last_layer_keeps_pytorch_default_init():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=4096, hidden_dim=16, bottleneck_dim=64, nlayers=2)
    w = head.last_layer.weight
    bound = 1.0 / math.sqrt(64)  # nn.Linear's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = w.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert math.isclose(float(w.std()), bound / math.sqrt(3), rel_tol=0.02)
    assert math.isclose(float(head.mlp[0].weight.std()), 0.02, rel_tol=0.2)  # the MLP: trunc-normal 0.02
    torch.manual_seed(0)
    former = DINOHead(8, out_dim=4096, hidden_dim=16, bottleneck_dim=64, nlayers=2, last_layer_init="trunc_normal")
    assert math.isclose(float(former.last_layer.weight.std()), 0.02, rel_tol=0.05)


def test_head_gain_is_learned_and_scales_the_logits():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, nlayers=2, gain="learned")
    x = torch.randn(5, 8)
    base = head(x).detach()
    with torch.no_grad():
        head.last_layer_gain.copy_(torch.arange(1.0, 7.0))
    torch.testing.assert_close(head(x), base * torch.arange(1.0, 7.0))
    head(x).sum().backward()
    assert head.last_layer_gain.grad is not None and head.last_layer_gain.grad.abs().sum() > 0
    fixed = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, nlayers=2, gain="fixed")
    assert fixed.last_layer_gain is None and "last_layer_gain" not in dict(fixed.named_parameters())


# ------------------------------------------------------------------------------------------- field-off positions
def test_field_off_pos_embed_follows_dinov2_scale_factor_rule():
    torch.manual_seed(0)
    vit = build_vit(
        ViTConfig.from_arch("vit_pico", patch_size=8, img_size=64, pos_field=False, pos_embed_interpolation="dinov2")
    )
    m, g = 8, 3
    grid = vit.pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    # independent: F.interpolate with DINOv2's scale factor (g + 0.1) / M, written out here
    ref = F.interpolate(grid, scale_factor=((g + 0.1) / m, (g + 0.1) / m), mode="bicubic", align_corners=False)
    got = vit.patch_pos_embed(1, (g, g))
    torch.testing.assert_close(got, ref.permute(0, 2, 3, 1).reshape(1, g * g, -1))
    by_size = interpolate_pos_embed(vit.pos_embed, (g, g), rule="size")
    assert (got - by_size).abs().max() > 1e-3  # the two rules differ: the switch does something
    torch.testing.assert_close(vit.patch_pos_embed(1, (m, m)), vit.pos_embed[:, 1:])  # same grid: unchanged
    with pytest.raises(ValueError, match="interpolation"):
        resize_pos_grid(grid, (g, g), rule="bilinear")


def test_pretraining_config_default_is_dinov2_interpolation():
    cfg = load_config([], overrides(**{"pos_field.enabled": "false"}))
    vit = SSLMetaArch(cfg).student["backbone"]
    assert vit.cfg.pos_embed_interpolation == "dinov2"
    assert ViTConfig().pos_embed_interpolation == "size"  # what checkpoints without the key were trained with


# ------------------------------------------------------------------------------------------- srun
def test_srun_environment_gives_the_scaled_lr(monkeypatch):
    from pretrain.engine import train as train_mod

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "MASTER_ADDR": "node0"})
    monkeypatch.setattr(os, "environ", env)  # a copy: what main() writes into it is gone after the test
    seen = {}

    def fake_train(cfg):
        seen["lr"], seen["rank"] = cfg.optim.lr, os.environ["RANK"]
        return {"stopped": False}

    monkeypatch.setattr(train_mod, "train", fake_train)
    assert train_mod.main(["train.data=x", "train.batch_size_per_gpu=64"]) == 0
    assert math.isclose(seen["lr"], 2e-3 * math.sqrt(8 * 64 / 1024))
    assert seen["rank"] == "3" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "3"


# ------------------------------------------------------------------------------------------- former choices
@pytest.mark.slow
def test_former_switches_reproduce_the_former_losses_exactly(tmp_path):
    """``tests/fixtures/former_losses.json`` was written by the code before the DINOv2-code defaults (its
    defaults were our former choices); the same runs with every switch set back must give the same numbers."""
    sys.path.insert(0, FIXTURES)
    try:
        import record_former_losses as rec
    finally:
        sys.path.remove(FIXTURES)
    expected = json.load(open(os.path.join(FIXTURES, "former_losses.json")))
    got = rec.record(str(tmp_path))
    assert set(got) == set(expected)
    for name in expected:
        assert [r["iteration"] for r in got[name]] == [r["iteration"] for r in expected[name]]
        for g, e in zip(got[name], expected[name]):
            for term in ("loss", "dino", "ibot", "pos", "koleo"):
                assert g[term] == e[term], (name, g["iteration"], term, g[term], e[term])
            # the norm of a sum over differently grouped tensors: equal to float32 rounding
            assert math.isclose(g["grad_norm"], e["grad_norm"], rel_tol=1e-6), (name, g, e)

"""Training engine: config, schedules, optimiser groups, resume after SIGTERM, DDP equivalence, corrupt data."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.data.toy import make_toy_images
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.optim import build_optimizer, param_groups
from pretrain.engine.schedules import CosineSchedule, build_schedules
from pretrain.ssl import SSLMetaArch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_overrides(data, out, **extra):
    base = {
        "model.arch": "vit_pico",
        "model.drop_path_rate": 0.0,
        "crops.global_size": 32,
        "crops.local_size": 16,
        "crops.n_local": 2,
        "heads.n_prototypes": 64,
        "heads.hidden_dim": 32,
        "heads.bottleneck_dim": 16,
        "pos_field.size": "[8,8]",
        "optim.epochs": 4,
        "optim.warmup_epochs": 1,
        "optim.lr_scaling": "none",
        "train.data": data,
        "train.output_dir": out,
        "train.batch_size_per_gpu": 4,
        "train.epoch_length": 3,
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.checkpoint_every": 100,
        "crops.photometric": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    make_toy_images(str(d), num_images=24, size=(48, 48), seed=0)
    return str(d)


# ------------------------------------------------------------------------------------------- config
def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.warmup_epoch'.*did you mean 'optim.warmup_epochs'"
    ):
        load_config([], ["optim.warmup_epoch=3", "train.data=x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("masking:\n  content_fracton: 0.3\n")
    with pytest.raises(ConfigError, match="masking.content_fraction"):
        load_config([str(bad)], ["train.data=x"])


def test_base_files_and_lr_scaling():
    cfg = load_config([os.path.join(REPO, "configs/pretrain/vitb16_dinov2.yaml")], ["train.data=x"], world_size=8)
    assert cfg.model.arch == "vit_base" and cfg.pos_field.enabled is False
    assert cfg.masking.mask_probability == 0.5 and cfg.masking.content_fraction == 1.0
    assert math.isclose(cfg.optim.lr, 2e-3 * math.sqrt(512 / 1024))  # 64 x 8 = 512
    cfg = load_config([], ["train.data=x", "optim.lr_scaling=linear_wrt_256", "train.batch_size_per_gpu=32"], 2)
    assert math.isclose(cfg.optim.lr, 2e-3 * 64 / 256)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs/pretrain/ablations"))))
def test_ablation_configs_load(name):
    cfg = load_config([os.path.join(REPO, "configs/pretrain/ablations", name)], ["train.data=x"])
    assert cfg.model.arch == "vit_small"


def test_bad_choice_is_an_error():
    with pytest.raises(ConfigError, match="pos_field.scale_dist"):
        load_config([], ["train.data=x", "pos_field.scale_dist=gamma"])


# ------------------------------------------------------------------------------------------- schedules / optim
def test_cosine_schedule_values():
    s = CosineSchedule(1.0, 0.1, total_iters=110, warmup_iters=10)
    assert s[0] == 0.0 and math.isclose(s[5], 0.5) and math.isclose(s[10], 1.0)
    assert math.isclose(s[60], 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(s[200], 0.1)


def test_build_schedules_paper_numbers():
    cfg = load_config([], ["train.data=x", "train.batch_size_per_gpu=512"])
    sched = build_schedules(cfg, iters_per_epoch=100)
    assert sched["total"] == 100 * 100
    assert math.isclose(sched["momentum"][0], 0.992) and math.isclose(sched["momentum"][10_000], 1.0)
    assert math.isclose(sched["wd"][0], 0.04) and math.isclose(sched["wd"][9_999], 0.4, rel_tol=1e-4)
    assert sched["teacher_temp"][0] == 0.04 and sched["teacher_temp"][5000] == 0.04
    assert sched["last_layer_lr"][99] == 0.0 and sched["last_layer_lr"][100] == sched["lr"][100] > 0
    assert math.isclose(sched["lr"][1000], cfg.optim.lr)  # end of the 10 warm-up epochs
    assert math.isclose(sched["lr"][10_000], 1e-6)


def test_former_rule_exempts_tokens_and_field_and_last_layers_are_flagged():
    cfg = load_config([], tiny_overrides("x", "y", **{"optim.decay_tokens_and_positions": "false"}))
    model = SSLMetaArch(cfg)
    groups = param_groups(model.student, decay_tokens_and_positions=False)
    no_wd = {n for g in groups if g["wd_mult"] == 0 for n in g["names"]}
    wd = {n for g in groups if g["wd_mult"] == 1 for n in g["names"]}
    for name in (
        "backbone.pos_field.field",
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.posmask_token",
        "backbone.cls_pos_embed",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.0.ls1.gamma",
    ):
        assert name in no_wd, name
    assert "backbone.blocks.0.attn.qkv.weight" in wd and "dino_head.mlp.0.weight" in wd
    last = {n for g in groups if g["is_last_layer"] for n in g["names"]}
    assert last == {"dino_head.last_layer.weight", "ibot_head.last_layer.weight", "pos_head.last_layer.weight"}
    build_optimizer(model.student, cfg)


# ------------------------------------------------------------------------------------------- resume
def read_losses(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["iteration"]: r["loss"] for r in rows if "loss" in r}


def run_train(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain.engine.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_sigterm_then_resume_reproduces_uninterrupted_run(toy_images, tmp_path):
    ref_out, cut_out = str(tmp_path / "ref"), str(tmp_path / "cut")
    p = run_train(tiny_overrides(toy_images, ref_out))
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log
    ref = read_losses(ref_out)
    assert sorted(ref) == list(range(12))

    p = run_train(tiny_overrides(toy_images, cut_out))
    metrics = os.path.join(cut_out, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics) and len(read_losses(cut_out)) >= 3:
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 143, log  # stopped by the signal, with a checkpoint
    first = read_losses(cut_out)
    k = max(first)
    assert 2 <= k < 11, f"stopped at {k}"
    assert os.path.exists(os.path.join(cut_out, "checkpoints", f"ckpt_{k:08d}.pth"))
    p = run_train(tiny_overrides(toy_images, cut_out))
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log
    assert "resumed from" in log and f"(next iteration {k + 1})" in log
    resumed = read_losses(cut_out)
    assert sorted(resumed) == list(range(12))
    for it in range(12):
        assert resumed[it] == ref[it], (it, resumed[it], ref[it])  # bit-exact on CPU
    assert os.path.exists(os.path.join(cut_out, "backbone.pth"))


# ------------------------------------------------------------------------------------------- corrupt data
def test_corrupt_files_are_skipped_and_reported(tmp_path):
    d = tmp_path / "imgs"
    make_toy_images(str(d), num_images=57, size=(48, 48), seed=1)
    good = sorted(os.listdir(d))[0]
    raw = open(d / good, "rb").read()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "text.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("ignored: not an image extension")
    out = str(tmp_path / "out")
    from pretrain.engine.train import train

    cfg = load_config([], tiny_overrides(str(d), out, **{"optim.epochs": 1, "train.epoch_length": 2}))
    result = train(cfg)
    assert result["stopped"] is False and os.path.exists(result["backbone"])
    events = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert {"iteration": 0, "skipped_files": 3} in events
    log = open(os.path.join(out, "log.txt")).read()
    assert "60 images" in log and "skipped 3 unreadable" in log


# ------------------------------------------------------------------------------------------- distributed
def _batches(cfg, n_steps, per_rank, world):
    """Per-rank collated batches of the real data pipeline, as the stream sampler would hand them out."""
    from pretrain.engine.sampler import PassIndexedDataset, StreamSampler
    from pretrain.engine.train import build_collator, build_dataset

    ds = PassIndexedDataset(build_dataset(cfg, validate=False))
    collate = build_collator(cfg)
    out = []
    for r in range(world):
        it = iter(StreamSampler(len(ds), per_rank, r, world, seed=0))
        out.append([collate([ds[next(it)] for _ in range(per_rank)]) for _ in range(n_steps)])
    return out


def to_double(batch):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def merge(batches):
    """Concatenate per-rank batches into the single-process batch (crop-major per crop index)."""
    merged = {"n_global": batches[0]["n_global"], "n_local": batches[0]["n_local"]}
    for key, n in (
        ("global_crops", "n_global"),
        ("global_boxes", "n_global"),
        ("global_flips", "n_global"),
        ("content_masks", "n_global"),
        ("pos_masks", "n_global"),
        ("local_crops", "n_local"),
        ("local_boxes", "n_local"),
        ("local_flips", "n_local"),
    ):
        chunks = [b[key].chunk(b[n]) for b in batches]
        merged[key] = torch.cat([c[i] for i in range(batches[0][n]) for c in chunks])
    return merged


def _steps(model, ddp_model, cfg, batches):
    from pretrain.engine.train import train_step

    opt = build_optimizer(model.student, cfg)
    values = {"lr": 1e-3, "wd": 0.04, "momentum": 0.9, "teacher_temp": 0.04, "last_layer_lr": 1e-3}
    losses = []
    for b in batches:
        terms, _, ok = train_step(model, ddp_model, opt, b, values, cfg, torch.device("cpu"))
        assert ok
        losses.append(terms["loss"])
    return losses, torch.cat([p.detach().flatten() for p in model.student.parameters()])


def _worker(rank, world, store_file, cfg_list, batches, result_file):
    import datetime

    torch.set_num_threads(1)
    # file rendezvous: no port to collide with other processes on the machine; a timeout instead of a hang
    dist.init_process_group(
        "gloo", init_method=f"file://{store_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    from omegaconf import OmegaConf
    from torch.nn.parallel import DistributedDataParallel

    cfg = OmegaConf.create(cfg_list)
    torch.manual_seed(0)
    model = SSLMetaArch(cfg).double()
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    losses, params = _steps(model, ddp, cfg, batches[rank])
    if rank == 0:
        torch.save({"losses": losses, "params": params}, result_file)
    # Teardown order matters: a DDP Reducer that outlives destroy_process_group() drops the last reference to the
    # gloo group at function exit, whose destructor joins its worker thread while holding the GIL (deadlock).
    dist.barrier()
    del ddp
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_processes_match_one_process_with_double_batch(toy_images, tmp_path):
    from omegaconf import OmegaConf

    # KoLeo over the gathered batch: with DINOv2's per-process KoLeo a 2 x b run is not a 1 x 2b run
    cfg = load_config(
        [], tiny_overrides(toy_images, str(tmp_path), **{"crops.photometric": True, "loss.koleo_scope": "global"})
    )
    steps, b = 3, 3
    # float64: at initialisation the CLS features are nearly identical, so KoLeo's gradient (~1/d^2 with d ~ 1e-5)
    # amplifies float32 rounding differences between a 2 x b and a 1 x 2b batch to ~1e-3; in float64 they vanish
    # and any error of the distributed math itself (targets, gathered KoLeo, gradient averaging) shows.
    per_rank = [[to_double(b_) for b_ in rank_batches] for rank_batches in _batches(cfg, steps, b, 2)]
    result = str(tmp_path / "ddp.pt")
    store = str(tmp_path / "rendezvous")
    mp.spawn(_worker, args=(2, store, OmegaConf.to_container(cfg), per_rank, result), nprocs=2, join=True)
    ddp = torch.load(result, weights_only=True)

    torch.manual_seed(0)
    model = SSLMetaArch(cfg).double()
    single = [merge([per_rank[0][s], per_rank[1][s]]) for s in range(steps)]
    losses, params = _steps(model, model, cfg, single)
    for a, c in zip(ddp["losses"], losses):
        assert abs(a - c) <= 1e-4, (ddp["losses"], losses)
    assert (ddp["params"] - params).abs().max() < 1e-4
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in SSLMetaArch(cfg).double().student.parameters()])
    assert (params - initial).abs().max() > 1e-4  # training moved the weights


def test_uniform_output_monitor_fires_once_after_a_window_at_log_k():
    import math

    from pretrain.engine.health import UniformOutputMonitor

    log_k = math.log(256)
    m = UniformOutputMonitor(256, start_iteration=10, window=3, tol=0.01)
    assert m.update(0, log_k) is None and m.update(5, log_k) is None  # warm-up: ignored
    assert m.update(10, log_k + 0.005) is None and m.update(15, log_k - 0.009) is None
    assert m.update(20, log_k - 0.02) is None  # learning: the run restarts
    assert m.update(25, float("nan")) is None
    assert m.update(30, log_k) is None and m.update(35, log_k + 0.001) is None
    msg = m.update(40, log_k - 0.001)
    assert msg is not None and "since iteration 30" in msg and f"{log_k:.4f}" in msg
    assert m.update(45, log_k) is None  # once only
    with pytest.raises(ValueError):
        UniformOutputMonitor(1, 0)

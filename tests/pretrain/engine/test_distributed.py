"""Many processes: two gloo processes equal one with the double batch, every masking mode, srun's environment."""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.engine.config import load_config
from pretrain.engine.optim import build_optimizer
from pretrain.methods import IntertwinedDistillation
from tests.support.paths import REPO
from tests.support.tiny import short_run_overrides, tiny_overrides


def _batches(cfg, n_steps, per_rank, world):
    """Per-rank collated batches of the real data pipeline, as the stream sampler would hand them out."""
    from pretrain.engine.sampler import PassIndexedDataset, StreamSampler
    from pretrain.engine.train import build_dataset

    ds = PassIndexedDataset(build_dataset(cfg, validate=False))
    collate = IntertwinedDistillation.build_collator(cfg)
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
    model = IntertwinedDistillation(cfg).double()
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
    model = IntertwinedDistillation(cfg).double()
    single = [merge([per_rank[0][s], per_rank[1][s]]) for s in range(steps)]
    losses, params = _steps(model, model, cfg, single)
    for a, c in zip(ddp["losses"], losses):
        assert abs(a - c) <= 1e-4, (ddp["losses"], losses)
    assert (ddp["params"] - params).abs().max() < 1e-4
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in IntertwinedDistillation(cfg).double().student.parameters()])
    assert (params - initial).abs().max() > 1e-4  # training moved the weights


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
    args = short_run_overrides(**MODES[mode], **{"train.data": toy_images, "train.output_dir": str(out)})
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


@pytest.fixture
def main_under_srun(monkeypatch):
    """``main()`` run in an environment as srun sets it (8 tasks, this one the 4th), with ``train`` faked:
    (its return value, what ``train`` saw, the environment afterwards)."""
    from pretrain.engine import train as train_mod

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_LOCALID": "3", "MASTER_ADDR": "node0"})
    monkeypatch.setattr(os, "environ", env)  # a copy: what main() writes into it is gone after the test
    seen = {}

    def fake_train(cfg):
        seen["lr"], seen["rank"] = cfg.optim.lr, os.environ["RANK"]
        return {"stopped": False}

    monkeypatch.setattr(train_mod, "train", fake_train)
    return train_mod.main(["train.data=x", "train.batch_size_per_gpu=64"]), seen, env


def test_main_under_srun_returns_0(main_under_srun):
    returned, _, _ = main_under_srun
    assert returned == 0


def test_the_srun_environment_gives_the_lr_scaled_to_all_tasks(main_under_srun):
    _, seen, _ = main_under_srun
    assert math.isclose(seen["lr"], 2e-3 * math.sqrt(8 * 64 / 1024))


def test_the_srun_environment_gives_rank_world_size_and_local_rank(main_under_srun):
    _, seen, env = main_under_srun
    assert seen["rank"] == "3" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "3"

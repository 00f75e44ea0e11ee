"""The thin slice, end to end through the user-facing tools, for every method's tiny config: pretrain -> export ->
convert -> ViTDet -> Segmenter.

Tiny sizes so that it runs in CI on 2 cores; the numbers it checks are that every stage consumes the previous
stage's real output (no hand-made checkpoints) and produces finite metrics.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.support.paths import REPO
from toydata import AdeSpec, CocoSpec, ImagesSpec, ToySpec, ensure_toy_data


def run(cmd, env=None, timeout=900):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, PYTHON=sys.executable, **(env or {}))
    p = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


# each method's tiny config, and what its exported backbone's metadata must say
METHODS = {
    "intertwined": ("configs/pretrain/tiny_demo.yaml", {"pos_field": True}),
    "droppos": ("configs/pretrain/droppos_tiny.yaml", {"pos_field": False, "pos_embed_type": "sincos"}),
    "cr2pq": ("configs/pretrain/cr2pq_tiny.yaml", {"pos_field": False, "rope": True}),
    # our method with continuous RoPE at the crop-tied coordinates instead of the field (docs/positions.md)
    "intertwined_crop_rope": ("configs/pretrain/tiny_crop_rope.yaml", {"pos_field": False, "rope": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_pretrain_convert_vitdet_segmenter(tmp_path, method):
    config, arch_expected = METHODS[method]
    spec = ToySpec(images=ImagesSpec(num=24, size=96), coco=CocoSpec(8, 4, size=128), ade=AdeSpec(8, 4, size=96))
    toy = ensure_toy_data(str(tmp_path / "toy"), spec)
    out = tmp_path / "pretrain"
    # 1. pretraining through the tool, on the method's tiny config, shortened
    log = run(
        [
            "bash",
            "tools/pretrain.sh",
            config,
            f"train.data={toy['images']}",
            f"train.output_dir={out}",
            "train.max_iterations=3",
            "train.batch_size_per_gpu=4",
            "train.num_workers=0",
            "train.log_every=1",
        ]
    )
    assert f"backbone (method {method.split('_crop')[0]}) exported" in log
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    backbone = out / "backbone.pth"
    meta = torch.load(backbone, weights_only=True)["meta"]
    assert meta["method"] == method.split("_crop")[0] and meta["iteration"] == 2
    assert {k: meta["arch"][k] for k in arch_expected} == arch_expected

    # 2. conversion, checked numerically by the converter itself
    d2, mmseg = tmp_path / "d2.pth", tmp_path / "mmseg.pth"
    log = run(
        [
            sys.executable,
            "tools/convert_ckpt.py",
            "--src",
            str(backbone),
            "--dst",
            str(d2),
            "--target",
            "detectron2",
            "--grid",
            "8",
            "8",
        ]
    )
    assert "ours" in log
    run(
        [
            sys.executable,
            "tools/convert_ckpt.py",
            "--src",
            str(backbone),
            "--dst",
            str(mmseg),
            "--target",
            "mmseg",
            "--grid",
            "4",
            "4",
        ]
    )
    ref = torch.load(backbone, weights_only=True)["model"]
    conv = torch.load(d2, weights_only=True)["model"]
    torch.testing.assert_close(conv["backbone.net.patch_embed.proj.weight"], ref["patch_embed.proj.weight"])

    # 3. ViTDet Mask R-CNN on the toy COCO set
    det_out = tmp_path / "vitdet"
    log = run(
        [
            "bash",
            "tools/train_vitdet.sh",
            "configs/vitdet/mask_rcnn_vit_tiny_toy.py",
            str(d2),
            "train.max_iter=4",
            "train.checkpointer.period=4",
        ],
        env={"TOY_COCO_ROOT": toy["coco"], "OUTPUT_DIR": str(det_out), "GPUS": "1"},
    )
    assert "ViTDet result: box AP" in log
    det = json.load(open(det_out / "metrics_final.json"))
    flat = json.dumps(det)
    assert "bbox" in flat and "segm" in flat

    # 4. Segmenter linear decoder on the toy ADE set
    seg_dir = tmp_path / "ade"
    run(
        [
            "bash",
            "tools/train_ade.sh",
            "configs/ade20k/segmenter_linear_vit_tiny_toy.py",
            str(mmseg),
            "--work-dir",
            str(seg_dir),
            "train_cfg.max_iters=4",
            "train_cfg.val_interval=4",
        ],
        env={"TOY_ADE_ROOT": toy["ade"], "GPUS": "1"},
    )
    finals = [os.path.join(d, f) for d, _, files in os.walk(seg_dir) for f in files if f == "metrics_final.json"]
    assert len(finals) == 1
    seg = json.load(open(finals[0]))
    assert math.isfinite(float(seg["mIoU"])) and 0.0 <= float(seg["mIoU"]) <= 100.0

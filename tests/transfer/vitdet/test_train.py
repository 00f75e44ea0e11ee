"""The training entry on the toy COCO set: train, evaluate, resume; usage errors."""

import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")


from tests.support.paths import REPO
from tests.transfer.vitdet.helpers import CFG_DIR, _converted_checkpoint, _final_metrics, _iterations_logged, _run


@pytest.mark.slow
def test_toy_training_eval_and_resume(tmp_path):
    """CLI run from a converter-format checkpoint, finite AP; --resume through tools/train_vitdet.sh; --eval-only."""
    from toydata import make_toy_coco

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

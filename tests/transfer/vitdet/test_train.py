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

TOY_CFG = os.path.join(CFG_DIR, "mask_rcnn_vit_tiny_toy.py")
TRAIN_SH = os.path.join(REPO, "tools", "train_vitdet.sh")


# one toy run shared by the slow tests below: a CLI run from a converter-format checkpoint (6 iterations), a
# --resume through tools/train_vitdet.sh to 9 iterations, and an --eval-only of the result


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    from toydata import make_toy_coco

    tmp = tmp_path_factory.mktemp("vitdet_toy")
    make_toy_coco(str(tmp / "coco"), num_train=6, num_val=3, image_size=(128, 128), seed=0)
    ckpt = str(tmp / "converted.pth")
    _converted_checkpoint(ckpt)
    env = dict(os.environ, TOY_COCO_ROOT=str(tmp / "coco"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    train = [sys.executable, "-m", "transfer.vitdet.train", "--config-file", TOY_CFG]
    return dict(tmp=tmp, ckpt=ckpt, env=env, train=train, out=str(tmp / "out"))


@pytest.fixture(scope="module")
def first_run(toy_setup):
    """The 6-iteration run, and what it left in its output folder before the resume overwrites it."""
    s = toy_setup
    cmd = s["train"] + ["--init", s["ckpt"], "--output", s["out"]]
    log = _run(cmd + ["train.max_iter=6", "train.checkpointer.period=3", "train.log_period=1"], s["env"])
    final = torch.load(os.path.join(s["out"], "model_final.pth"), map_location="cpu", weights_only=False)
    return dict(log=log, metrics=_final_metrics(s["out"]), final=final, iterations=_iterations_logged(s["out"]))


@pytest.fixture(scope="module")
def resumed_run(toy_setup, first_run):
    """The first run resumed through the shell wrapper up to the new max_iter (9)."""
    s = toy_setup
    wrapper = [TRAIN_SH, TOY_CFG, s["ckpt"], "--resume", "train.max_iter=9", "train.log_period=1"]
    log = _run(wrapper, dict(s["env"], OUTPUT_DIR=s["out"], GPUS="1"))
    return dict(log=log, metrics=_final_metrics(s["out"]), iterations=_iterations_logged(s["out"]))


@pytest.fixture(scope="module")
def eval_run(toy_setup, resumed_run):
    """Evaluation only, from the trained model (its checkpoint carries the architecture in "meta")."""
    s = toy_setup
    out_eval = str(s["tmp"] / "eval")
    log = _run(
        s["train"] + ["--eval-only", "--init", os.path.join(s["out"], "model_final.pth"), "--output", out_eval],
        s["env"],
    )
    return dict(log=log, metrics=_final_metrics(out_eval))


@pytest.mark.slow
def test_toy_run_prints_box_and_mask_ap(first_run):
    assert "ViTDet result: box AP" in first_run["log"] and "| mask AP" in first_run["log"]


@pytest.mark.slow
def test_toy_run_loads_the_backbone_from_the_init_checkpoint(first_run):
    assert "loaded the backbone from" in first_run["log"]


@pytest.mark.slow
def test_toy_run_final_metrics_are_at_the_last_iteration(first_run):
    assert first_run["metrics"]["iteration"] == 6


@pytest.mark.slow
def test_toy_run_box_and_mask_aps_are_finite(first_run):
    m = first_run["metrics"]
    for task in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75"):
            assert m[task][k] is not None and math.isfinite(m[task][k]), (task, k, m[task])


@pytest.mark.slow
def test_toy_run_final_model_records_the_init_checkpoints_architecture(first_run):
    final = first_run["final"]
    assert final["meta"]["embed_dim"] == 64 and final["meta"]["num_heads"] == 2


@pytest.mark.slow
def test_toy_run_final_model_keeps_the_init_checkpoints_pos_embed_shape(first_run):
    assert first_run["final"]["model"]["backbone.net.pos_embed"].shape == (1, 65, 64)


@pytest.mark.slow
def test_toy_run_logs_every_iteration(first_run):
    assert first_run["iterations"] == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_resume_through_the_wrapper_starts_at_the_saved_iteration(resumed_run):
    assert "Starting training from iteration 6" in resumed_run["log"], resumed_run["log"][-3000:]


@pytest.mark.slow
def test_resume_continues_the_iteration_log_instead_of_restarting(resumed_run):
    assert resumed_run["iterations"] == list(range(9))


@pytest.mark.slow
def test_resume_runs_up_to_the_new_max_iter(resumed_run):
    assert resumed_run["metrics"]["iteration"] == 9


@pytest.mark.slow
def test_eval_only_prints_box_ap(eval_run):
    assert "ViTDet result: box AP" in eval_run["log"]


@pytest.mark.slow
def test_eval_only_marks_its_metrics_as_eval_only(eval_run):
    assert eval_run["metrics"]["eval_only"] is True


@pytest.mark.slow
def test_eval_only_of_the_trained_model_reproduces_its_final_aps(resumed_run, eval_run):
    m_train, m_eval = resumed_run["metrics"], eval_run["metrics"]
    for task in ("bbox", "segm"):
        assert m_eval[task]["AP"] == pytest.approx(m_train[task]["AP"], abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda tmp: [], "CONFIG CKPT"),
        (lambda tmp: [str(tmp / "nope.py"), str(tmp / "nope.pth")], "config not found"),
        (lambda tmp: [TOY_CFG, str(tmp / "c.pth"), "--bogus"], "unknown flag --bogus"),
    ],
    ids=["no-arguments", "missing-config", "unknown-flag"],
)
def test_train_vitdet_sh_exits_2_with_a_usage_message(tmp_path, args, message):
    (tmp_path / "c.pth").write_bytes(b"")
    proc = subprocess.run([TRAIN_SH, *args(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr

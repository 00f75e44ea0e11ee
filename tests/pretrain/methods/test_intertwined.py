"""The intertwined method: its total loss against an independent DINOv2 objective, every term, the EMA update."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.engine.schema import Config
from pretrain.methods import IntertwinedDistillation


def tiny_cfg(**over):
    cfg = OmegaConf.structured(Config)
    cfg.model.arch = "vit_pico"
    cfg.model.patch_size = 8
    cfg.model.drop_path_rate = 0.0
    cfg.crops.global_size = 32
    cfg.crops.local_size = 16
    cfg.crops.n_local = 2
    cfg.heads.n_prototypes = 64
    cfg.heads.hidden_dim = 32
    cfg.heads.bottleneck_dim = 16
    cfg.pos_field.size = [8, 8]
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def tiny_batch(b=3, n_local=2, content=None, pos=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 16
    cm = torch.zeros(2 * b, n, dtype=torch.bool) if content is None else content
    pm = torch.zeros(2 * b, n, dtype=torch.bool) if pos is None else pos
    lo = torch.rand(2 * b, 2, generator=g) * 0.4
    boxes = torch.cat([lo, lo + 0.5], dim=1)
    llo = torch.rand(n_local * b, 2, generator=g) * 0.6
    return dict(
        n_global=2,
        n_local=n_local,
        global_crops=torch.randn(2 * b, 3, 32, 32, generator=g),
        local_crops=torch.randn(n_local * b, 3, 16, 16, generator=g),
        global_boxes=boxes[:, [0, 1, 2, 3]],
        global_flips=torch.rand(2 * b, generator=g) > 0.5,
        local_boxes=torch.cat([llo, llo + 0.3], 1),
        local_flips=torch.rand(n_local * b, generator=g) > 0.5,
        content_masks=cm,
        pos_masks=pm,
    )


def independent_dinov2_loss(model, batch, teacher_temp, student_temp=0.1, koleo_w=1.0):
    """DINOv2's objective written out from its definition (DINO CLS + iBOT + KoLeo), independent of pretrain.losses."""
    tb, sb = model.teacher["backbone"], model.student["backbone"]
    b = batch["global_crops"].shape[0] // 2

    def sk(t, temp, iters=3):
        q = torch.exp((t - t.max()) / temp).t()
        q /= q.sum()
        kk, bb = q.shape
        for _ in range(iters):
            q /= q.sum(1, keepdim=True)
            q /= kk
            q /= q.sum(0, keepdim=True)
            q /= bb
        return (q * bb).t()

    with torch.no_grad():
        tout = tb(batch["global_crops"])
        t_cls = sk(model.teacher["dino_head"](tout["cls"]), teacher_temp)
        cm = batch["content_masks"]
        t_patch = sk(model.teacher["ibot_head"](tout["patch"][cm]), teacher_temp)
    sg = sb(batch["global_crops"], content_mask=cm)
    sl = sb(batch["local_crops"])
    lg = model.student["dino_head"](sg["cls"]) / student_temp
    ll = model.student["dino_head"](sl["cls"]) / student_temp
    terms = []
    for i in range(2):  # global crop i vs teacher's other crop
        j = 1 - i
        terms.append(-(t_cls[j * b : (j + 1) * b] * lg[i * b : (i + 1) * b].log_softmax(-1)).sum(-1).mean())
    for li in range(batch["n_local"]):
        for j in range(2):
            terms.append(-(t_cls[j * b : (j + 1) * b] * ll[li * b : (li + 1) * b].log_softmax(-1)).sum(-1).mean())
    dino = sum(terms) / len(terms)
    s_patch = model.student["ibot_head"](sg["patch"][cm]) / student_temp
    ce = -(t_patch * s_patch.log_softmax(-1)).sum(-1)
    crop_of = cm.nonzero()[:, 0]
    ibot = sum(ce[k] / cm[crop_of[k]].sum() for k in range(ce.shape[0])) / cm.shape[0]
    koleo = 0.0
    for c in sg["cls"].chunk(2):
        z = c / c.norm(dim=-1, keepdim=True)
        d = torch.cdist(z, z) + torch.eye(len(z), dtype=z.dtype) * 10
        koleo = koleo - torch.log(d.min(dim=1).values + 1e-8).mean()
    return dino + ibot + koleo_w * koleo


@pytest.fixture
def field_off_step():
    """A field-off model with content masks only (teacher nudged off the student), a float64 batch with content
    masks on 2 of 6 crops, and the model's output on it."""
    cfg = tiny_cfg(**{"pos_field.enabled": False, "masking.content_fraction": 1.0, "masking.mask_probability": 0.5})
    # float64: KoLeo at init is ill-conditioned (near-identical CLS features)
    model = IntertwinedDistillation(cfg).double()
    with torch.no_grad():  # make the teacher differ from the student
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cm = torch.zeros(6, 16, dtype=torch.bool)
    cm[0, [1, 2, 5, 6]] = True
    cm[4, [10, 11, 14]] = True
    batch = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in tiny_batch(content=cm).items()
    }
    return model, batch, model(batch, {"teacher_temp": 0.04})


def test_with_the_field_off_and_content_masks_only_the_method_has_no_position_head(field_off_step):
    model, _, _ = field_off_step
    assert "pos_head" not in model.student and not model.use_pos


def test_total_loss_equals_independent_dinov2_objective(field_off_step):
    model, batch, out = field_off_step
    want = independent_dinov2_loss(model, batch, 0.04)
    torch.testing.assert_close(out["loss"], want, atol=1e-6, rtol=1e-7)


def test_with_the_field_off_the_position_loss_is_zero(field_off_step):
    _, _, out = field_off_step
    assert out["pos"].item() == 0.0


@pytest.fixture
def both_masks_step():
    """A tiny model after the backward pass of a batch with content masks on 2 crops and position masks on 4."""
    model = IntertwinedDistillation(tiny_cfg())
    cm = torch.zeros(6, 16, dtype=torch.bool)
    pm = torch.zeros(6, 16, dtype=torch.bool)
    cm[[0, 4], 3:7] = True
    pm[[1, 2, 3, 5], 8:12] = True
    out = model(tiny_batch(content=cm, pos=pm), {"teacher_temp": 0.04})
    out["loss"].backward()
    return model, out


def test_with_both_masks_every_loss_term_is_finite_and_non_zero(both_masks_step):
    _, out = both_masks_step
    for k in ("dino", "ibot", "pos", "koleo"):
        assert torch.isfinite(out[k]) and out[k].item() != 0.0, k


def test_the_position_head_gets_a_gradient(both_masks_step):
    model, _ = both_masks_step
    assert model.student["pos_head"].mlp[0].weight.grad.abs().sum() > 0


def test_the_teacher_gets_no_gradient(both_masks_step):
    model, _ = both_masks_step
    assert all(p.grad is None for p in model.teacher.parameters())


def test_update_teacher_moves_each_teacher_weight_towards_the_student_by_ema(both_masks_step):
    model, _ = both_masks_step
    t0 = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for before, after, s in zip(t0, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * s)


@pytest.fixture(scope="module")
def vit_small_step():
    """The default (ViT-S/16, 65536 prototypes) model's output on 2 images with 2 global and 8 local crops, after
    its backward pass."""
    torch.manual_seed(0)
    cfg = OmegaConf.structured(Config)
    model = IntertwinedDistillation(cfg)
    b, n = 2, 196
    cm = torch.zeros(4, n, dtype=torch.bool)
    pm = torch.zeros(4, n, dtype=torch.bool)
    cm[0, :40] = True
    pm[1, 50:90] = True
    cm[2, 100:120] = True
    pm[3, ::5] = True
    batch = dict(
        n_global=2,
        n_local=8,
        global_crops=torch.randn(2 * b, 3, 224, 224),
        local_crops=torch.randn(8 * b, 3, 96, 96),
        global_boxes=torch.tensor([[0.0, 0.0, 0.6, 0.6]]).repeat(4, 1),
        global_flips=torch.tensor([0, 1, 0, 1]).bool(),
        local_boxes=torch.tensor([[0.2, 0.2, 0.4, 0.4]]).repeat(16, 1),
        local_flips=torch.zeros(16, dtype=torch.bool),
        content_masks=cm,
        pos_masks=pm,
    )
    out = model(batch, {"teacher_temp": 0.04})
    out["loss"].backward()
    return out


def test_vit_small_multicrop_step_returns_every_loss_term(vit_small_step):
    assert set(vit_small_step) >= {"loss", "dino", "ibot", "pos", "koleo"}


def test_a_fresh_vit_small_dino_loss_is_close_to_log_k(vit_small_step):
    """A freshly initialised model: every CE term is close to log(K) at uniform teacher targets."""
    assert abs(vit_small_step["dino"].item() - math.log(65536)) < 1.0


def test_every_vit_small_loss_value_is_finite(vit_small_step):
    assert all(torch.isfinite(v) for v in vit_small_step.values())


@pytest.fixture
def position_masks_only_step():
    """A tiny model after the backward pass of a batch with position masks only: the iBOT head sees no token."""
    model = IntertwinedDistillation(tiny_cfg())
    pm = torch.zeros(6, 16, dtype=torch.bool)
    pm[[0, 3], 2:6] = True
    out = model(tiny_batch(pos=pm), {"teacher_temp": 0.04})
    out["loss"].backward()
    return model, out


def test_the_ibot_loss_is_zero_when_no_patch_is_content_masked(position_masks_only_step):
    _, out = position_masks_only_step
    assert out["ibot"].item() == 0.0


def test_head_without_tokens_stays_in_graph_with_zero_gradient(position_masks_only_step):
    """DDP needs every parameter to get a gradient: a head that saw no masked patch gets exact zeros."""
    model, _ = position_masks_only_step
    for p in model.student["ibot_head"].parameters():
        assert p.grad is not None and p.grad.abs().max().item() == 0.0


def test_the_position_head_gets_a_gradient_when_the_ibot_head_sees_no_token(position_masks_only_step):
    model, _ = position_masks_only_step
    assert model.student["pos_head"].mlp[0].weight.grad.abs().sum() > 0

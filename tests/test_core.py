"""Pretraining core: position field, ViT, heads, losses, student/teacher (docs/method.md §1, §4)."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pretrain.losses import dino_cls_loss, koleo_loss, masked_patch_loss, sinkhorn_knopp, sinkhorn_knopp_log
from pretrain.losses.targets import SoftmaxCentering
from pretrain.models import DINOHead, PositionField, ViTConfig, build_vit
from pretrain.models.position_field import patch_centres
from pretrain.ssl import SSLMetaArch

DEFAULTS = "pretrain/engine/default_config.yaml"


def field_from_function(fn, dim, h, w):
    """A field whose cell (i, j) holds fn(x, y) at the cell centre, for ``dim`` channels."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([fn(xx, yy, c) for c in range(dim)]).float()[None]


def make_field(fn, dim=3, size=(64, 48)):
    pf = PositionField(dim, size)
    with torch.no_grad():
        pf.field.copy_(field_from_function(fn, dim, *size))
    return pf


def linear_fn(x, y, c):
    return (c + 1) * x - 2 * y + 0.25 * c


def smooth_fn(x, y, c):
    return torch.sin(2 * math.pi * x + c) * torch.cos(math.pi * y)


# ----------------------------------------------------------------------------------------------- field sampling
@pytest.mark.parametrize("grid", [(7, 5), (14, 14)])
def test_full_box_reproduces_linear_function_at_patch_centres(grid):
    pf = make_field(linear_fn)
    out = pf(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, grid)[0]  # (N, d)
    gh, gw = grid
    ys = (torch.arange(gh) + 0.5) / gh
    xs = (torch.arange(gw) + 0.5) / gw
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    want = torch.stack([linear_fn(xx, yy, c) for c in range(3)], -1).reshape(-1, 3)
    # bilinear interpolation is exact for a linear function (patch centres lie inside the cell-centre hull)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_full_box_reproduces_smooth_function():
    pf = make_field(smooth_fn, dim=2, size=(256, 256))
    out = pf(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None, (16, 16))[0]
    c = (torch.arange(16) + 0.5) / 16
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    want = torch.stack([smooth_fn(xx, yy, k) for k in range(2)], -1).reshape(-1, 2)
    assert (out - want).abs().max() < 2e-4  # bilinear error ~ h^2 |f''| / 8 with h = 1/256


def test_flip_reverses_columns():
    pf = PositionField(8, (50, 50))
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.1, 0.2, 0.7, 0.9]])
    out = pf(box, torch.tensor([False, True]), (6, 5)).reshape(2, 6, 5, 8)
    torch.testing.assert_close(out[1], out[0].flip(1))
    assert (out[1] - out[0]).abs().max() > 1e-3  # the flip changes something


def test_crop_of_crop_equals_composed_box():
    pf = PositionField(4, (50, 50))
    outer = torch.tensor([0.2, 0.1, 0.8, 0.7])
    inner_rel = torch.tensor([0.25, 0.5, 0.75, 1.0])  # inner crop in the outer crop's own coordinates
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    composed = torch.stack(
        [
            outer[0] + inner_rel[0] * w,
            outer[1] + inner_rel[1] * h,
            outer[0] + inner_rel[2] * w,
            outer[1] + inner_rel[3] * h,
        ]
    )
    # patch centres of the inner crop, computed through the outer crop's coordinate frame
    rel_centres = patch_centres(inner_rel[None], None, (4, 4))[0]
    via_outer = torch.stack([outer[0] + rel_centres[..., 0] * w, outer[1] + rel_centres[..., 1] * h], -1)
    g = (via_outer * 2 - 1)[None]
    sampled = F.grid_sample(pf.field, g, mode="bilinear", padding_mode="border", align_corners=False)
    want = sampled[0].permute(1, 2, 0).reshape(-1, 4)
    torch.testing.assert_close(pf(composed[None], None, (4, 4))[0], want, atol=1e-6, rtol=0)


def test_border_padding_outside_virtual_image():
    pf = make_field(linear_fn, dim=1, size=(10, 10))
    out = pf(torch.tensor([[-1.0, -1.0, -0.5, -0.5]]), None, (2, 2))[0]
    torch.testing.assert_close(out, pf.field[0, :, 0, 0].expand(4, 1))  # everything reads the corner cell


def test_gradients_reach_field_and_tokens():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field_size=[6, 6]))
    x = torch.randn(2, 3, 32, 32)
    cm = torch.zeros(2, 16, dtype=torch.bool)
    pm = torch.zeros(2, 16, dtype=torch.bool)
    cm[0, :3] = True
    pm[1, 5:8] = True
    out = vit(x, torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 1.0, 1.0]]), torch.tensor([True, False]), cm, pm)
    (out["patch"].square().sum() + out["cls"].sum()).backward()
    for name in ("pos_field.field", "mask_token", "posmask_token", "cls_pos_embed"):
        g = dict(vit.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_masks_replace_content_or_position_only():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field_size=[6, 6]))
    with torch.no_grad():
        vit.mask_token.fill_(3.0)
        vit.posmask_token.fill_(-5.0)
    x = torch.randn(1, 3, 32, 32)
    m = torch.zeros(1, 16, dtype=torch.bool)
    m[0, 2] = True
    clean, _ = vit.prepare_tokens(x)
    cm, _ = vit.prepare_tokens(x, content_mask=m)
    pm, _ = vit.prepare_tokens(x, pos_mask=m)
    pos = vit.patch_pos_embed(1, (4, 4))
    content = clean[0, 1:] - pos[0]
    torch.testing.assert_close(cm[0, 3], 3.0 + pos[0, 2])  # [MASK] content + its position
    torch.testing.assert_close(pm[0, 3], content[2] - 5.0)  # its content + [POSMASK]
    unchanged = torch.ones(17, dtype=torch.bool)
    unchanged[3] = False
    torch.testing.assert_close(cm[0, unchanged], clean[0, unchanged])
    torch.testing.assert_close(pm[0, unchanged], clean[0, unchanged])


def test_field_off_interpolates_pos_embed_like_dinov2():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, pos_field=False))
    assert vit.pos_embed.shape == (1, 17, 64)
    pe = vit.patch_pos_embed(1, (4, 4))
    torch.testing.assert_close(pe, vit.pos_embed[:, 1:])
    pe6 = vit.patch_pos_embed(1, (6, 6))
    grid = vit.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 64)
    torch.testing.assert_close(pe6, want)


def test_registers_have_no_position_and_come_after_cls():
    vit = build_vit(ViTConfig.from_arch("vit_pico", patch_size=8, img_size=32, num_register_tokens=3))
    seq, _ = vit.prepare_tokens(torch.randn(2, 3, 32, 32))
    assert seq.shape[1] == 1 + 3 + 16
    torch.testing.assert_close(seq[0, 1:4], vit.reg_token[0])
    torch.testing.assert_close(seq[0, 0], (vit.cls_token + vit.cls_pos_embed)[0, 0])


# ----------------------------------------------------------------------------------------------- heads
def test_head_last_layer_is_weight_normalised():
    # 3 tokens < bottleneck 4 takes the divide-the-output branch, 9 tokens the normalise-the-matrix branch:
    # both must equal the explicit formula, in value and in gradient
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=5, hidden_dim=16, bottleneck_dim=4, nlayers=3).double()
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # scaling the raw weight must not change the output
    for n in (3, 9):
        x = torch.randn(n, 8, dtype=torch.float64)
        g = torch.randn(n, 5, dtype=torch.float64)
        head.zero_grad()
        y = head(x)
        (y * g).sum().backward()
        grads = [p.grad.clone() for p in head.parameters()]
        head.zero_grad()
        z = head.mlp(x)
        z = z / z.norm(dim=-1, keepdim=True)
        w = head.last_layer.weight / head.last_layer.weight.norm(dim=1, keepdim=True)
        ref = z @ w.t()
        (ref * g).sum().backward()
        torch.testing.assert_close(y, ref)
        for got, p in zip(grads, head.parameters()):
            torch.testing.assert_close(got, p.grad)
        assert y.abs().max() <= 1.0 + 1e-9  # cosine similarities


def test_normalized_linear_gradcheck_both_branches_and_clamped_rows():
    from pretrain.models import normalized_linear

    torch.manual_seed(3)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    for n in (2, 9):  # fewer / more tokens than the width 4: output-side / matrix-side normalisation
        x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(normalized_linear, (x, w))
    # a row below eps: the clamp's derivative is zero, so that row's gradient is the plain linear one / eps
    w0 = w.detach().clone()
    w0[3] = 1e-14
    w0.requires_grad_(True)
    x = torch.randn(5, 4, dtype=torch.float64)
    g = torch.randn(5, 7, dtype=torch.float64)
    (normalized_linear(x, w0, 1e-12) * g).sum().backward()
    ref_w = w0.detach().clone().requires_grad_(True)
    (F.linear(x, ref_w) / ref_w.norm(dim=1).clamp_min(1e-12) * g).sum().backward()
    torch.testing.assert_close(w0.grad, ref_w.grad)
    torch.testing.assert_close(w0.grad[3], g[:, 3] @ x / 1e-12)


def test_normalized_linear_under_cpu_autocast():
    from pretrain.models import normalized_linear

    torch.manual_seed(4)
    x = torch.randn(6, 16)
    w = torch.randn(32, 16, requires_grad=True)
    ref = F.linear(x, w) / w.norm(dim=1)
    (ref * ref).sum().backward()
    ref_grad, w.grad = w.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = normalized_linear(x, w)
    assert y.dtype == torch.bfloat16
    (y.float() * y.float()).sum().backward()
    assert w.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(w.grad, ref_grad, atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------------------------- losses
def test_sinkhorn_knopp_doubly_stochastic():
    torch.manual_seed(1)
    logits = torch.randn(40, 10)
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((10,), 4.0), atol=1e-4, rtol=0)
    q3 = sinkhorn_knopp(logits, temp=0.5, n_iterations=3)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(40), atol=1e-5, rtol=0)  # rows exact after any count


def test_sinkhorn_knopp_numerically_safe():
    logits = torch.full((8, 6), 3.0)
    logits[:, 0] = 10.0  # 10 / 0.04 = 250 > 88: a naive exp overflows float32
    assert torch.isinf(torch.exp(logits / 0.04)).any()
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    # shift invariance: subtracting the max changes nothing for moderate logits
    moderate = torch.randn(8, 6)
    naive = torch.exp(moderate / 0.1).t()
    naive = naive / naive.sum()
    for _ in range(3):
        naive = naive / naive.sum(dim=1, keepdim=True) / 6
        naive = naive / naive.sum(dim=0, keepdim=True) / 8
    torch.testing.assert_close(sinkhorn_knopp(moderate, 0.1), (naive * 8).t(), atol=1e-6, rtol=1e-5)


def test_sinkhorn_knopp_fast_path_equals_log_domain():
    # cosine-range logits as the heads produce, at the teacher temperatures in use, and a wide random case
    torch.manual_seed(2)
    for logits, temp in [
        (torch.rand(50, 300) * 2 - 1, 0.04),
        (torch.rand(50, 300) * 2 - 1, 0.07),
        (torch.randn(17, 64) * 3, 0.1),
    ]:
        ref = sinkhorn_knopp_log(logits.double(), temp)
        torch.testing.assert_close(sinkhorn_knopp(logits, temp).double(), ref, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(sinkhorn_knopp(logits.double(), temp), ref, atol=1e-12, rtol=1e-10)


def test_sinkhorn_knopp_underflowing_sample_falls_back_to_log_domain():
    # sample 0 scores 13/0.04 = 325 below the others on every prototype: exp underflows for its whole column,
    # which the exp-domain path detects (0/0) and hands to the log domain
    logits = torch.full((6, 5), 3.0)
    logits[1:] += torch.linspace(0, 0.5, 5)
    logits[0] = -10.0
    assert (torch.exp((logits[0] - logits.amax(0)) / 0.04) == 0).all()
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.double(), sinkhorn_knopp_log(logits.double(), 0.04), atol=1e-5, rtol=1e-4)


def test_softmax_centering_matches_hand_computation():
    c = SoftmaxCentering(3, momentum=0.9)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    p = c(t, 0.5)
    torch.testing.assert_close(p, torch.softmax(t / 0.5, -1))
    torch.testing.assert_close(c.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0]]))
    p2 = c(t, 0.5)
    torch.testing.assert_close(p2, torch.softmax((t - 0.2) / 0.5, -1))


def test_dino_loss_hand_computed():
    # 2 global crops, 1 local, batch 1, K = 2
    s_g = torch.tensor([[[0.0, 0.1]], [[0.2, 0.0]]])
    s_l = torch.tensor([[[0.1, 0.1]]])
    t = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    temp = 0.1

    def ce(tp, s):
        ls = [v / temp for v in s]
        lse = math.log(sum(math.exp(v) for v in ls))
        return -sum(tp[k] * (ls[k] - lse) for k in range(2))

    # terms: g0 vs t1, g1 vs t0, l vs t0, l vs t1
    want = (
        ce([1.0, 0.0], [0.0, 0.1])
        + ce([0.5, 0.5], [0.2, 0.0])
        + ce([0.5, 0.5], [0.1, 0.1])
        + ce([1.0, 0.0], [0.1, 0.1])
    ) / 4
    assert abs(dino_cls_loss(s_g, s_l, t, temp).item() - want) < 1e-5


def test_dino_loss_summed_teachers_equal_pairwise_terms():
    """Local crops take one CE against the summed global targets; that must equal the mean of the pair terms."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    s_g, s_l = (
        torch.randn(2, 3, 50, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 50, generator=g, dtype=torch.float64),
    )
    t = torch.softmax(torch.randn(2, 3, 50, generator=g, dtype=torch.float64) / 0.1, -1)

    def ce(tp, s):
        return -(tp * F.log_softmax(s / 0.1, -1)).sum(-1).mean()

    terms = [ce(t[1], s_g[0]), ce(t[0], s_g[1])] + [ce(tj, sl) for sl in s_l for tj in t]
    want = torch.stack(terms).mean()
    torch.testing.assert_close(dino_cls_loss(s_g, s_l, t, 0.1), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dino_cls_loss(s_g, None, t, 0.1), torch.stack(terms[:2]).mean(), rtol=1e-12, atol=1e-12)


def test_masked_patch_loss_hand_computed():
    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])  # 3 masked patches
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    temp = 1.0
    ce = [
        -math.log(math.exp(0) / (math.exp(0) + math.exp(1))),
        -math.log(math.exp(1) / (math.exp(1) + 1)),
        -math.log(0.5),
    ]
    want = (ce[0] / 2 + ce[1] / 2 + ce[2] / 1) / 3  # per-crop weights, divided by the number of crops (3)
    assert abs(masked_patch_loss(s, t, masks, temp).item() - want) < 1e-6


def test_koleo_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # normalised: a=(1,0), b=(0,1), c=(.707,.707); nn: a->c, b->c, c->a (tie with b; argmax picks the first)
    d_ac = math.sqrt((1 - 1 / math.sqrt(2)) ** 2 + (1 / math.sqrt(2)) ** 2)
    want = -(math.log(d_ac) * 3) / 3
    assert abs(koleo_loss(x, scope="local").item() - want) < 1e-5
    assert abs(koleo_loss(x, scope="global").item() - want) < 1e-5  # single process: same


# ----------------------------------------------------------------------------------------------- SSL
def tiny_cfg(**over):
    cfg = OmegaConf.load(DEFAULTS)
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


def test_total_loss_equals_independent_dinov2_objective():
    cfg = tiny_cfg(**{"pos_field.enabled": False, "masking.content_fraction": 1.0, "masking.mask_probability": 0.5})
    model = SSLMetaArch(cfg).double()  # float64: KoLeo at init is ill-conditioned (near-identical CLS features)
    assert "pos_head" not in model.student and not model.use_pos
    with torch.no_grad():  # make the teacher differ from the student
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cm = torch.zeros(6, 16, dtype=torch.bool)
    cm[0, [1, 2, 5, 6]] = True
    cm[4, [10, 11, 14]] = True
    batch = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in tiny_batch(content=cm).items()
    }
    out = model(batch, teacher_temp=0.04)
    want = independent_dinov2_loss(model, batch, 0.04)
    torch.testing.assert_close(out["loss"], want, atol=1e-6, rtol=1e-7)
    assert out["pos"].item() == 0.0


def test_all_terms_and_teacher_update():
    cfg = tiny_cfg()
    model = SSLMetaArch(cfg)
    cm = torch.zeros(6, 16, dtype=torch.bool)
    pm = torch.zeros(6, 16, dtype=torch.bool)
    cm[[0, 4], 3:7] = True
    pm[[1, 2, 3, 5], 8:12] = True
    out = model(tiny_batch(content=cm, pos=pm), 0.04)
    for k in ("dino", "ibot", "pos", "koleo"):
        assert torch.isfinite(out[k]) and out[k].item() != 0.0, k
    out["loss"].backward()
    assert model.student["pos_head"].mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    t0 = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for before, after, s in zip(t0, model.teacher.parameters(), model.student.parameters()):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * s)


def test_vit_small_multicrop_forward_backward_cpu():
    cfg = OmegaConf.load(DEFAULTS)
    model = SSLMetaArch(cfg)
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
    out = model(batch, 0.04)
    out["loss"].backward()
    assert set(out) >= {"loss", "dino", "ibot", "pos", "koleo"}
    # a freshly initialised model: every CE term is close to log(K) at uniform teacher targets
    assert abs(out["dino"].item() - math.log(65536)) < 1.0
    assert all(torch.isfinite(v) for v in out.values())


def test_head_without_tokens_stays_in_graph_with_zero_gradient():
    """DDP needs every parameter to get a gradient: a head that saw no masked patch gets exact zeros."""
    model = SSLMetaArch(tiny_cfg())
    pm = torch.zeros(6, 16, dtype=torch.bool)
    pm[[0, 3], 2:6] = True  # position masks only: the iBOT head sees no token this step
    out = model(tiny_batch(pos=pm), 0.04)
    assert out["ibot"].item() == 0.0
    out["loss"].backward()
    for p in model.student["ibot_head"].parameters():
        assert p.grad is not None and p.grad.abs().max().item() == 0.0
    assert model.student["pos_head"].mlp[0].weight.grad.abs().sum() > 0

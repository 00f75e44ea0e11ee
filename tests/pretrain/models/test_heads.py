"""The DINO head: weight-normalised last layer, its init and its gain."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import DINOHead, normalized_linear

# 3 tokens < bottleneck 4 take the divide-the-output branch, 9 tokens the normalise-the-matrix branch
HEAD_BRANCHES = pytest.mark.parametrize("n", [3, 9], ids=["output_side", "matrix_side"])


@pytest.fixture
def head_and_formula(n):
    """A head with a scaled raw last-layer weight on ``n`` random tokens: its output and parameter gradients
    (for a random output gradient) and those of the explicit formula normalise(mlp(x)) @ normalise(W).T."""
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=5, hidden_dim=16, bottleneck_dim=4, nlayers=3).double()
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # scaling the raw weight must not change the output
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
    return y, grads, ref, [p.grad for p in head.parameters()]


@HEAD_BRANCHES
def test_head_last_layer_is_weight_normalised(head_and_formula):
    y, _, ref, _ = head_and_formula
    torch.testing.assert_close(y, ref)


@HEAD_BRANCHES
def test_head_gradient_equals_that_of_the_weight_normalised_formula(head_and_formula):
    _, grads, _, ref_grads = head_and_formula
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


@HEAD_BRANCHES
def test_head_outputs_are_cosine_similarities(head_and_formula):
    y, _, _, _ = head_and_formula
    assert y.abs().max() <= 1.0 + 1e-9


@pytest.mark.parametrize("n", [2, 9], ids=["output_side", "matrix_side"])
def test_normalized_linear_passes_gradcheck_on_both_branches(n):
    """Fewer / more tokens than the width 4: output-side / matrix-side normalisation."""
    torch.manual_seed(3)
    w = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalized_linear, (x, w))


def test_a_weight_row_below_eps_gets_the_plain_linear_gradient_over_eps():
    """The clamp's derivative is zero, so that row's gradient is the plain linear one / eps."""
    torch.manual_seed(3)
    w0 = torch.randn(7, 4, dtype=torch.float64)
    w0[3] = 1e-14
    w0.requires_grad_(True)
    x = torch.randn(5, 4, dtype=torch.float64)
    g = torch.randn(5, 7, dtype=torch.float64)
    (normalized_linear(x, w0, 1e-12) * g).sum().backward()
    ref_w = w0.detach().clone().requires_grad_(True)
    (F.linear(x, ref_w) / ref_w.norm(dim=1).clamp_min(1e-12) * g).sum().backward()
    torch.testing.assert_close(w0.grad, ref_w.grad)
    torch.testing.assert_close(w0.grad[3], g[:, 3] @ x / 1e-12)


@pytest.fixture
def autocast_and_float32():
    """normalized_linear's output and weight gradient under CPU bfloat16 autocast, and the float32 reference."""
    torch.manual_seed(4)
    x = torch.randn(6, 16)
    w = torch.randn(32, 16, requires_grad=True)
    ref = F.linear(x, w) / w.norm(dim=1)
    (ref * ref).sum().backward()
    ref_grad, w.grad = w.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = normalized_linear(x, w)
    (y.float() * y.float()).sum().backward()
    return y, w.grad, ref, ref_grad


def test_normalized_linear_under_cpu_autocast_outputs_bfloat16(autocast_and_float32):
    y, _, _, _ = autocast_and_float32
    assert y.dtype == torch.bfloat16


def test_normalized_linear_under_cpu_autocast_keeps_a_float32_weight_gradient(autocast_and_float32):
    _, grad, _, _ = autocast_and_float32
    assert grad.dtype == torch.float32


def test_normalized_linear_under_cpu_autocast_matches_float32_to_bfloat16_precision(autocast_and_float32):
    y, grad, ref, ref_grad = autocast_and_float32
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.02)
    torch.testing.assert_close(grad, ref_grad, atol=0.1, rtol=0.05)


@pytest.fixture
def default_head():
    torch.manual_seed(0)
    return DINOHead(8, out_dim=4096, hidden_dim=16, bottleneck_dim=64, nlayers=2)


def test_head_last_layer_keeps_pytorch_default_init(default_head):
    """nn.Linear's kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(64)
    w = default_head.last_layer.weight.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert math.isclose(float(w.std()), bound / math.sqrt(3), rel_tol=0.02)


def test_head_mlp_is_initialised_trunc_normal_0_02(default_head):
    assert math.isclose(float(default_head.mlp[0].weight.detach().std()), 0.02, rel_tol=0.2)


def test_the_former_last_layer_init_is_trunc_normal_0_02():
    torch.manual_seed(0)
    former = DINOHead(8, out_dim=4096, hidden_dim=16, bottleneck_dim=64, nlayers=2, last_layer_init="trunc_normal")
    assert math.isclose(float(former.last_layer.weight.detach().std()), 0.02, rel_tol=0.05)


@pytest.fixture
def learned_gain_head():
    torch.manual_seed(0)
    return DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, nlayers=2, gain="learned"), torch.randn(5, 8)


def test_a_learned_gain_scales_each_logit(learned_gain_head):
    head, x = learned_gain_head
    base = head(x).detach()
    with torch.no_grad():
        head.last_layer_gain.copy_(torch.arange(1.0, 7.0))
    torch.testing.assert_close(head(x), base * torch.arange(1.0, 7.0))


def test_a_learned_gain_gets_a_gradient(learned_gain_head):
    head, x = learned_gain_head
    head(x).sum().backward()
    assert head.last_layer_gain.grad is not None and head.last_layer_gain.grad.abs().sum() > 0


def test_a_fixed_gain_is_no_parameter():
    fixed = DINOHead(8, out_dim=6, hidden_dim=16, bottleneck_dim=4, nlayers=2, gain="fixed")
    assert fixed.last_layer_gain is None and "last_layer_gain" not in dict(fixed.named_parameters())

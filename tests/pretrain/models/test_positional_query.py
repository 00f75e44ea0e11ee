"""CR2PQ's position-aware cross-attention (pretrain/models/positional_query.py, CR2PQ Eq. 8) against a naive
computation: rotations written with complex numbers, an explicit softmax of the rotated q . k."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.models.positional_query import GlobalProjector, PatchDecoder, PositionalQueryAttention


def _rotate(x: torch.Tensor, coords: torch.Tensor, base: float) -> torch.Tensor:
    """Axial 2-D RoPE by hand: ``x (N, D)`` as D/2 complex numbers; the first D/4 turn by row * theta_t, the last
    D/4 by col * theta_t, theta_t = base ** (-t / (D/4))."""
    n, d = x.shape
    quarter = d // 4
    theta = torch.tensor([base ** (-t / quarter) for t in range(quarter)], dtype=torch.float64)
    z = torch.complex(x[:, 0::2].double(), x[:, 1::2].double())
    angle = torch.cat([coords[:, :1].double() * theta, coords[:, 1:].double() * theta], dim=1)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.stack([z.real, z.imag], dim=-1).reshape(n, d)


def _naive(m: PositionalQueryAttention, h_a, coords_a, coords_b) -> torch.Tensor:
    """Eq. 8 for one image, head by head, in float64."""
    heads, hd = m.num_heads, m.head_dim
    q_all = m.q(m.mask_token[0]).double().expand(len(coords_b), -1)
    k_all, v_all = m.k(h_a).double(), m.v(h_a).double()
    outs = []
    for h in range(heads):
        cut = slice(h * hd, (h + 1) * hd)
        q, k = _rotate(q_all[:, cut], coords_b, 10000.0), _rotate(k_all[:, cut], coords_a, 10000.0)
        scores = (q @ k.T) / math.sqrt(hd)
        weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
        outs.append(weights @ v_all[:, cut])
    return torch.cat(outs, dim=-1) @ m.proj.weight.double().T + m.proj.bias.double()


@pytest.fixture
def attention():
    torch.manual_seed(0)
    m = PositionalQueryAttention(16, 2)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)  # weights large enough for the rotations to matter
    return m


def test_the_cross_attention_equals_the_naive_softmax_of_rotated_queries_and_keys(attention):
    h_a = torch.randn(2, 6, 16)
    coords_a = torch.tensor([[r, c] for r in range(2) for c in range(3)], dtype=torch.float32)
    coords_b = torch.tensor([[[0.5, 1.25], [2.0, -1.0], [1.0, 3.5]], [[0.0, 0.0], [-2.5, 4.0], [1.5, 0.5]]])
    with torch.no_grad():
        out = attention(h_a, coords_a[None], coords_b)
        for i in range(2):
            assert torch.allclose(out[i].double(), _naive(attention, h_a[i], coords_a, coords_b[i]), atol=1e-5)


def test_queries_at_different_positions_get_different_outputs_and_equal_positions_equal_ones(attention):
    h_a = torch.randn(1, 4, 16)
    coords_a = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    out = attention(h_a, coords_a, torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.5]]]))
    assert torch.allclose(out[0, 0], out[0, 1]) and not torch.allclose(out[0, 0], out[0, 2], atol=1e-3)


def test_shifting_both_views_by_one_constant_leaves_the_output_unchanged(attention):
    h_a = torch.randn(1, 4, 16)
    coords_a = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    coords_b = torch.tensor([[[0.3, 2.0], [-1.0, 0.5]]])
    shift = torch.tensor([7.5, -3.25])
    with torch.no_grad():
        same = attention(h_a, coords_a + shift, coords_b + shift)
        assert torch.allclose(attention(h_a, coords_a, coords_b), same, atol=1e-4)


def test_a_head_dimension_not_divisible_by_4_is_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        PositionalQueryAttention(12, 2)


def test_the_decoder_and_projector_map_to_the_teacher_width():
    tokens = torch.randn(2, 5, 16)
    assert PatchDecoder(16, 24, dim=8, depth=2, heads=2)(tokens).shape == (2, 5, 24)
    proj = GlobalProjector(16, 24, hidden_dim=32)
    assert proj(tokens.mean(1)).shape == (2, 24) and [type(m).__name__ for m in proj] == ["Linear", "GELU", "Linear"]


def test_the_mask_token_starts_at_the_scale_of_normalised_tokens():
    torch.manual_seed(0)
    token = PositionalQueryAttention(384, 6).mask_token
    assert 0.9 < token.std().item() < 1.1 and token.requires_grad

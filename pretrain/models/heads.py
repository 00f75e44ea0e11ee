"""DINO-style projection heads (DINO on CLS, iBOT on content-masked patches, position on position-masked patches).

MLP (``nlayers`` linear layers with GELU) -> bottleneck -> L2 normalisation -> weight-normalised prototypes
``g_k * W_k / |W_k|``. ``gain="fixed"`` (default) holds ``g = 1``: the paper's Table 6 sets "Norm. last layer:
True", iBOT's setting, whose code freezes ``weight_g`` at 1. ``gain="learned"`` is DINOv2's code, which trains
``weight_g`` (initialised to 1, weight-decayed). DINOv2's code creates the last layer after the truncated-normal
init of the MLP, so the prototypes keep PyTorch's default ``nn.Linear`` init (``last_layer_init="pytorch_default"``,
default); ``"trunc_normal"`` re-initialises them with the MLP (our former choice). See docs/fidelity.md.

The prototype layer is :func:`normalized_linear`, ``x @ (W / |W|_rows)^T`` with a hand-written backward: with
65,536 prototypes, autograd's generic version allocates and walks several (K, bottleneck) and (tokens, K)
temporaries and keeps the raw (tokens, K) product alive for backward; this one keeps only ``x``, ``W`` and the
norms, and costs one (K, bottleneck) pass beyond the two matmuls of a plain linear layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _compute_dtype(x: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give ``F.linear(x, w)`` here (it is on inside the forward of a custom Function)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(x.dtype, w.dtype)


class _NormalizedLinear(torch.autograd.Function):
    """``y = x @ (W / n)^T``, ``n_k = max(|W_k|, eps)``. With ``G = dL/dy``, ``Wn = W / n`` and
    ``D1 = (G^T x) / n`` (rows scaled):  ``dL/dx = G @ Wn``;  ``dL/dW_k = D1_k - (Wn_k . D1_k) Wn_k`` where
    ``|W_k| > eps`` (the gradient of the norm), ``D1_k`` where the clamp is active."""

    @staticmethod
    def forward(ctx, x, w, eps):
        dtype = _compute_dtype(x, w)
        acc = torch.promote_types(w.dtype, torch.float32)  # norms and W / n in >= float32
        norm = w.detach().to(acc).norm(dim=1).clamp_min(eps)
        ctx.save_for_backward(x, w, norm)
        ctx.eps, ctx.dtype = eps, dtype
        xc = x.to(dtype)
        # the same product either way; divide whichever of the (K, bottleneck) matrix and the (tokens, K)
        # output is smaller
        if x.shape[0] > w.shape[1]:
            return F.linear(xc, (w.to(acc) / norm[:, None]).to(dtype))
        return F.linear(xc, w.to(dtype)) / norm.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        x, w, norm = ctx.saved_tensors
        dtype, acc = ctx.dtype, norm.dtype
        g, xc = grad.to(dtype), x.to(dtype)
        if x.shape[0] > w.shape[1]:  # many tokens: scale the (K, D) side
            wk, scale = w.to(acc) / norm[:, None], 1.0  # wk = Wn
            gx = g @ wk.to(dtype)
            d1 = (g.t() @ xc).to(acc).div_(norm[:, None])
        else:  # few tokens: scale the (tokens, K) side, no (K, D) temporary besides the gradient itself
            gs = g / norm.to(dtype)
            wk, scale = w, 1.0 / norm**2  # (Wn . D1) Wn == (W . D1) W / n^2
            gx = gs @ w.to(dtype)
            d1 = (gs.t() @ xc).to(acc)
        grad_x = gx.to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            wk = wk.to(acc)
            coef = torch.einsum("kd,kd->k", wk, d1) * scale
            coef = torch.where(norm > ctx.eps, coef, torch.zeros_like(coef))
            grad_w = d1.addcmul_(wk, coef[:, None], value=-1.0).to(w.dtype)
        return grad_x, grad_w, None


def normalized_linear(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x @ (weight / max(|weight_k|, eps))^T`` (cosine similarity to each row when ``x`` is unit-norm), exact
    value and gradient of that formula, computed without (K, D) or (tokens, K) autograd temporaries."""
    if x.dim() != 2:
        return normalized_linear(x.reshape(-1, x.shape[-1]), weight, eps).reshape(*x.shape[:-1], weight.shape[0])
    return _NormalizedLinear.apply(x, weight, eps)


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        last_layer_init: str = "pytorch_default",
        gain: str = "fixed",
    ):
        super().__init__()
        if nlayers < 1:
            raise ValueError("head nlayers must be >= 1")
        if last_layer_init not in ("pytorch_default", "trunc_normal"):
            raise ValueError(f"last_layer_init must be 'pytorch_default' or 'trunc_normal', got {last_layer_init!r}")
        if gain not in ("learned", "fixed"):
            raise ValueError(f"gain must be 'learned' or 'fixed', got {gain!r}")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        if last_layer_init == "pytorch_default":  # the order of DINOv2's code (and of its random draws)
            self.apply(self._init)
            self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        else:
            self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
            self.apply(self._init)
        # ``last_layer`` in the name: frozen with the prototypes for the first epoch, as DINOv2's weight_g
        self.last_layer_gain = nn.Parameter(torch.ones(out_dim)) if gain == "learned" else None

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        logits = normalized_linear(x, self.last_layer.weight, eps)
        if self.last_layer_gain is not None:
            logits = logits * self.last_layer_gain.to(logits.dtype)
        return logits

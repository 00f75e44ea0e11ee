"""KoLeo regulariser (Sablayrolles et al.): ``-mean_i log(min_{j != i} ||x_i - x_j||)`` on L2-normalised features.

``scope="global"`` gathers the features of all processes (with gradients), so the nearest neighbours are found
in the global batch and a run on W processes equals one on a W-times larger batch; ``"local"`` is DINOv2's
per-process version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_with_grad
from .precision import upcast


def koleo_loss(x: torch.Tensor, eps: float = 1e-8, scope: str = "global") -> torch.Tensor:
    if scope not in ("global", "local"):
        raise ValueError(f"koleo scope must be 'global' or 'local', got {scope!r}")
    if scope == "global":
        x = all_gather_with_grad(x)
    if x.shape[0] < 2:
        raise ValueError("KoLeo needs at least 2 samples per global crop (batch size >= 2, or set koleo weight 0)")
    x = F.normalize(upcast(x), dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nn_idx = sim.argmax(dim=1)
    dist = (x - x[nn_idx]).norm(dim=-1)
    return -torch.log(dist + eps).mean()

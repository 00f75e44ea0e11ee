"""The losses' working precision."""

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32; float32/float64 unchanged (losses are computed in >= fp32)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

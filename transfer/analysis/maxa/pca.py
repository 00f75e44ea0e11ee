"""The MAXA paper's feature picture (App. A.5): patch features projected on their first three principal
components (over all shown images), each scaled to [0, 1], shown as RGB beside the image."""

from __future__ import annotations

import torch


def pca_rgb(feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, H*W, D)`` features -> ``(N, 3, H, W)`` in [0, 1]: the top-3 principal components of all rows (centred),
    each min-max scaled over all images."""
    n, hw, d = feats.shape
    x = feats.reshape(-1, d).float()
    x = x - x.mean(dim=0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[: min(3, v.shape[0])].t()
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    lo, hi = proj.min(dim=0).values, proj.max(dim=0).values
    proj = (proj - lo) / (hi - lo).clamp(min=1e-8)
    return proj.reshape(n, grid[0], grid[1], 3).permute(0, 3, 1, 2)


def save_pca_figure(images: torch.Tensor, feats: torch.Tensor, grid: tuple[int, int], path: str, title: str) -> str:
    """A PNG of image / PCA-RGB pairs, one row per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = pca_rgb(feats, grid)
    fig, axes = plt.subplots(len(images), 2, figsize=(4, 2 * len(images)), squeeze=False)
    for row, (img, pc) in enumerate(zip(images, rgb)):
        axes[row, 0].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[row, 1].imshow(pc.permute(1, 2, 0).numpy(), interpolation="nearest")
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

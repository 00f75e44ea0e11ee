"""Attention statistics per layer (NMI, mean attention distance) and final-layer query maps (paper App. A).

Definitions (docs/protocols.md §4, following Park et al. 2023, ``naver-ai/cl-vs-mim``), for one head of one image:

- take the softmax attention ``(T, T)``, drop the CLS and register rows and columns and renormalise the rows:
  ``A`` ``(N, N)``, ``N`` patches (Park adds ``1e-8`` to ``A`` before renormalising; ``eps`` below, default the
  same);
- **NMI**: ``p(q) = 1/N``, ``p(k) = sum_q p(q) A[q, k]``, ``I = sum_q sum_k p(q) A[q, k] log(A[q, k] / p(k))``,
  ``H(Q) = log N``, ``H(K) = -sum_k p(k) log p(k)``, ``NMI = I / sqrt(H(Q) H(K))`` (``0 log 0 = 0``; NMI is 0 when
  the denominator is 0, i.e. ``N = 1`` or all attention on one key);
- **MAD** (pixels): ``patch_size * (1/N) sum_q sum_k A[q, k] ||grid(q) - grid(k)||_2`` with patch grid
  coordinates ``(row, col)`` in row-major token order.

Both are computed per head, then averaged over heads and images. Natural logarithms (NMI is base-independent).

All functions on attention tensors are pure and accept any leading batch dimensions ``(..., N, N)``.
:func:`attention_statistics` is the driver over a :class:`~transfer.analysis.backbones.BackboneAdapter` and images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_EPS = 1e-8


def strip_prefix(attn: torch.Tensor, num_prefix: int, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``(..., T, T)`` attention -> patch-only ``(..., N, N)`` with rows renormalised to sum to 1.

    Drops the first ``num_prefix`` rows and columns (CLS + registers), adds ``eps`` (Park et al.) and divides
    each row by its sum. A row with zero mass and ``eps = 0`` raises.
    """
    if attn.ndim < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected square attention (..., T, T), got {tuple(attn.shape)}")
    if not 0 <= num_prefix < attn.shape[-1]:
        raise ValueError(f"num_prefix={num_prefix} leaves no patch tokens in a {attn.shape[-1]}-token attention")
    a = attn[..., num_prefix:, num_prefix:].to(torch.float64)
    if eps:
        a = a + eps
    s = a.sum(-1, keepdim=True)
    if bool((s <= 0).any()):
        raise ValueError("an attention row has no mass on patch tokens; use eps > 0")
    return a / s


def attention_nmi(a: torch.Tensor) -> torch.Tensor:
    """Normalised mutual information ``I(Q;K) / sqrt(H(Q) H(K))`` of row-stochastic ``(..., N, N)`` attention."""
    a = a.to(torch.float64)
    n = a.shape[-1]
    pq = 1.0 / n
    pk = a.mean(dim=-2)  # (..., N): sum_q p(q) A[q, k]
    ratio = a / pk.unsqueeze(-2).clamp_min(torch.finfo(torch.float64).tiny)
    mi = pq * torch.special.xlogy(a, ratio).sum(dim=(-2, -1))
    hq = math.log(n)
    hk = -torch.special.xlogy(pk, pk).sum(-1)
    denom = torch.sqrt(hq * hk)
    return torch.where(denom > 0, mi / denom.clamp_min(1e-300), torch.zeros_like(mi))


def grid_coordinates(grid: tuple[int, int]) -> torch.Tensor:
    """``(N, 2)`` float64 ``(row, col)`` of each patch in row-major order."""
    gh, gw = int(grid[0]), int(grid[1])
    rr, cc = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1).to(torch.float64)


def patch_distances(grid: tuple[int, int], patch_size: float = 1.0) -> torch.Tensor:
    """``(N, N)`` Euclidean distances between patch positions, in pixels (``patch_size`` x grid units)."""
    xy = grid_coordinates(grid)
    return torch.cdist(xy, xy) * float(patch_size)


def mean_attention_distance(a: torch.Tensor, grid: tuple[int, int], patch_size: float) -> torch.Tensor:
    """``patch_size * mean_q sum_k A[q, k] ||grid(q) - grid(k)||`` for row-stochastic ``(..., N, N)``."""
    n = int(grid[0]) * int(grid[1])
    if a.shape[-1] != n or a.shape[-2] != n:
        raise ValueError(f"attention {tuple(a.shape)} does not match grid {tuple(grid)} ({n} patches)")
    d = patch_distances(grid, patch_size).to(a.device)
    return (a.to(torch.float64) * d).sum(-1).mean(-1)


def layer_statistics(
    attn: torch.Tensor, num_prefix: int, grid: tuple[int, int], patch_size: float, eps: float = DEFAULT_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image NMI and MAD of one layer: ``attn`` ``(B, H, T, T)`` -> two ``(B,)`` tensors (mean over heads)."""
    if attn.ndim != 4:
        raise ValueError(f"expected (B, H, T, T) attention, got {tuple(attn.shape)}")
    a = strip_prefix(attn, num_prefix, eps)
    return attention_nmi(a).mean(-1), mean_attention_distance(a, grid, patch_size).mean(-1)


def query_patch_index(query, image_hw: tuple[int, int], grid: tuple[int, int]) -> int:
    """Row-major patch index containing ``query`` ``(x, y)``; floats in [0, 1] are fractions of the image size."""
    x, y = query
    h, w = image_hw
    if isinstance(x, float) and isinstance(y, float) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
        x, y = x * w, y * h
    if not (0 <= x <= w and 0 <= y <= h):
        raise ValueError(f"query point {query} outside the {w}x{h} image")
    gh, gw = grid
    col = min(int(x * gw / w), gw - 1)
    row = min(int(y * gh / h), gh - 1)
    return row * gw + col


def query_attention_maps(
    attn: torch.Tensor, num_prefix: int, grid: tuple[int, int], query_indices: Sequence[int], eps: float = 0.0
) -> torch.Tensor:
    """Final-layer maps: ``attn`` ``(B, H, T, T)`` -> ``(B, Q, gh, gw)``, the head-averaged patch row of each query.

    Prefix columns are dropped and each head's row renormalised over patches before averaging (as for the
    statistics).
    """
    if attn.ndim != 4:
        raise ValueError(f"expected (B, H, T, T) attention, got {tuple(attn.shape)}")
    idx = torch.as_tensor(list(query_indices), dtype=torch.long, device=attn.device) + num_prefix
    rows = attn[:, :, idx, num_prefix:].to(torch.float64) + eps  # (B, H, Q, N): only the query rows
    rows = (rows / rows.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)).mean(1)  # (B, Q, N)
    return rows.reshape(rows.shape[0], rows.shape[1], int(grid[0]), int(grid[1])).float()


@torch.no_grad()
def attention_statistics(
    adapter,
    images: Iterable[torch.Tensor],
    batch_size: int = 1,
    eps: float = DEFAULT_EPS,
    progress: bool = True,
    desc: str = "attention",
) -> dict:
    """NMI and MAD per layer of ``adapter`` over ``images`` (``(3, H, W)`` tensors in [0, 1], all one size).

    Returns ``{"nmi": [depth floats], "mad": [...], "nmi_std": [...], "mad_std": [...], "num_images": n,
    "grid": (gh, gw), "patch_size": p}``; the std is over images (of the head means).
    """
    from tqdm import tqdm

    images = list(images)
    if not images:
        raise ValueError("attention_statistics needs at least one image")
    nmi = [[] for _ in range(adapter.depth)]
    mad = [[] for _ in range(adapter.depth)]
    grid = None
    bar = tqdm(total=len(images), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(images), batch_size):
        x = adapter.normalize(torch.stack(images[start : start + batch_size]))
        grid = adapter.grid(x.shape[-2], x.shape[-1])
        for layer, attn in enumerate(adapter.iter_attentions(x)):
            n, m = layer_statistics(attn, adapter.num_prefix, grid, adapter.patch_size, eps)
            nmi[layer] += n.tolist()
            mad[layer] += m.tolist()
        bar.update(x.shape[0])
    bar.close()
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {
        "nmi": [float(t(v).mean()) for v in nmi],
        "mad": [float(t(v).mean()) for v in mad],
        "nmi_std": [float(t(v).std(unbiased=False)) for v in nmi],
        "mad_std": [float(t(v).std(unbiased=False)) for v in mad],
        "num_images": len(images),
        "grid": tuple(grid),
        "patch_size": adapter.patch_size,
    }


@torch.no_grad()
def final_layer_maps(adapter, images: Sequence[torch.Tensor], queries: Sequence, batch_size: int = 1) -> torch.Tensor:
    """``(B, Q, H, W)`` head-averaged last-layer attention of each query point, upsampled to the image size.

    ``queries``: ``(x, y)`` points, floats in [0, 1] are fractions of the image, other values pixels.
    """
    out = []
    for start in range(0, len(images), batch_size):
        x = adapter.normalize(torch.stack(list(images[start : start + batch_size])))
        h, w = x.shape[-2:]
        grid = adapter.grid(h, w)
        idx = [query_patch_index(q, (h, w), grid) for q in queries]
        last = None
        for last in adapter.iter_attentions(x):  # noqa: B007 (the loop keeps the last block's attention)
            pass
        maps = query_attention_maps(last, adapter.num_prefix, grid, idx)
        gh, gw = grid
        maps = F.interpolate(maps, size=(gh * adapter.patch_size, gw * adapter.patch_size), mode="nearest")
        if maps.shape[-2:] != (h, w):
            maps = F.pad(maps, (0, w - maps.shape[-1], 0, h - maps.shape[-2]))
        out.append(maps)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# plots (matplotlib Agg)


def plot_statistics(stats_by_name: dict, path: str, title: str | None = None) -> None:
    """Two panels, NMI vs depth and MAD vs depth, one curve per checkpoint (paper Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, st in stats_by_name.items():
        layers = list(range(1, len(st["nmi"]) + 1))
        axes[0].plot(layers, st["nmi"], marker="o", label=name)
        axes[1].plot(layers, st["mad"], marker="o", label=name)
    axes[0].set_ylabel("normalized mutual information")
    axes[1].set_ylabel("mean attention distance (pixels)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer (block)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_query_maps(
    images: Sequence[torch.Tensor], maps: torch.Tensor, queries: Sequence, path: str, title: str | None = None
) -> None:
    """Grid of images (rows) x query points (columns): head-averaged final-layer attention over the image, with a
    red dot at the query (paper Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, q = maps.shape[0], maps.shape[1]
    fig, axes = plt.subplots(n, q + 1, figsize=(2.6 * (q + 1), 2.6 * n), squeeze=False)
    for i in range(n):
        img = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        h, w = img.shape[:2]
        axes[i][0].imshow(img)
        axes[i][0].set_title("image", fontsize=8)
        for j in range(q):
            ax = axes[i][j + 1]
            m = maps[i, j].numpy()
            m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
            ax.imshow(img)
            ax.imshow(m, cmap="jet", alpha=0.55, interpolation="nearest")
            x, y = queries[j]
            if isinstance(x, float) and isinstance(y, float) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
                x, y = x * w, y * h
            ax.scatter([x], [y], c="red", s=30, edgecolors="white", linewidths=0.8)
            ax.set_title(f"query ({queries[j][0]:g}, {queries[j][1]:g})", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# the tools/analyze_attention.py driver

DEFAULT_QUERIES = ((0.5, 0.5), (0.25, 0.3), (0.75, 0.7))


def run_attention_analysis(
    checkpoints: Sequence[str],
    images_dir: str,
    out_dir: str,
    size: int = 480,
    max_images: int | None = 16,
    queries: Sequence = DEFAULT_QUERIES,
    max_map_images: int = 4,
    batch_size: int = 1,
    eps: float = DEFAULT_EPS,
    progress: bool = True,
    **read_options,
) -> dict:
    """Statistics (CSV + plot) for every checkpoint and final-layer query maps (one PNG per checkpoint).

    Images are resized to ``size`` rounded down to a multiple of each checkpoint's patch size. Returns
    ``{"csv": path, "plot": path, "maps": {name: path}, "stats": {name: stats}}``.
    """
    import os

    from .backbones import _display_name, load_adapter, unique_names
    from .images import list_images, load_image

    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    files = list_images(images_dir, max_images)
    os.makedirs(out_dir, exist_ok=True)
    names = unique_names([_display_name(c) for c in checkpoints])
    stats, maps_paths = {}, {}
    cache: dict[int, list] = {}
    for ckpt, name in zip(checkpoints, names):
        adapter = load_adapter(ckpt, image_size=size, name=name, **read_options)
        side = max(adapter.patch_size, (size // adapter.patch_size) * adapter.patch_size)
        if side not in cache:
            cache[side] = [load_image(f, side) for f in files]
        imgs = cache[side]
        if progress:
            print(
                f"[{name}] depth {adapter.depth}, heads {adapter.num_heads}, patch {adapter.patch_size}, "
                f"{len(imgs)} images at {side}x{side} (grid {side // adapter.patch_size}^2)",
                flush=True,
            )
        stats[name] = attention_statistics(adapter, imgs, batch_size=batch_size, eps=eps, progress=progress, desc=name)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        maps_paths[name] = os.path.join(out_dir, f"attention_maps_{safe}.png")
        k = min(max_map_images, len(imgs))
        maps = final_layer_maps(adapter, imgs[:k], queries, batch_size=batch_size)
        plot_query_maps(imgs[:k], maps, queries, maps_paths[name], title=f"{name}: final-layer attention")
    csv_path = os.path.join(out_dir, "attention_stats.csv")
    write_statistics_csv(stats, csv_path)
    plot_path = os.path.join(out_dir, "attention_stats.png")
    plot_statistics(stats, plot_path, title=f"attention statistics ({len(files)} images, {size}px)")
    return {"csv": csv_path, "plot": plot_path, "maps": maps_paths, "stats": stats}


def write_statistics_csv(stats_by_name: dict, path: str) -> None:
    """``attention_stats.csv``: one row per checkpoint and layer (1-based)."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["checkpoint", "layer", "nmi", "mad", "nmi_std", "mad_std", "num_images", "grid_h", "grid_w"])
        for name, st in stats_by_name.items():
            for layer in range(len(st["nmi"])):
                w.writerow(
                    [
                        name,
                        layer + 1,
                        f"{st['nmi'][layer]:.6f}",
                        f"{st['mad'][layer]:.4f}",
                        f"{st['nmi_std'][layer]:.6f}",
                        f"{st['mad_std'][layer]:.4f}",
                        st["num_images"],
                        *st["grid"],
                    ]
                )


def attention_report(
    checkpoints: Sequence[str],
    images: str,
    out: str,
    size: int = 480,
    batch_size: int = 1,
    max_images: int = 16,
    queries: Sequence | None = None,
    map_images: int = 4,
    **options,
) -> list[str]:
    """``tools/analyze_attention.py``: check the arguments, run :func:`run_attention_analysis` (``max_images=0``:
    all images; ``queries=None``: :data:`DEFAULT_QUERIES`; ``options``: ``progress`` and the converter's read
    options) and return the lines to print (the NMI/MAD table and the files written)."""
    if size < 1 or batch_size < 1:
        raise ValueError("--size and --batch-size must be positive")
    res = run_attention_analysis(
        checkpoints,
        images,
        out,
        size=size,
        max_images=max_images or None,
        queries=queries or DEFAULT_QUERIES,
        max_map_images=map_images,
        batch_size=batch_size,
        **options,
    )
    import os

    from .records import record_attention

    setting = dict(images=os.path.abspath(images), size=size, max_images=max_images, queries=queries)
    record_attention(checkpoints, res["stats"], setting, out)
    lines = [f"{'checkpoint':<24} {'layer':>5} {'NMI':>8} {'MAD(px)':>9}"]
    for name, st in res["stats"].items():
        for i, (n, m) in enumerate(zip(st["nmi"], st["mad"])):
            lines.append(f"{name:<24} {i + 1:>5} {n:>8.4f} {m:>9.2f}")
    return lines + [f"wrote {path}" for path in (res["csv"], res["plot"], *res["maps"].values())]

"""Position-prediction accuracy for backbones with a [POSMASK] token: a head-free proxy of DropPos's metric.

DropPos (its Table 7) reports the top-1 accuracy of its position head (a 2-layer decoder classifying
each position-masked patch into one of the N grid positions) over a grid of content mask ratios gamma and position
mask ratios gamma_pos. Our exported backbones keep ``posmask_token`` but not the position head, so this module
measures the same ability **without a head**:

1. for each image, a reference forward with nothing masked gives output patch tokens ``R`` ``(N, D)``;
2. a random subset of ``round(gamma * N)`` patches gets its content replaced by [MASK] (position kept; the model's
   ``content_mask``), and a disjoint random subset of ``round(gamma_pos * (N - #content-masked))`` of the
   remaining patches gets its position replaced by [POSMASK] (content kept; ``pos_mask``), as DropPos draws the
   position mask among the visible patches;
3. each position-masked patch's output token is matched against all ``N`` reference tokens (cosine similarity,
   excluding nothing); the argmax is its predicted grid location.

``reference="position"`` (an option, not the default) matches instead against *position templates*: the output
tokens of a forward in which every patch's content is [MASK] (positions kept), so that a match has to come from
position information the model recovered for the patch, not from the patch's own content. With the default
``"unmasked"`` reference a patch can be found again from its content alone, so high numbers are possible even for
a random-weight model on images whose patches differ; compare with ``--random-init`` before reading much into them.

Reported: **top-1** (predicted exactly at the right patch) and **within-1** (Chebyshev distance <= 1 on the grid,
the patch or one of its 8 neighbours), with the number of predictions and chance level ``1/N``.

Differences to DropPos, by construction: no trained decoder (the proxy says how much position information survives
in the frozen output token, measured by similarity to the unmasked forward); content-masked patches stay in the
sequence as [MASK] tokens (DropPos removes them, MAE style); masks are uniformly random, not the training-time
cross/box shapes. A cell with nothing to predict (``gamma_pos = 0`` or everything content-masked) reports NaN
accuracy and 0 predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

DEFAULT_CONTENT_RATIOS = (0.0, 0.25, 0.5)
DEFAULT_POS_RATIOS = (0.25, 0.5, 0.75)


def sample_masks(
    batch: int, num_patches: int, content_ratio: float, pos_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint random ``(content_mask, pos_mask)``, bool ``(B, N)``, per image.

    ``round(content_ratio * N)`` content-masked patches; ``round(pos_ratio * visible)`` position-masked patches
    among the ``visible = N - #content`` others.
    """
    for name, r in (("content_ratio", content_ratio), ("pos_ratio", pos_ratio)):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {r}")
    n_content = int(round(content_ratio * num_patches))
    n_pos = int(round(pos_ratio * (num_patches - n_content)))
    content = torch.zeros(batch, num_patches, dtype=torch.bool)
    pos = torch.zeros(batch, num_patches, dtype=torch.bool)
    for b in range(batch):
        perm = torch.randperm(num_patches, generator=generator)
        content[b, perm[:n_content]] = True
        pos[b, perm[n_content : n_content + n_pos]] = True
    return content, pos


def grid_rc(index: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major patch index -> (row, col)."""
    return index // int(grid[1]), index % int(grid[1])


def match_positions(
    masked_tokens: torch.Tensor, ref_tokens: torch.Tensor, pos_mask: torch.Tensor, grid: tuple[int, int]
) -> dict:
    """Predict the location of every position-masked patch by its most similar reference token.

    ``masked_tokens`` / ``ref_tokens``: ``(B, N, D)`` outputs of the masked and of the unmasked forward;
    ``pos_mask``: bool ``(B, N)``. Returns ``target``, ``pred`` (``(M,)`` patch indices), ``correct``, ``within1``
    (bool ``(M,)``), ``distance`` (Chebyshev, in patches) and the counts ``num``, ``top1``, ``within1_count``.
    """
    if masked_tokens.shape != ref_tokens.shape or masked_tokens.ndim != 3:
        raise ValueError(f"token shapes differ or are not (B, N, D): {masked_tokens.shape} vs {ref_tokens.shape}")
    b, n, _ = ref_tokens.shape
    if pos_mask.shape != (b, n):
        raise ValueError(f"pos_mask {tuple(pos_mask.shape)} does not match tokens {(b, n)}")
    if int(grid[0]) * int(grid[1]) != n:
        raise ValueError(f"grid {tuple(grid)} does not have {n} patches")
    sim = F.normalize(masked_tokens.float(), dim=-1) @ F.normalize(ref_tokens.float(), dim=-1).transpose(1, 2)
    pred_all = sim.argmax(-1)  # (B, N)
    bi, target = pos_mask.nonzero(as_tuple=True)
    pred = pred_all[bi, target]
    tr, tc = grid_rc(target, grid)
    pr, pc = grid_rc(pred, grid)
    dist = torch.maximum((tr - pr).abs(), (tc - pc).abs())
    correct, within1 = dist == 0, dist <= 1
    return {
        "target": target,
        "pred": pred,
        "distance": dist,
        "correct": correct,
        "within1": within1,
        "num": int(target.numel()),
        "top1": int(correct.sum()),
        "within1_count": int(within1.sum()),
    }


@dataclass
class PositionCell:
    """Accuracy for one (content ratio, position ratio) setting."""

    content_ratio: float
    pos_ratio: float
    top1: float
    within1: float
    num_predictions: int
    chance: float

    def row(self) -> dict:
        return asdict(self)


@torch.no_grad()
def position_accuracy(
    adapter,
    images: torch.Tensor,
    content_ratios: Sequence[float] = DEFAULT_CONTENT_RATIOS,
    pos_ratios: Sequence[float] = DEFAULT_POS_RATIOS,
    repeats: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    reference: str = "unmasked",
) -> list[PositionCell]:
    """The gamma x gamma_pos grid on ``images`` ``(B, 3, H, W)`` in [0, 1]; ``repeats`` random draws per image.

    ``adapter`` needs ``normalize``, ``grid`` and ``forward_masked(x, content_mask, pos_mask) -> (B, N, D)``
    (:class:`~transfer.analysis.backbones.OursAdapter` has them). ``reference``: ``"unmasked"`` (the tokens of
    the unmasked forward) or ``"position"`` (position templates: every patch's content masked).
    """
    from tqdm import tqdm

    if not getattr(adapter, "supports_masks", False):
        raise ValueError(
            f"{getattr(adapter, 'name', 'backbone')}: no [POSMASK] token; the position probe needs one of our "
            "backbones (pretrain.models.VisionTransformer)"
        )
    if reference not in ("unmasked", "position"):
        raise ValueError(f"reference must be 'unmasked' or 'position', got {reference!r}")
    gen = torch.Generator().manual_seed(seed)
    counts = {(c, p): [0, 0, 0] for c in content_ratios for p in pos_ratios}  # predictions, top-1, within-1
    grid = None
    steps = math.ceil(images.shape[0] / batch_size)
    bar = tqdm(total=steps * repeats * len(counts), desc="position", disable=not progress, leave=False)
    for s in range(0, images.shape[0], batch_size):
        x = adapter.normalize(images[s : s + batch_size])
        grid = adapter.grid(x.shape[-2], x.shape[-1])
        _count_batch(adapter, x, grid, counts, repeats, reference, gen, bar)
    bar.close()
    return [
        PositionCell(
            content_ratio=float(c),
            pos_ratio=float(p),
            top1=top1 / num if num else math.nan,
            within1=w1 / num if num else math.nan,
            num_predictions=num,
            chance=1.0 / (grid[0] * grid[1]),
        )
        for (c, p), (num, top1, w1) in counts.items()
    ]


def _count_batch(adapter, x: torch.Tensor, grid, counts: dict, repeats: int, reference: str, gen, bar) -> None:
    """Add one batch's predictions, top-1 and within-1 hits to ``counts[(content ratio, position ratio)]``."""
    n = grid[0] * grid[1]
    if reference == "unmasked":
        ref = adapter.forward_masked(x)
    else:
        ref = adapter.forward_masked(x, content_mask=torch.ones(x.shape[0], n, dtype=torch.bool))
    for _ in range(repeats):
        for (c, p), acc in counts.items():
            cm, pm = sample_masks(x.shape[0], n, c, p, gen)
            if pm.any():
                out = adapter.forward_masked(x, content_mask=cm if cm.any() else None, pos_mask=pm)
                m = match_positions(out, ref, pm, grid)
                acc[0] += m["num"]
                acc[1] += m["top1"]
                acc[2] += m["within1_count"]
            bar.update(1)


def mean_over_cells(cells: Sequence[PositionCell], key: str = "top1") -> float:
    """Average of ``key`` over the cells that had predictions (DropPos averages its 16 settings)."""
    vals = [getattr(c, key) for c in cells if c.num_predictions]
    return sum(vals) / len(vals) if vals else math.nan


def write_tables(cells: Sequence[PositionCell], out_dir: str, prefix: str = "position") -> dict:
    """``<prefix>_top1.csv`` / ``<prefix>_within1.csv`` (rows content ratio, columns position ratio) and the long
    form ``<prefix>_results.csv``. NaN cells (nothing to predict) are written as ``nan``."""
    import csv
    import os

    os.makedirs(out_dir, exist_ok=True)
    cs = sorted({c.content_ratio for c in cells})
    ps = sorted({c.pos_ratio for c in cells})
    by = {(c.content_ratio, c.pos_ratio): c for c in cells}
    paths = {}
    for key in ("top1", "within1"):
        path = os.path.join(out_dir, f"{prefix}_{key}.csv")
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["content_ratio \\ pos_ratio"] + [f"{p:g}" for p in ps])
            for c in cs:
                w.writerow([f"{c:g}"] + [f"{getattr(by[(c, p)], key):.4f}" for p in ps])
        paths[key] = path
    path = os.path.join(out_dir, f"{prefix}_results.csv")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cells[0].row()))
        w.writeheader()
        w.writerows(c.row() for c in cells)
    paths["long"] = path
    return paths


def format_grid(cells: Sequence[PositionCell], key: str = "top1") -> str:
    """Text table, rows content ratio, columns position ratio."""
    cs = sorted({c.content_ratio for c in cells})
    ps = sorted({c.pos_ratio for c in cells})
    by = {(c.content_ratio, c.pos_ratio): c for c in cells}
    lines = [f"{key:<10}" + "".join(f"{'pos ' + format(p, 'g'):>10}" for p in ps)]
    for c in cs:
        lines.append(f"{'mask ' + format(c, 'g'):<10}" + "".join(f"{getattr(by[(c, p)], key):>10.4f}" for p in ps))
    return "\n".join(lines)


def position_report(
    checkpoint: str,
    images: str,
    out: str,
    size: int = 224,
    max_images: int = 64,
    content_ratios: Sequence[float] = DEFAULT_CONTENT_RATIOS,
    pos_ratios: Sequence[float] = DEFAULT_POS_RATIOS,
    repeats: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    reference: str = "unmasked",
    random_init: bool = False,
    progress: bool = True,
) -> list[str]:
    """``tools/probe_position.py``: check the arguments, load ``checkpoint`` (or its architecture at random init),
    run :func:`position_accuracy` on the first ``max_images`` images (0: all) of the folder ``images``, write the
    tables under ``out`` and return the lines to print."""
    from .backbones import AdapterError, load_adapter
    from .images import list_images, load_image

    if size < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("--size, --batch-size and --repeats must be positive")
    adapter = load_adapter(checkpoint, image_size=size, random_init=random_init, seed=seed)
    if not adapter.supports_masks:
        raise AdapterError(f"{checkpoint}: no [POSMASK] token (only our own backbones have one); nothing to measure")
    side = max(adapter.patch_size, (size // adapter.patch_size) * adapter.patch_size)
    files = list_images(images, max_images or None)
    batch = torch.stack([load_image(f, side) for f in files])
    cells = position_accuracy(
        adapter,
        batch,
        content_ratios,
        pos_ratios,
        repeats=repeats,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        reference=reference,
    )
    paths = write_tables(cells, out)
    g = side // adapter.patch_size
    return [
        f"{adapter.name}{' (random init)' if random_init else ''}: {len(files)} images at {side}px, "
        f"grid {g}x{g}, reference {reference}, chance {1.0 / (g * g):.4f}",
        format_grid(cells, "top1"),
        format_grid(cells, "within1"),
        f"mean top-1 over cells {mean_over_cells(cells, 'top1'):.4f}, within-1 {mean_over_cells(cells, 'within1'):.4f}",
    ] + [f"wrote {path}" for path in paths.values()]

"""DropPos's position accuracy for any checkpoint: its 4 x 4 pretext grid (§4.1) and its linear probe (Table 7).

**Masks** (the official ``random_masking``, applied twice; :func:`draw_masks`): per image, ``argsort`` of uniform
noise over the ``N`` patches keeps the first ``K = int(N * (1 - gamma))`` (the visible patches, in that shuffled
order; the others are removed from the sequence, MAE style); the same over the ``K`` visible ones keeps
``int(K * (1 - gamma_pos))`` *anchors* with their position embedding, and every other visible patch is
*position-dropped*: its position embedding is replaced (:class:`MaskedEncoder`) by

- ``own``: the backbone's own [POSMASK] token (our ``VisionTransformer.posmask_token``; default when it has one);
- ``learned``: a token trained with the linear probe (default for backbones without one, e.g. timm / DINOv2 / MAE);
- ``zeros``: nothing (the official ``mask_token_type='zeros'``);
- ``wrong_pos``: the positions of the dropped patches, shuffled among them (the official ``'wrong_pos'``; used
  when a DropPos head was trained that way).

The sequence ``[prefix tokens with their positions, visible patches]`` runs through the frozen blocks and the final
norm; a **predictor** maps it to logits ``(B, K, N)`` over the grid positions of the visible patches:
:class:`LinearPositionProbe` (``nn.Linear(D, N)``, trained by :func:`train_linear_probe` with plain cross-entropy
on the dropped patches at ``gamma = 0``, ``gamma_pos = 0.75``, as in Table 7) or :class:`OwnHead` (a checkpoint's
own position head, e.g. the DropPos decoder exported as ``droppos_head.pth`` beside ``backbone.pth``).

**Metric** (:func:`evaluate_grid`): per ``(gamma, gamma_pos)`` cell, the top-1 accuracy of the arg-max position over
all position-dropped patches of all images (pooled, as the official ``acc1``), with chance ``1 / N``; the anchors'
accuracy is reported beside it. Masks come from a ``torch.Generator`` seeded with ``seed``, so runs repeat.
The head-free proxy of :mod:`transfer.analysis.position` stays available (``tools/probe_position.py --proxy``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.methods.droppos import draw_masks, wrong_position_sources

from .backbones import AdapterError

GAMMAS = (0.0, 0.25, 0.5, 0.75)
GAMMA_POS = (0.25, 0.5, 0.75, 0.95)
TRAIN_GAMMA, TRAIN_GAMMA_POS = 0.0, 0.75
MASK_TOKENS = ("own", "learned", "zeros", "wrong_pos")
HEAD_FILE = "droppos_head.pth"
#: ``mask_token_type`` of a DropPos head -> the replacement this module uses for it.
HEAD_MASK_TOKENS = {"param": "own", "zeros": "zeros", "wrong_pos": "wrong_pos"}
MASK_TOKEN_TEXT = {
    "own": "the backbone's own [POSMASK] token",
    "learned": "a learned token (trained with the probe)",
    "zeros": "zeros (no position)",
    "wrong_pos": "wrong positions (the dropped ones, shuffled among them)",
}


# ------------------------------------------------------------------------------------------- masks
# visible_count, anchor_count and draw_masks are the DropPos method's own (the official masking; docs/droppos.md)


def shuffled_among_dropped(pos: torch.Tensor, dropped: torch.Tensor, generator=None) -> torch.Tensor:
    """``pos`` ``(B, K, D)`` with the rows of each image's dropped slots permuted at random among themselves."""
    src = wrong_position_sources(dropped, generator).to(pos.device)
    return pos.gather(1, src[..., None].expand(-1, -1, pos.shape[-1]))


# ------------------------------------------------------------------------------------------- the masked forward
class MaskedEncoder(nn.Module):
    """A frozen :class:`~transfer.analysis.backbones.BackboneAdapter` run on the visible patches, with the dropped
    positions replaced as ``mask_token`` says (``None``: ``own`` when the backbone has a [POSMASK] token, else
    ``learned``). Its only parameter is the learned token, if any (normal(0.02), seeded)."""

    def __init__(self, adapter, mask_token: str | None = None, seed: int = 0):
        super().__init__()
        own = adapter.position_mask_token
        mode = mask_token or ("own" if own is not None else "learned")
        if mode not in MASK_TOKENS:
            raise ValueError(f"mask token must be one of {MASK_TOKENS}, got {mode!r}")
        if mode == "own" and own is None:
            raise AdapterError(f"{adapter.name}: no [POSMASK] token of its own; use 'learned' or 'zeros'")
        self.adapter, self.mode = adapter, mode
        self.token = None
        if mode == "learned":
            g = torch.Generator().manual_seed(seed)
            self.token = nn.Parameter(torch.randn(adapter.embed_dim, generator=g) * 0.02)

    @property
    def trainable(self) -> bool:
        return self.token is not None

    def describe(self) -> str:
        return f"{self.mode}: {MASK_TOKEN_TEXT[self.mode]}"

    def replacement(self, pos: torch.Tensor, dropped: torch.Tensor, generator=None) -> torch.Tensor:
        """What the dropped slots of ``pos`` ``(B, K, D)`` get: a ``(D,)`` token or ``(B, K, D)`` positions."""
        if self.mode == "own":
            return self.adapter.position_mask_token.to(pos.dtype)
        if self.mode == "learned":
            return self.token.to(pos.dtype)
        if self.mode == "zeros":
            return pos.new_zeros(pos.shape[-1])
        return shuffled_among_dropped(pos, dropped, generator)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor, dropped: torch.Tensor, generator=None):
        """Normalised images ``(B, 3, H, W)`` -> final-normed ``(B, P + K, D)``: prefix tokens, then the visible
        patches in the order of ``ids_keep`` (content + position, or + the replacement where ``dropped``)."""
        parts = self.adapter.embed_parts(x)
        b, _, d = parts.content.shape
        idx = ids_keep.to(x.device)[..., None].expand(-1, -1, d)
        content = parts.content.gather(1, idx)
        pos = parts.pos.expand(b, -1, -1).gather(1, idx)
        drop = dropped.to(x.device)[..., None]
        pos = torch.where(drop, self.replacement(pos, dropped, generator), pos)
        return self.adapter.encode_sequence(torch.cat([parts.prefix, content + pos], dim=1))


# ------------------------------------------------------------------------------------------- predictors
class LinearPositionProbe(nn.Module):
    """DropPos Table 7's head: ``nn.Linear(D, N)`` on every visible patch token (the ``num_prefix`` prefix tokens
    of the sequence are skipped)."""

    def __init__(self, dim: int, num_positions: int, num_prefix: int):
        super().__init__()
        self.num_prefix, self.num_positions = int(num_prefix), int(num_positions)
        self.fc = nn.Linear(dim, num_positions)
        self.name = "linear probe"

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.fc(seq[:, self.num_prefix :])


class OwnHead(nn.Module):
    """A checkpoint's own position head as a predictor: ``module`` maps the encoder's final-normed visible tokens to
    logits over the ``num_positions`` grid positions. ``with_prefix=False``: ``module`` gets the patch tokens
    ``(B, K, D)`` and returns ``(B, K, N)``; ``with_prefix=True`` (DropPos's decoder, which attends to CLS): it gets
    the whole sequence ``(B, P + K, D)`` and its ``P`` prefix rows are dropped from the output."""

    def __init__(self, module: nn.Module, num_positions: int, num_prefix: int, with_prefix=False, name="own head"):
        super().__init__()
        self.module = module.eval()
        self.num_positions, self.num_prefix, self.with_prefix = int(num_positions), int(num_prefix), with_prefix
        self.name = name

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix
        out = self.module(seq)[:, p:] if self.with_prefix else self.module(seq[:, p:])
        if out.shape[:2] != (seq.shape[0], seq.shape[1] - p) or out.shape[-1] != self.num_positions:
            raise AdapterError(
                f"{self.name}: logits {tuple(out.shape)} for {seq.shape[1] - p} tokens, expected "
                f"(B, {seq.shape[1] - p}, {self.num_positions})"
            )
        return out


def load_own_head(path: str, adapter) -> tuple[OwnHead, dict]:
    """The DropPos position decoder in ``path`` (``droppos_head.pth``, :func:`pretrain.methods.droppos.
    load_droppos_head`) as an :class:`OwnHead` over ``adapter``'s tokens, with the head's metadata."""
    try:
        from pretrain.methods.droppos import load_droppos_head
    except ImportError as e:
        raise AdapterError(f"{path}: reading a DropPos head needs pretrain.methods.droppos ({e})") from None
    decoder, meta = load_droppos_head(path)
    if int(meta["embed_dim"]) != adapter.embed_dim or int(meta.get("prefix_tokens", 1)) != adapter.num_prefix:
        raise AdapterError(
            f"{path}: head for {meta['embed_dim']}-d tokens with {meta.get('prefix_tokens')} prefix tokens, backbone "
            f"has {adapter.embed_dim}-d with {adapter.num_prefix}"
        )
    name = f"own head ({os.path.basename(path)})"
    return OwnHead(decoder, meta["num_positions"], adapter.num_prefix, with_prefix=True, name=name), meta


# ------------------------------------------------------------------------------------------- the grid
@dataclass
class AccuracyCell:
    """Top-1 position accuracy of the dropped patches (and of the anchors) for one ``(gamma, gamma_pos)``."""

    gamma: float
    gamma_pos: float
    top1: float
    anchor_top1: float
    num_dropped: int
    num_anchors: int
    chance: float

    def row(self) -> dict:
        return asdict(self)


def count_hits(logits: torch.Tensor, ids_keep: torch.Tensor, dropped: torch.Tensor) -> tuple[int, int, int, int]:
    """``(hits on dropped, #dropped, hits on anchors, #anchors)`` of the arg-max of ``logits`` ``(B, K, N)``."""
    hit = logits.argmax(-1).cpu() == ids_keep
    return int((hit & dropped).sum()), int(dropped.sum()), int((hit & ~dropped).sum()), int((~dropped).sum())


def _frac(hits: int, num: int) -> float:
    return hits / num if num else math.nan


@torch.no_grad()
def evaluate_grid(
    encoder: MaskedEncoder,
    predictor: nn.Module,
    images: torch.Tensor,
    gammas: Sequence[float] = GAMMAS,
    gamma_pos: Sequence[float] = GAMMA_POS,
    batch_size: int = 16,
    seed: int = 0,
) -> list[AccuracyCell]:
    """The ``gammas x gamma_pos`` cells (row-major) on ``images`` ``(B, 3, H, W)`` in [0, 1]: one mask draw per
    image and cell from ``torch.Generator().manual_seed(seed)``, cells in order, batches in order."""
    adapter = encoder.adapter
    x_all = adapter.normalize(images)
    grid = adapter.grid(x_all.shape[-2], x_all.shape[-1])
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    predictor.eval()
    cells = []
    for g in gammas:
        for gp in gamma_pos:
            c = [0, 0, 0, 0]
            for s in range(0, x_all.shape[0], batch_size):
                x = x_all[s : s + batch_size]
                ids_keep, dropped = draw_masks(x.shape[0], n, g, gp, gen)
                logits = predictor(encoder(x, ids_keep, dropped, gen))
                c = [a + b for a, b in zip(c, count_hits(logits, ids_keep, dropped))]
            cells.append(AccuracyCell(float(g), float(gp), _frac(c[0], c[1]), _frac(c[2], c[3]), c[1], c[3], 1.0 / n))
    return cells


def mean_top1(cells: Sequence[AccuracyCell], key: str = "top1") -> float:
    """Average of ``key`` over the cells that have something to predict (DropPos averages its 16 cells)."""
    vals = [getattr(c, key) for c in cells if not math.isnan(getattr(c, key))]
    return sum(vals) / len(vals) if vals else math.nan


# ------------------------------------------------------------------------------------------- the probe
def train_linear_probe(
    encoder: MaskedEncoder,
    images: torch.Tensor,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 1,
    progress: bool = True,
) -> tuple[LinearPositionProbe, list[dict]]:
    """Train a :class:`LinearPositionProbe` (and ``encoder``'s learned token, if any) with AdamW and plain
    cross-entropy on the position-dropped patches, masks at ``TRAIN_GAMMA`` / ``TRAIN_GAMMA_POS`` drawn anew every
    epoch from ``torch.Generator().manual_seed(seed)``. Returns the probe (eval mode) and one
    ``{epoch, loss, top1}`` per epoch (training-batch averages; printed to stderr with ``progress``)."""
    adapter = encoder.adapter
    x_all = adapter.normalize(images)
    grid = adapter.grid(x_all.shape[-2], x_all.shape[-1])
    n = grid[0] * grid[1]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = LinearPositionProbe(adapter.embed_dim, n, adapter.num_prefix).to(x_all.device)
    opt = torch.optim.AdamW([*probe.parameters(), *encoder.parameters()], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(x_all.shape[0], generator=gen)
        tot = [0.0, 0, 0]  # loss * dropped, hits, dropped
        for s in range(0, len(order), batch_size):
            x = x_all[order[s : s + batch_size].to(x_all.device)]
            ids_keep, dropped = draw_masks(x.shape[0], n, TRAIN_GAMMA, TRAIN_GAMMA_POS, gen)
            with torch.set_grad_enabled(encoder.trainable):
                seq = encoder(x, ids_keep, dropped, gen)
            logits = probe(seq)[dropped.to(x.device)]
            target = ids_keep[dropped].to(x.device)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot[0] += float(loss.detach()) * len(target)
            tot[1] += int((logits.argmax(-1) == target).sum())
            tot[2] += len(target)
        history.append({"epoch": epoch + 1, "loss": tot[0] / max(tot[2], 1), "top1": tot[1] / max(tot[2], 1)})
        if progress:
            h = history[-1]
            print(
                f"[probe_position] probe epoch {h['epoch']}/{epochs}: loss {h['loss']:.4f}, train top-1 "
                f"{h['top1']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    return probe.eval(), history


# ------------------------------------------------------------------------------------------- tables
def _grid_values(cells: Sequence[AccuracyCell], key: str) -> tuple[list[float], list[float], list[list[float]]]:
    gs = sorted({c.gamma for c in cells})
    ps = sorted({c.gamma_pos for c in cells})
    by = {(c.gamma, c.gamma_pos): c for c in cells}
    return gs, ps, [[getattr(by[(g, p)], key) for p in ps] for g in gs]


def format_grid(cells: Sequence[AccuracyCell], key: str = "top1") -> str:
    """Text table of ``key``, rows gamma, columns gamma_pos, with the mean over cells below."""
    gs, ps, vals = _grid_values(cells, key)
    lines = [f"{'gamma':<8}" + "".join(f"{'pos ' + format(p, 'g'):>10}" for p in ps)]
    lines += [f"{g:<8g}" + "".join(f"{v:>10.4f}" for v in row) for g, row in zip(gs, vals)]
    return "\n".join(lines)


def write_outputs(cells: Sequence[AccuracyCell], out_dir: str, info: dict) -> dict:
    """``position_accuracy.csv`` (top-1 grid, rows gamma, columns gamma_pos), ``position_accuracy_cells.csv`` (one
    row per cell) and ``position_accuracy.json`` (``info`` + the grids and their means; NaN as null)."""
    import csv

    os.makedirs(out_dir, exist_ok=True)
    gs, ps, top1 = _grid_values(cells, "top1")
    paths = {"grid": os.path.join(out_dir, "position_accuracy.csv")}
    with open(paths["grid"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gamma \\ gamma_pos"] + [f"{p:g}" for p in ps])
        w.writerows([f"{g:g}"] + [f"{v:.4f}" for v in row] for g, row in zip(gs, top1))
    paths["cells"] = os.path.join(out_dir, "position_accuracy_cells.csv")
    with open(paths["cells"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cells[0].row()))
        w.writeheader()
        w.writerows(c.row() for c in cells)

    def nan_none(v):
        return [nan_none(u) for u in v] if isinstance(v, list) else (None if math.isnan(v) else v)

    data = dict(info, gammas=gs, gamma_pos=ps, top1=nan_none(top1), mean_top1=nan_none(mean_top1(cells)))
    data.update(anchor_top1=nan_none(_grid_values(cells, "anchor_top1")[2]))
    data.update(mean_anchor_top1=nan_none(mean_top1(cells, "anchor_top1")))
    paths["json"] = os.path.join(out_dir, "position_accuracy.json")
    with open(paths["json"], "w") as fh:
        json.dump(data, fh, indent=2)
    from .records import record_position  # the results database (docs/evaluation.md); never raises

    record_position(info.get("checkpoint"), paths["json"], out_dir)
    return paths


# ------------------------------------------------------------------------------------------- the report
def find_own_head(checkpoint: str, head: str | None, random_init: bool = False) -> str | None:
    """The head file to use: ``head`` a path (must exist); ``"none"``: none; ``None`` / ``"auto"``:
    ``droppos_head.pth`` beside ``checkpoint`` if there is one (not with ``random_init``)."""
    if head == "none":
        return None
    if head not in (None, "auto"):
        if not os.path.isfile(head):
            raise FileNotFoundError(f"head file not found: {head}")
        return head
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), HEAD_FILE)
    return beside if os.path.isfile(beside) and not random_init else None


def _load_images(folder: str, side: int, max_images: int) -> tuple[torch.Tensor, int]:
    from .images import list_images, load_image

    files = list_images(folder, max_images or None)
    return torch.stack([load_image(f, side) for f in files]), len(files)


def _eval_side(adapter, size: int | None, head_meta: dict | None) -> int:
    """Input side: ``size`` rounded down to a patch multiple, else the head's training grid, else 224."""
    p = adapter.patch_size
    if size is None:
        size = int(head_meta["grid"][0]) * p if head_meta else 224
    side = max(p, (int(size) // p) * p)
    if head_meta and [side // p, side // p] != [int(g) for g in head_meta["grid"]]:
        raise AdapterError(
            f"the own head classifies a {head_meta['grid'][0]}x{head_meta['grid'][1]} grid; evaluate at "
            f"--size {int(head_meta['grid'][0]) * p} (or --head none for a linear probe)"
        )
    return side


def _train_probe(adapter, mask_token, side, opts: dict) -> tuple[nn.Module, MaskedEncoder, dict]:
    """A linear probe trained on ``opts["train_images"]`` (default: the evaluation folder) with mask seed
    ``seed + 1``; returns it, its encoder and what the report says about it."""
    seed = opts["seed"]
    encoder = MaskedEncoder(adapter, mask_token, seed=seed + 1)
    train_dir = opts["train_images"] or opts["images"]
    train, n_train = _load_images(train_dir, side, opts["max_train_images"])
    epochs, lr = opts["probe_epochs"], opts["probe_lr"]
    probe, history = train_linear_probe(encoder, train, epochs, opts["batch_size"], lr, 0.0, seed + 1, opts["progress"])
    same = "" if opts["train_images"] else ", the evaluation folder"
    text = (
        f"linear probe (AdamW lr {lr:g}, {epochs} epochs on {n_train} images of {train_dir}{same}, "
        f"gamma {TRAIN_GAMMA:g}, gamma_pos {TRAIN_GAMMA_POS:g}, mask seed {seed + 1})"
    )
    info = {"predictor": text, "train_images": os.path.abspath(train_dir), "num_train_images": n_train}
    if not opts["train_images"]:
        info["note"] = (
            "the probe was trained on the evaluation images (other masks), so what it memorised of their content "
            "counts too; pass --train-images DIR for held-out numbers"
        )
    return probe, encoder, dict(info, probe_epochs=epochs, probe_lr=lr, probe_history=history)


def accuracy_report(
    checkpoint: str,
    images: str,
    out: str,
    train_images: str | None = None,
    size: int | None = None,
    max_images: int = 64,
    max_train_images: int = 256,
    mask_token: str | None = None,
    head: str | None = "auto",
    content_ratios: Sequence[float] | None = None,
    pos_ratios: Sequence[float] | None = None,
    batch_size: int = 16,
    probe_epochs: int = 10,
    probe_lr: float = 1e-2,
    seed: int = 0,
    random_init: bool = False,
    progress: bool = True,
    **read_options,
) -> list[str]:
    """``tools/probe_position.py``: load ``checkpoint`` (any format :func:`~transfer.analysis.backbones.load_adapter`
    reads; its architecture at random init with ``random_init``), pick the predictor (the own head of
    :func:`find_own_head`, else a linear probe trained on ``train_images`` or ``images``), evaluate the
    ``content_ratios x pos_ratios`` grid (default DropPos's 4 x 4) on the first ``max_images`` images (0: all) with
    masks seeded by ``seed``, write the tables under ``out`` and return the lines to print."""
    from .backbones import load_adapter

    if min(batch_size, probe_epochs, max_train_images, max_images or 1) < 1 or (size is not None and size < 1):
        raise ValueError("--size, --batch-size, --probe-epochs and --max-(train-)images must be positive")
    adapter = load_adapter(checkpoint, image_size=size or 224, random_init=random_init, seed=seed, **read_options)
    head_path = find_own_head(checkpoint, head, random_init)
    if head_path:
        predictor, meta = load_own_head(head_path, adapter)
        side = _eval_side(adapter, size, meta)
        encoder = MaskedEncoder(adapter, mask_token or HEAD_MASK_TOKENS.get(meta.get("mask_token_type"), "own"))
        info = {"predictor": predictor.name, "head": os.path.abspath(head_path)}
    else:
        side = _eval_side(adapter, size, None)
        opts = dict(seed=seed, train_images=train_images, images=images, max_train_images=max_train_images)
        opts.update(probe_epochs=probe_epochs, batch_size=batch_size, probe_lr=probe_lr, progress=progress)
        predictor, encoder, info = _train_probe(adapter, mask_token, side, opts)
    batch, n_img = _load_images(images, side, max_images)
    gammas, gps = tuple(content_ratios or GAMMAS), tuple(pos_ratios or GAMMA_POS)
    cells = evaluate_grid(encoder, predictor, batch, gammas, gps, batch_size=batch_size, seed=seed)
    g = side // adapter.patch_size
    info.update(checkpoint=os.path.abspath(checkpoint), name=adapter.name, random_init=random_init, seed=seed)
    info.update(images=os.path.abspath(images), num_images=n_img, size=side, grid=[g, g], chance=1.0 / (g * g))
    info.update(mask_token=encoder.mode, mask_token_text=MASK_TOKEN_TEXT[encoder.mode])
    paths = write_outputs(cells, out, info)
    return [
        f"{adapter.name}{' (random init)' if random_init else ''}: {n_img} images at {side}px, grid {g}x{g}, "
        f"chance {1.0 / (g * g):.4f}, mask seed {seed}",
        f"predictor: {info['predictor']}",
        *([f"note: {info['note']}"] if "note" in info else []),
        f"mask token: {encoder.describe()}",
        "top-1 of the position-dropped patches (rows gamma, columns gamma_pos):",
        format_grid(cells, "top1"),
        f"mean top-1 over the {len(cells)} cells: {mean_top1(cells):.4f} "
        f"(anchors, which keep their position: {mean_top1(cells, 'anchor_top1'):.4f})",
    ] + [f"wrote {p}" for p in paths.values()]


PROXY_ONLY = ("repeats", "reference")
EVALUATOR_ONLY = ("train_images", "max_train_images", "mask_token", "head", "probe_epochs", "probe_lr")


def probe_position_report(proxy: bool = False, **kw) -> list[str]:
    """``tools/probe_position.py``: :func:`accuracy_report`, or with ``proxy`` the head-free proxy
    (:func:`transfer.analysis.position.position_report`, output as before). Options of the other mode that are
    set (not ``None``) are an error; read options apply to the evaluator only."""
    from . import position

    if not proxy:
        given = [k for k in PROXY_ONLY if kw.pop(k, None) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to --proxy only")
        return accuracy_report(**{k: v for k, v in kw.items() if v is not None})
    given = [k for k in EVALUATOR_ONLY if kw.get(k) is not None]
    if given:
        raise ValueError(f"--{given[0].replace('_', '-')} does not apply to --proxy")
    keep = ("checkpoint", "images", "out", "size", "max_images", "batch_size", "seed", "random_init", "progress")
    args = {k: kw[k] for k in keep if kw.get(k) is not None}
    args["content_ratios"] = kw.get("content_ratios") or position.DEFAULT_CONTENT_RATIOS
    args["pos_ratios"] = kw.get("pos_ratios") or position.DEFAULT_POS_RATIOS
    args.update(repeats=kw.get("repeats") or 1, reference=kw.get("reference") or "unmasked")
    return position.position_report(**args)

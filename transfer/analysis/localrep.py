"""LocalRep probes of frozen patch features (the LocalRep paper, "local representations of SSL ViTs";
docs/evaluation.md): patch retrieval under image transformations, scored hierarchically; robustness curves of it
under blur, Gaussian noise and band-limited noise; tracking association of ROIAlign-pooled object features
against the frame gap.

Retrieval: every patch of a transformed image queries, by cosine similarity, a database of the patches of all
original images; the hit is scored at two levels, the right image (instance identification) and, within it, the
right patch (exact, or within one patch). The transformations keep the patch correspondence known: whole-patch
shifts (content moves by ``k`` patches, wrapped), a 90-degree rotation, rescaling about the centre (the source
patch is the one holding the source of the query patch's centre, as the paper defines it; queries whose centre
comes from outside the image are left out) and photometric ones (blur, noise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def retrieval_scores(query, db, q_img, q_pos, db_img, db_pos, grid) -> dict:
    """Hierarchical retrieval accuracy. ``query (Q, D)`` / ``db (N, D)`` features with their image index and
    flat patch index; ``grid (h, w)``. Returns ``image`` (nearest neighbour from the right image), ``patch``
    (right image and patch) and ``within1`` (right image, patch at Chebyshev distance <= 1)."""
    sim = F.normalize(query.float(), dim=-1) @ F.normalize(db.float(), dim=-1).t()
    nn_idx = sim.argmax(dim=1)
    same_img = db_img[nn_idx] == q_img
    w = grid[1]
    dy = (db_pos[nn_idx] // w - q_pos // w).abs()
    dx = (db_pos[nn_idx] % w - q_pos % w).abs()
    return {
        "image": float(same_img.float().mean()),
        "patch": float((same_img & (db_pos[nn_idx] == q_pos)).float().mean()),
        "within1": float((same_img & (dy <= 1) & (dx <= 1)).float().mean()),
    }


def shift_patches(images: torch.Tensor, k: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Content moved right and down by ``k`` patches (wrapped round); returns the images and, per patch of the
    result, the flat index of its source patch in the original."""
    out = torch.roll(images, shifts=(k * patch, k * patch), dims=(2, 3))
    h, w = images.shape[2] // patch, images.shape[3] // patch
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    src = ((ys - k) % h) * w + (xs - k) % w
    return out, src.reshape(-1)


def rotate90(images: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images rotated by 90 degrees counter-clockwise (square inputs) and each result patch's source patch."""
    out = torch.rot90(images, 1, dims=(2, 3))
    n = images.shape[2] // patch
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return out, (xs * n + (n - 1 - ys)).reshape(-1)  # rot90 ccw: out[y, x] = in[x, n - 1 - y]


def scale_about_centre(images: torch.Tensor, factor: float, patch: int, mode: str = "bilinear"):
    """Images rescaled by ``factor`` about their centre at the same size (``factor > 1`` zooms in and crops,
    ``< 1`` zooms out and pads with zeros; ``grid_sample``, ``align_corners=False``), and per patch of the result
    the flat index of the original patch that contains the source of its centre (the LocalRep paper's
    correspondence), ``-1`` where that lies outside the image. Output pixel ``u`` samples source ``(u - c) / factor
    + c`` (``c`` the centre, continuous pixel coordinates)."""
    if factor <= 0:
        raise ValueError(f"scale factor must be positive, got {factor}")
    b, _, h, w = images.shape
    theta = torch.tensor([[1.0 / factor, 0, 0], [0, 1.0 / factor, 0]], dtype=images.dtype).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    gh, gw = h // patch, w // patch

    def source(n: int, size: int) -> torch.Tensor:
        centre = (torch.arange(n, dtype=torch.float64) + 0.5) * patch
        return torch.floor(((centre - size / 2) / factor + size / 2) / patch).long()

    sy, sx = source(gh, h)[:, None].expand(gh, gw), source(gw, w)[None, :].expand(gh, gw)
    inside = (sy >= 0) & (sy < gh) & (sx >= 0) & (sx < gw)
    return out, torch.where(inside, sy * gw + sx, torch.full_like(sy, -1)).reshape(-1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding); ``sigma`` 0 returns the input."""
    if sigma <= 0:
        return images
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=images.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Images plus i.i.d. N(0, sigma^2) noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def band_noise(images: torch.Tensor, sigma: float, low: float = 0.1, high: float = 0.3, seed: int = 0):
    """Images plus noise whose spectrum is kept only at radial frequencies in [low, high] cycles per pixel, scaled
    to standard deviation ``sigma``; clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g)
    fy = torch.fft.fftfreq(images.shape[2])[:, None]
    fx = torch.fft.fftfreq(images.shape[3])[None, :]
    band = ((fy**2 + fx**2).sqrt() >= low) & ((fy**2 + fx**2).sqrt() <= high)
    noise = torch.fft.ifft2(torch.fft.fft2(noise) * band).real
    noise = noise / noise.std().clamp(min=1e-8) * sigma
    return (images + noise).clamp(0, 1)


@torch.no_grad()
def patch_features(adapter, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Final-normed last-layer patch tokens ``(B, N, D)`` of images in [0, 1]."""
    return torch.cat(
        [adapter.tokens(adapter.normalize(images[i : i + batch_size]))[0] for i in range(0, len(images), batch_size)]
    )


def retrieval_under(feats_fn, images: torch.Tensor, patch: int, transform) -> dict:
    """:func:`retrieval_scores` of the transformed images (``transform(images) -> (images, source index)``)
    against the originals; ``feats_fn(images) -> (B, N, D)``. Query patches whose source index is ``-1`` (no
    counterpart in the original, e.g. the padded border of a zoomed-out image) are left out."""
    db = feats_fn(images)
    timg, src = transform(images)
    q = feats_fn(timg)
    b, n, d = db.shape
    grid = (images.shape[2] // patch, images.shape[3] // patch)
    img_idx = torch.arange(b).repeat_interleave(n)
    pos = torch.arange(n).repeat(b)
    keep = src.repeat(b) >= 0
    if not bool(keep.any()):
        raise ValueError("no query patch has a counterpart in the original images")
    q_src = src.repeat(b)[keep]
    return retrieval_scores(q.reshape(-1, d)[keep], db.reshape(-1, d), img_idx[keep], q_src, img_idx, pos, grid)


def moving_objects(num_frames=8, num_objects=4, side=96, obj=24, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy sequence: ``num_objects`` squares of ``obj`` px, each a random colour with a random stripe texture,
    moving at constant random velocity (bouncing off the borders) over a noisy grey background. Returns frames
    ``(T, 3, side, side)`` in [0, 1] and boxes ``(T, K, 4)`` as ``x0, y0, x1, y1`` pixels."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(num_objects, 2, generator=g) * (side - obj)
    vel = (torch.rand(num_objects, 2, generator=g) - 0.5) * 8
    colours = torch.rand(num_objects, 3, generator=g)
    period = torch.randint(3, 9, (num_objects,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(obj), torch.arange(obj), indexing="ij")
    frames, boxes = [], []
    for _ in range(num_frames):
        img = 0.5 + 0.05 * torch.randn(3, side, side, generator=g)
        for k in range(num_objects):
            x0, y0 = int(pos[k, 0]), int(pos[k, 1])
            stripes = ((xx + yy * (k % 2)) // period[k] % 2).float()
            img[:, y0 : y0 + obj, x0 : x0 + obj] = colours[k][:, None, None] * (0.6 + 0.4 * stripes)
        frames.append(img.clamp(0, 1))
        boxes.append(torch.cat([pos.floor(), pos.floor() + obj], dim=1))
        pos = pos + vel
        for d in range(2):  # bounce
            over = (pos[:, d] < 0) | (pos[:, d] > side - obj)
            vel[over, d] = -vel[over, d]
            pos[:, d] = pos[:, d].clamp(0, side - obj)
    return torch.stack(frames), torch.stack(boxes)


def roi_features(feature_maps: torch.Tensor, boxes: torch.Tensor, patch: int, out: int = 2) -> torch.Tensor:
    """ROIAlign (torchvision) of each frame's boxes on its feature map ``(T, D, h, w)`` (``spatial_scale`` 1 /
    patch), average-pooled: ``(T, K, D)``."""
    from torchvision.ops import roi_align

    t, k = boxes.shape[:2]
    rois = torch.cat([torch.arange(t).repeat_interleave(k)[:, None].float(), boxes.reshape(-1, 4).float()], dim=1)
    pooled = roi_align(feature_maps.float(), rois, output_size=out, spatial_scale=1.0 / patch, aligned=True)
    return pooled.mean(dim=(2, 3)).reshape(t, k, -1)


def tracking_accuracy(obj_feats: torch.Tensor, max_gap: int) -> dict[int, float]:
    """Association accuracy against the frame gap: for every frame pair ``(t, t + gap)``, each object of frame t
    is matched to its most cosine-similar object of frame ``t + gap``; the fraction matched to itself."""
    f = F.normalize(obj_feats.float(), dim=-1)
    t, k, _ = f.shape
    out = {}
    for gap in range(1, min(max_gap, t - 1) + 1):
        hits = [(f[i] @ f[i + gap].t()).argmax(dim=1) == torch.arange(k) for i in range(t - gap)]
        out[gap] = float(torch.cat(hits).float().mean())
    return out

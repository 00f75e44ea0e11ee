"""LocalRep probes: retrieval of identical features is perfect, of random ones at chance; the shift and rotation
correspondences are right; a tracking case solvable by construction is solved; the noise and blur transforms."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from transfer.analysis import localrep as lr


def _content_features(images: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """A 'backbone' whose patch feature is the patch's pixels: retrieval then depends on content only."""
    b, c, h, w = images.shape
    x = images.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, h/p, w/p, p, p)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // patch) * (w // patch), -1)


def test_identical_features_retrieve_perfectly_and_random_ones_at_chance():
    g = torch.Generator().manual_seed(0)
    db = torch.randn(4 * 16, 32, generator=g)
    img, pos = torch.arange(4).repeat_interleave(16), torch.arange(16).repeat(4)
    assert lr.retrieval_scores(db, db, img, pos, img, pos, (4, 4)) == {"image": 1.0, "patch": 1.0, "within1": 1.0}
    q = torch.randn(20000, 32, generator=g)
    qi, qp = torch.randint(4, (20000,), generator=g), torch.randint(16, (20000,), generator=g)
    s = lr.retrieval_scores(q, db, qi, qp, img, pos, (4, 4))
    assert s["image"] == pytest.approx(1 / 4, abs=0.02) and s["patch"] == pytest.approx(1 / 64, abs=0.005)


def test_shift_and_rotation_correspondences_are_exact():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)  # random pixels: every patch is unique
    for transform in (lambda x: lr.shift_patches(x, 1, 8), lambda x: lr.shift_patches(x, 3, 8)):
        assert lr.retrieval_under(_content_features, images, 8, transform)["patch"] == 1.0
    # rotation changes the patch's pixels, so content features miss; the index map is checked directly
    rot, src = lr.rotate90(images, 8)
    for j in range(16):
        y, x = divmod(j, 4)
        sy, sx = divmod(int(src[j]), 4)
        assert torch.equal(
            rot[0, :, y * 8 : y * 8 + 8, x * 8 : x * 8 + 8],
            torch.rot90(images[0, :, sy * 8 : sy * 8 + 8, sx * 8 : sx * 8 + 8], 1, dims=(1, 2)),
        )


def _patchwise_constant(n: int, grid: int, patch: int, seed: int = 0) -> torch.Tensor:
    """Images whose every patch is one random colour (so a patch's content names its source patch)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, grid, grid, generator=g)
    return colours.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def test_scale_correspondence_by_hand():
    # 32 px, 8 px patches (4 x 4): zooming out by 2 maps the centre 12 of patch row/column 1 to 16 + (12 - 16) * 2
    # = 8 (row 1), 20 to 24 (row 3), 4 to -8 (outside: no counterpart)
    _, src = lr.scale_about_centre(torch.zeros(1, 3, 32, 32), 0.5, 8)
    grid = src.reshape(4, 4)
    assert grid[1, 1] == 5 and grid[2, 2] == 15 and grid[1, 2] == 7 and grid[2, 1] == 13
    assert (grid[0] == -1).all() and (grid[:, 0] == -1).all() and (grid[3] == -1).all()
    # zooming in by 1.2 at 96 px, 16 px patches: centre 8 -> 48 + (8 - 48) / 1.2 = 14.67 (row 0), 40 -> 41.3 (row 2)
    _, src = lr.scale_about_centre(torch.zeros(1, 3, 96, 96), 1.2, 16)
    grid = src.reshape(6, 6)
    assert grid[0, 0] == 0 and grid[2, 2] == 2 * 6 + 2 and grid[5, 5] == 35 and (grid >= 0).all()
    assert torch.equal(lr.scale_about_centre(torch.zeros(1, 3, 32, 32), 1.0, 8)[1], torch.arange(16))


def test_scale_retrieval_is_exact_where_the_mapping_is_and_at_chance_for_random_features():
    images = _patchwise_constant(3, 4, 8)
    # zoom by 2 about the centre, nearest sampling: every result patch shows one source patch's colour only
    zoom2 = lambda x: lr.scale_about_centre(x, 2.0, 8, mode="nearest")  # noqa: E731
    out, src = zoom2(images)
    for j in range(16):
        y, x = divmod(j, 4)
        sy, sx = divmod(int(src[j]), 4)
        colour = images[0, :, sy * 8, sx * 8, None, None].expand(3, 8, 8)
        assert torch.equal(out[0, :, y * 8 : y * 8 + 8, x * 8 : x * 8 + 8], colour)
    assert lr.retrieval_under(_content_features, images, 8, zoom2) == {"image": 1.0, "patch": 1.0, "within1": 1.0}
    # features unrelated to the content: patch-level hits at chance, 1 / (3 images x 16 patches)
    g = torch.Generator().manual_seed(1)
    noise = lambda x: torch.randn(len(x), 16, 64, generator=g)  # noqa: E731
    big = _patchwise_constant(60, 4, 8, seed=2)
    scores = lr.retrieval_under(noise, big, 8, lambda x: lr.scale_about_centre(x, 0.8, 8))
    assert scores["image"] == pytest.approx(1 / 60, abs=0.01) and scores["patch"] < 0.005


def test_tracking_solvable_by_construction():
    frames, boxes = lr.moving_objects(num_frames=6, num_objects=3, side=64, obj=16, seed=0)
    assert frames.shape == (6, 3, 64, 64) and boxes.shape == (6, 3, 4)
    # a feature map carrying each object's one-hot identity where it is (later objects drawn over earlier ones)
    fmap = torch.zeros(6, 3, 64, 64)
    for t in range(6):
        for k in range(3):
            x0, y0, x1, y1 = boxes[t, k].long().tolist()
            fmap[t, :, y0:y1, x0:x1] = 0
            fmap[t, k, y0:y1, x0:x1] = 1
    feats = lr.roi_features(fmap, boxes, patch=1, out=4)
    acc = lr.tracking_accuracy(feats, max_gap=5)
    assert list(acc) == [1, 2, 3, 4, 5]
    assert all(v == 1.0 for v in acc.values())
    swapped = feats[:, [1, 0, 2]].clone()
    swapped[0] = feats[0]  # frame 0 keeps the identities, the others swap objects 0 and 1
    assert lr.tracking_accuracy(swapped, 1)[1] < acc[1]


def test_photometric_transforms():
    x = torch.full((1, 3, 32, 32), 0.5)
    assert torch.equal(lr.gaussian_blur(x, 0), x) and torch.allclose(lr.gaussian_blur(x, 2.0), x, atol=1e-6)
    n = lr.gaussian_noise(x, 0.1, seed=0) - x
    assert n.std().item() == pytest.approx(0.1, rel=0.05)
    b = lr.band_noise(x, 0.1, seed=0) - x
    assert b.std().item() == pytest.approx(0.1, rel=0.05)
    spec = torch.fft.fft2(b[0, 0]).abs()
    assert spec[0, 0] < 1e-3 * spec.max()  # no DC: the band excludes the lowest frequencies


def test_probe_localrep_tool(tiny_ckpts, tmp_path, monkeypatch):
    from resultsdb import ResultsDB
    from tests.transfer.analysis.helpers import _tool

    root, paths = tiny_ckpts
    monkeypatch.setenv("SSLVIT_RESULTS_DB", str(tmp_path / "r.sqlite"))
    argv = [paths[0], "--images", str(root / "imgs"), "--size", "64", "--frames", "4", "--max-gap", "2"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert _tool("probe_localrep").main(argv + ["--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = json.loads((tmp_path / "o" / "localrep_results.json").read_text())
    assert res["retrieval"]["blur/0"]["patch"] == 1.0  # the unchanged images retrieve themselves
    assert set(res["tracking"]) == {"1", "2"}
    with ResultsDB(str(tmp_path / "r.sqlite"), create=False) as db:
        (r,) = db.records()
    assert r["protocol"] == "localrep" and r["metrics"]["retrieval/rot90/image"] == res["retrieval"]["rot90"]["image"]
    assert {f"scale{f:g}" for f in (0.8, 0.9, 1.1, 1.2)} <= set(res["retrieval"]) and res["context"] is None

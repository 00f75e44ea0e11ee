"""Refusals before the conversion: grid bounds, the parity check's memory, an unusable --dst
(transfer/convert/preflight.py).

Several tests give a junk --src: the refusal names the grid or the destination rather than "not a PyTorch
checkpoint", which shows that it came before the source was even read.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pretrain.export import export_backbone
from tests.support.paths import REPO
from tests.transfer.convert.references import ours_model
from transfer.convert import preflight
from transfer.convert.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real exported backbone (position field, LayerScale) to convert."""
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("preflight") / "backbone.pth"
    export_backbone(ours_model(field=True), src)
    return src


@pytest.fixture
def junk(tmp_path):
    src = tmp_path / "junk.pth"
    src.write_bytes(os.urandom(64))
    return src


def _refused(capsys, src, dst, *extra, target="mmseg"):
    """``main`` on the arguments: asserts rc 2 and a one-line message; returns it."""
    rc = main(["--src", str(src), "--dst", str(dst), "--target", target, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("convert_ckpt: error: ") and "\n" not in err, err
    return err


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_a_huge_grid_is_refused_through_the_script_naming_the_bound_and_writing_nothing(exported, tmp_path):
    dst = tmp_path / "out.pth"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "convert_ckpt.py"), "--src", str(exported), "--dst", str(dst)]
        + ["--target", "detectron2", "--grid", "1000", "1000"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "1,000,000 position tokens" in lines[0] and "at most 16,384" in lines[0], lines
    assert _tree(tmp_path) == []


def test_the_grid_bound_is_checked_before_the_source_is_read(capsys, junk, tmp_path):
    err = _refused(capsys, junk, tmp_path / "out.pth", "--grid", "129", "128")
    assert "16,512 position tokens" in err and "not a PyTorch checkpoint" not in err


def test_the_largest_allowed_grid_passes_the_grid_bound():
    assert preflight.check_grid((128, 128)) == (128, 128)


@pytest.mark.parametrize("grid", [("0", "4"), ("4", "-2"), ("-1", "-1")])
def test_non_positive_grid_sizes_are_refused(capsys, junk, tmp_path, grid):
    err = _refused(capsys, junk, tmp_path / "out.pth", "--grid", *grid)
    assert "--grid must be positive" in err
    assert not (tmp_path / "out.pth").exists()


def test_a_grid_whose_parity_forward_does_not_fit_in_memory_is_refused_before_converting(
    capsys, exported, tmp_path, monkeypatch
):
    monkeypatch.setattr(preflight, "available_bytes", lambda: 2.0**20)  # 1 MiB "free"
    dst = tmp_path / "out.pth"
    err = _refused(capsys, exported, dst, "--grid", "8", "8")
    assert "parity check needs about" in err and "65 tokens" in err and "--no-check" in err
    assert not dst.exists()


def test_without_the_parity_check_no_memory_bound_applies(capsys, exported, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_bytes", lambda: 2.0**20)
    dst = tmp_path / "out.pth"
    assert main(["--src", str(exported), "--dst", str(dst), "--target", "mmseg", "--grid", "8", "8", "--no-check"]) == 0
    assert torch.load(dst, weights_only=True)["meta"]["grid"] == [8, 8]


def test_the_parity_estimate_of_vit_b_at_the_vitdet_grid_is_three_attention_maps_plus_two_models():
    # ViT-B/16 at 64 x 64 + CLS: 3 x 12 x 4097^2 fp32 scores = 2.4171e9 B, 12 x 4097 x 768 activations
    # = 0.1510e9 B, 2 x 86.6e6 weights = 0.6928e9 B
    need = preflight.parity_bytes(4097, 768, 12, 86_600_000)
    assert need == pytest.approx(3.2609e9, rel=1e-4)


def test_the_parity_estimate_covers_the_measured_peak_of_a_vit_s_conversion():
    # tools/convert_ckpt.py on a timm ViT-S/16 (22,050,664 parameters) to detectron2 at 64 x 64: maximum RSS
    # 2,082,272 kB with the check, 900,432 kB with --no-check (/usr/bin/time -v, docs/usage.md "Reliability")
    measured = (2_082_272 - 900_432) * 1024
    assert measured < preflight.parity_bytes(64 * 64 + 1, 384, 6, 22_050_664) < 1.5 * measured


def test_the_parity_estimate_grows_with_the_square_of_the_tokens():
    small, big = (preflight.parity_bytes(t, 64, 2, 0) for t in (4000, 8000))
    # (3 x 2 x 8000^2 + 12 x 8000 x 64) / (3 x 2 x 4000^2 + 12 x 4000 x 64) = 390.144e6 / 99.072e6
    assert big / small == pytest.approx(3.93799, abs=1e-5)


def test_a_directory_as_dst_is_refused_before_the_source_is_read(capsys, junk, tmp_path):
    out = tmp_path / "outdir"
    out.mkdir()
    err = _refused(capsys, junk, out)
    assert f"--dst {out} is a directory" in err and "not a PyTorch checkpoint" not in err
    assert os.listdir(out) == []


def test_a_dst_below_a_regular_file_is_refused(capsys, junk, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    err = _refused(capsys, junk, tmp_path / "notes.txt" / "out.pth")
    assert "notes.txt is not a directory" in err


def test_a_dst_in_an_unwritable_folder_is_refused(capsys, junk):
    # /sys refuses new files even to root (chmod would not stop root)
    err = _refused(capsys, junk, "/sys/converted.pth")
    assert "cannot write in /sys" in err
    assert not os.path.exists("/sys/converted.pth")


def test_a_dst_in_folders_still_to_be_made_is_accepted_and_written(exported, tmp_path):
    dst = tmp_path / "new" / "deeper" / "out.pth"
    assert main(["--src", str(exported), "--dst", str(dst), "--target", "mmseg", "--grid", "4", "4"]) == 0
    assert dst.is_file() and _tree(tmp_path) == ["new/deeper/out.pth"]

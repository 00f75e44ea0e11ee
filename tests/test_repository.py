"""The repository documents itself: every file a tracked file names is shipped, and nothing cites outside notes."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.support.paths import REPO

TOP = ("docs", "configs", "tools", "pretrain", "transfer", "toydata", "tests", "benchmarks", "docker", "requirements")
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP)})/[\w./-]*\w\.(?:md|py|yaml|sh|json|txt|env|toml|cfg))\b")
GLOB_CHARS = set("*{}<>")


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [
        f for f in out if f.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".ini", ".txt", ".env")) or "/" not in f
    ]


def named_paths(text: str) -> set[str]:
    return {m for m in PATH.findall(text) if not GLOB_CHARS & set(m)}


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    if not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs a git checkout to list the tracked files")
    texts = {}
    for f in tracked_text_files():
        path = os.path.join(REPO, f)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts[f] = fh.read()
    return texts


def test_every_named_repository_file_exists(files):
    missing = sorted(
        f"{name}: {p}"
        for name, text in files.items()
        for p in named_paths(text)
        if not os.path.exists(os.path.join(REPO, p))
    )
    assert missing == []


def test_nothing_cites_the_design_notes_cloners_do_not_have(files):
    # the names are split so that this file does not match itself
    names = ["SPEC" + ".md", "SPEC" + " §", "../" + "shared/", "papers" + "_digest", "anchor" + "_codebases"]
    outside = re.compile("|".join(re.escape(n) for n in names))
    hits = sorted(f"{name}: {m.group(0)}" for name, text in files.items() for m in outside.finditer(text))
    assert hits == []

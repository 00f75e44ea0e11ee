"""Fixtures of the toydata tests: one small root, and three roots for the determinism checks."""

import dataclasses

import pytest

import toydata
from tests.support.toy import SMALL, file_digests


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return toydata.ensure_toy_data(str(tmp_path_factory.mktemp("toy") / "data"), SMALL)


@pytest.fixture(scope="module")
def same_seed_roots(tmp_path_factory):
    """make_toy_all of SMALL twice with seed 0 and once with seed 1."""
    tmp = tmp_path_factory.mktemp("seeds")
    a = toydata.make_toy_all(str(tmp / "a"), SMALL)
    b = toydata.make_toy_all(str(tmp / "b"), SMALL)
    c = toydata.make_toy_all(str(tmp / "c"), dataclasses.replace(SMALL, seed=1))
    return file_digests(a["root"]), file_digests(b["root"]), file_digests(c["root"])

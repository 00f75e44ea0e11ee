"""The former choices: every switch set back reproduces the losses recorded with the former code."""

import json
import math
import os
import sys

import pytest

from tests.support.paths import FIXTURES


@pytest.mark.slow
def test_former_switches_reproduce_the_former_losses_exactly(tmp_path):
    """``tests/fixtures/former_losses.json`` was written by the code before the DINOv2-code defaults (its
    defaults were our former choices); the same runs with every switch set back must give the same numbers."""
    sys.path.insert(0, FIXTURES)
    try:
        import record_former_losses as rec
    finally:
        sys.path.remove(FIXTURES)
    expected = json.load(open(os.path.join(FIXTURES, "former_losses.json")))
    got = rec.record(str(tmp_path))
    assert set(got) == set(expected)
    for name in expected:
        assert [r["iteration"] for r in got[name]] == [r["iteration"] for r in expected[name]]
        for g, e in zip(got[name], expected[name]):
            for term in ("loss", "dino", "ibot", "pos", "koleo"):
                assert g[term] == e[term], (name, g["iteration"], term, g[term], e[term])
            # the norm of a sum over differently grouped tensors: equal to float32 rounding
            assert math.isclose(g["grad_norm"], e["grad_norm"], rel_tol=1e-6), (name, g, e)

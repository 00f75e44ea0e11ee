"""Shared pytest fixtures: deterministic, single-threaded, tiny."""

import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
# tests never write the user's results database (docs/evaluation.md); tests of it set their own file
os.environ["SSLVIT_RESULTS_DB"] = "none"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory):
    """24 toy pretraining images of 48 x 48 px (seed 0)."""
    from toydata import make_toy_images

    d = tmp_path_factory.mktemp("images")
    make_toy_images(str(d), num_images=24, size=(48, 48), seed=0)
    return str(d)

"""Tools loaded as modules and tiny ViTs for the analysis tests."""

import importlib.util
import math
import os

from pretrain.models.vit import ViTConfig, build_vit
from tests.support.paths import REPO


def _tool(name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pico(**overrides):
    cfg = dict(patch_size=16, img_size=64, pos_field_size=[8, 8])
    cfg.update(overrides)
    return build_vit(ViTConfig.from_arch("vit_pico", **cfg)).eval()


def _brute_mean_pairwise_distance(gh, gw, patch):
    coords = [(r, c) for r in range(gh) for c in range(gw)]
    total = sum(math.hypot(r1 - r2, c1 - c2) for (r1, c1) in coords for (r2, c2) in coords)
    return patch * total / len(coords) ** 2

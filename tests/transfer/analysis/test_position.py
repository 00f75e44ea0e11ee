"""The position-prediction proxy."""

import math

import pytest
import torch

from tests.transfer.analysis.helpers import _pico
from transfer.analysis import position as pos
from transfer.analysis.backbones import (
    OursAdapter,
)

# position proxy


class _FakeAdapter:
    """Designed tokens: reference = one-hot of the patch index; a position-masked patch i outputs one-hot of
    ``mapping[i]``; patches 16px, grid from the image size."""

    supports_masks = True
    name = "fake"
    patch_size = 16

    def __init__(self, mapping):
        self.mapping = torch.tensor(mapping)

    def normalize(self, x):
        return x

    def grid(self, h, w):
        return h // 16, w // 16

    def forward_masked(self, x, content_mask=None, pos_mask=None):
        b = x.shape[0]
        n = self.mapping.numel()
        idx = torch.arange(n).expand(b, n)
        if pos_mask is not None:
            idx = torch.where(pos_mask, self.mapping.expand(b, n), idx)
        return torch.nn.functional.one_hot(idx, n).float()


def test_position_match_hand_case(monkeypatch):
    # grid 2x3: 0=(0,0) 1=(0,1) 2=(0,2) 3=(1,0) 4=(1,1) 5=(1,2)
    mapping = [0, 2, 3, 5, 4, 5]  # 0->0 exact; 1->2 one off; 2->3 (dist 2); 3->5 (dist 2)
    fake = _FakeAdapter(mapping)
    pm = torch.tensor([[True, True, True, True, False, False]])
    x = torch.zeros(1, 3, 32, 48)
    m = pos.match_positions(fake.forward_masked(x, pos_mask=pm), fake.forward_masked(x), pm, (2, 3))
    assert m["target"].tolist() == [0, 1, 2, 3] and m["pred"].tolist() == [0, 2, 3, 5]
    assert m["distance"].tolist() == [0, 1, 2, 2]
    assert (m["num"], m["top1"], m["within1_count"]) == (4, 1, 2)

    # through the driver, with designed masks
    monkeypatch.setattr(
        pos,
        "sample_masks",
        lambda b, n, c, p, generator=None: (torch.zeros(b, n, dtype=torch.bool), pm.expand(b, n).clone()),
    )
    images = torch.zeros(2, 3, 32, 48)
    cells = pos.position_accuracy(fake, images, [0.0], [0.5], progress=False)
    assert len(cells) == 1
    c = cells[0]
    assert c.num_predictions == 8 and c.top1 == pytest.approx(0.25) and c.within1 == pytest.approx(0.5)
    assert c.chance == pytest.approx(1 / 6)


def test_position_nothing_to_predict_and_masks():
    fake = _FakeAdapter(list(range(6)))
    images = torch.zeros(2, 3, 32, 48)
    cells = pos.position_accuracy(fake, images, [0.0, 1.0], [0.0, 0.5], progress=False)
    by = {(c.content_ratio, c.pos_ratio): c for c in cells}
    assert by[(0.0, 0.0)].num_predictions == 0 and math.isnan(by[(0.0, 0.0)].top1)
    assert by[(1.0, 0.5)].num_predictions == 0  # everything content-masked: nothing visible to position-mask
    assert by[(0.0, 0.5)].num_predictions == 6 and by[(0.0, 0.5)].top1 == 1.0  # identity mapping
    assert pos.mean_over_cells(cells) == 1.0
    g = torch.Generator().manual_seed(0)
    cm, pm = pos.sample_masks(4, 20, 0.25, 0.5, g)
    assert not (cm & pm).any()
    assert cm.sum(1).tolist() == [5] * 4 and pm.sum(1).tolist() == [8] * 4  # 0.5 * (20 - 5) = 7.5 -> 8
    with pytest.raises(ValueError):
        pos.sample_masks(1, 4, 1.5, 0.1)


def test_position_on_real_model_content_unique():
    # random tiny model, tiny field: outputs are content-dominated, so with the unmasked reference every
    # position-masked patch of a noise image is found again at its own place
    torch.manual_seed(0)
    ad = OursAdapter(_pico())
    images = torch.rand(2, 3, 64, 64)
    cells = pos.position_accuracy(ad, images, [0.0, 0.25], [0.5], progress=False)
    assert all(c.num_predictions > 0 and c.top1 == 1.0 for c in cells)
    cells = pos.position_accuracy(ad, images, [0.0], [0.5], progress=False, reference="position")
    assert 0.0 <= cells[0].top1 <= 1.0

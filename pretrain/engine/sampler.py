"""A deterministic, resumable stream of sample indices, sharded over processes.

The stream is the concatenation of passes over the dataset, pass ``p`` a permutation seeded by ``(seed, p)``.
Iteration ``it`` consumes stream positions ``[it * B, (it + 1) * B)`` (``B`` = total batch); process ``r`` takes
the ``r``-th slice of ``B / world`` positions. Resuming at iteration ``k`` starts at position ``k * B``, so a
resumed run sees exactly the samples of an uninterrupted one. Each yielded value encodes ``(pass, index)`` as
``pass * len + index``; :class:`PassIndexedDataset` decodes it so that the crops of an image differ per pass.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from ..seeding import mix_seeds


class StreamSampler(Sampler[int]):
    def __init__(
        self,
        dataset_len: int,
        batch_per_rank: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        start_iteration: int = 0,
    ):
        if dataset_len <= 0:
            raise ValueError("empty dataset")
        self.n, self.b, self.rank, self.world = dataset_len, batch_per_rank, rank, world
        self.seed, self.start = seed, start_iteration
        self._cache: tuple[int, torch.Tensor] | None = None

    def _perm(self, p: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != p:
            g = torch.Generator().manual_seed(mix_seeds(self.seed, p, 0x5A3))
            self._cache = (p, torch.randperm(self.n, generator=g))
        return self._cache[1]

    def position(self, pos: int) -> int:
        p, i = divmod(pos, self.n)
        return p * self.n + int(self._perm(p)[i])

    def __iter__(self):
        it = self.start
        total = self.b * self.world
        while True:
            base = it * total + self.rank * self.b
            for k in range(self.b):
                yield self.position(base + k)
            it += 1

    def __len__(self) -> int:  # infinite stream; DataLoader only needs a large number
        return 2**62


class PassIndexedDataset(Dataset):
    """Decodes ``pass * len + index`` from :class:`StreamSampler` and serves ``base`` at that (epoch, index)."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, value: int) -> dict:
        p, index = divmod(int(value), len(self.base))
        self.base.set_epoch(p)
        return self.base[index]

"""Deterministic seed mixing shared by the data pipeline and the sampler: no salted ``hash()``, the same value in
every process and Python run."""

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seeds(*values: int) -> int:
    """Deterministic 63-bit mix of integers (order matters), identical in every process and Python run."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1

"""Framework checkpoints: let them load under ``torch.load``'s ``weights_only=True``, and say what did not load.

torch >= 2.6 loads with ``weights_only=True`` unless told otherwise. mmengine 0.10.7 and fvcore call
``torch.load`` without the argument, so resuming their full checkpoints (which pickle mmengine's
``HistoryBuffer``, numpy arrays, dtypes and scalars in the message hub / iteration counters) fails.
Rather than switching the safe loader off, we allow-list exactly the types those checkpoints contain.
Call :func:`allow_framework_checkpoint_globals` once before training or resuming.

:func:`labelled_problems` formats the key mismatches that the ViTDet and Segmenter loaders refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_DONE = False


def _numpy_globals() -> list:
    import numpy as np

    types: list = [np.ndarray, np.dtype]
    # numpy >= 1.25 / 2.x: per-dtype classes (np.dtypes.Float64DType, ...) are what dtype objects pickle as.
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        types += [getattr(dtypes_mod, name) for name in dir(dtypes_mod) if name.endswith("DType")]
    types += [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]
    try:  # numpy 2.x
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    types += [_reconstruct, scalar]
    return types


def allow_framework_checkpoint_globals() -> None:
    """Allow-list numpy and mmengine types for ``torch.load(weights_only=True)``. Idempotent."""
    global _DONE
    if _DONE:
        return
    allowed = _numpy_globals()
    try:
        from mmengine.logging import HistoryBuffer

        allowed.append(HistoryBuffer)
        # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, "min"), ...: the weights_only
        # unpickler still refuses to *call* anything not allow-listed, so allowing the getattr lookup opens no
        # code path. Without it, resuming an mmengine run fails on "Unsupported global: getattr".
        import builtins

        allowed.append(builtins.getattr)
    except ImportError:  # mmengine is optional for detectron2-only use
        pass
    torch.serialization.add_safe_globals(allowed)
    _DONE = True


def labelled_problems(groups: Sequence[tuple[str, Sequence]], listing: Callable[[Sequence], str] = str) -> list[str]:
    """``"<label>: <listing(keys)>"`` for every non-empty ``(label, keys)`` group, in order."""
    return [f"{label}: {listing(keys)}" for label, keys in groups if keys]

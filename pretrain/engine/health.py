"""Training-health checks that catch a wasted run early (logged as warnings, never fatal).

:class:`UniformOutputMonitor`: the DINO CLS loss is a cross-entropy against ``K`` prototypes, and it equals
``log K`` exactly when the student's outputs are uniform, whatever the targets. A loss that stays within ``tol`` of
``log K`` after warm-up means the heads sit in the uniform-output state (no learning signal from the CLS term).
docs/demo_recipe.md explains when that state is stable and how the tiny demo leaves it.
"""

from __future__ import annotations

import math


class UniformOutputMonitor:
    """Warn once when ``window`` consecutive checked DINO losses after ``start_iteration`` lie within ``tol``
    of ``log(n_prototypes)``."""

    def __init__(self, n_prototypes: int, start_iteration: int, window: int = 8, tol: float = 0.01):
        if n_prototypes < 2 or window < 1 or tol <= 0:
            raise ValueError("need n_prototypes >= 2, window >= 1 and tol > 0")
        self.log_k = math.log(n_prototypes)
        self.start, self.window, self.tol = start_iteration, window, tol
        self.run, self.first, self.fired = 0, None, False

    def update(self, iteration: int, dino_loss: float) -> str | None:
        """Feed one (logged) iteration's DINO loss; returns the warning text the first time the rule holds."""
        if self.fired or iteration < self.start:
            return None
        if math.isfinite(dino_loss) and abs(dino_loss - self.log_k) < self.tol:
            if self.run == 0:
                self.first = iteration
            self.run += 1
        else:
            self.run = 0
        if self.run >= self.window:
            self.fired = True
            return (
                f"the DINO loss has stayed within {self.tol} of log(K) = {self.log_k:.4f} since iteration {self.first} "
                f"({self.run} checks): the student's CLS outputs are uniform over the prototypes and that term "
                "gives no learning signal (collapsed heads). At tiny scale, try model.layerscale=0 and "
                "loss.koleo_weight=0.1; at full scale, check the lr, the teacher temperature and the data."
            )
        return None

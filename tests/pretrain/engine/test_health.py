"""The uniform-output monitor."""

import math

import pytest

from pretrain.engine.health import UniformOutputMonitor

LOG_K = math.log(256)
# after the start iteration 10: two losses near log K, a departure, a NaN, then three near log K from iteration 30
BEFORE_FIRING = [
    (0, LOG_K),
    (5, LOG_K),
    (10, LOG_K + 0.005),
    (15, LOG_K - 0.009),
    (20, LOG_K - 0.02),
    (25, float("nan")),
    (30, LOG_K),
    (35, LOG_K + 0.001),
]
FIRING = (40, LOG_K - 0.001)


def _monitor(updates=()):
    m = UniformOutputMonitor(256, start_iteration=10, window=3, tol=0.01)
    for iteration, loss in updates:
        m.update(iteration, loss)
    return m


def test_the_monitor_ignores_losses_before_its_start_iteration():
    """With the two warm-up losses counted, the window of 3 would be full at iteration 10."""
    m = _monitor()
    assert m.update(0, LOG_K) is None and m.update(5, LOG_K) is None  # warm-up: ignored
    assert m.update(10, LOG_K + 0.005) is None and m.update(15, LOG_K - 0.009) is None


def test_a_departure_from_log_k_or_a_nan_restarts_the_window():
    m = _monitor(BEFORE_FIRING[:4])
    assert m.update(20, LOG_K - 0.02) is None  # learning: the run restarts
    assert m.update(25, float("nan")) is None
    assert m.update(30, LOG_K) is None and m.update(35, LOG_K + 0.001) is None


def test_the_monitor_warns_when_the_window_fills_naming_its_first_iteration_and_log_k():
    msg = _monitor(BEFORE_FIRING).update(*FIRING)
    assert msg is not None and "since iteration 30" in msg and f"{LOG_K:.4f}" in msg


def test_the_monitor_warns_only_once():
    m = _monitor([*BEFORE_FIRING, FIRING])
    assert m.update(45, LOG_K) is None  # once only


def test_a_monitor_over_a_single_prototype_is_refused():
    with pytest.raises(ValueError):
        UniformOutputMonitor(1, 0)

"""Prediction intervals: split-conformal radii per horizon step, adapted online in stream order."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.intervals import (
    Calibration,
    IntervalError,
    OnlineRadius,
    calibrate,
    check_levels,
    interval_metrics,
    replay,
    spread,
)

LEVELS = (0.8, 0.95)
ONE = np.ones((1, 1, 1))  # every window's spread: errors in the data's own units


def residuals(n: int, scales: list[float], seed: int) -> np.ndarray:
    """``(n, H, 1)`` Gaussian errors whose spread grows with the step ahead."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, len(scales), 1)) * np.array(scales)[None, :, None]


def coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per level, the share of ``y`` inside the bounds."""
    return ((lo <= y) & (y <= hi)).mean(axis=tuple(range(1, lo.ndim)))


def test_split_conformal_covers_each_step_at_its_level_with_a_wider_band_further_ahead() -> None:
    scales = [0.5, 1.0, 2.0]
    calibration = calibrate(np.zeros((2000, 3, 1)), residuals(2000, scales, seed=0), ONE, LEVELS)
    actual = residuals(20_000, scales, seed=1)

    lo, hi = calibration.bounds(np.zeros_like(actual), np.ones((20_000, 1, 1)))

    for step in range(3):
        np.testing.assert_allclose(
            coverage(lo[:, :, step], hi[:, :, step], actual[:, step]), LEVELS, atol=0.015
        )
    radius = calibration.radius[:, :, 0]
    assert (np.diff(radius, axis=1) > 0).all()  # further ahead, wider
    assert (radius[1] > radius[0]).all()  # 95% wider than 80%


def test_online_radii_bring_coverage_back_after_the_errors_double() -> None:
    # Calibrated on errors of spread 1; the stream's errors have spread 2 from window 1,000.
    calibration = calibrate(
        np.zeros((1000, 2, 1)), residuals(1000, [1.0, 1.0], seed=2), ONE, LEVELS
    )
    stream = residuals(4000, [1.0, 1.0], seed=3)
    stream[1000:] *= 2
    predictions, origins = np.zeros_like(stream), np.arange(len(stream))
    spreads = np.ones((len(stream), 1, 1))

    offline = calibration.bounds(predictions, spreads)
    online = replay(predictions, stream, spreads, origins, calibration)

    last = slice(-500, None)
    stale = coverage(offline[0][:, last], offline[1][:, last], stream[last])
    adapted = coverage(online[0][:, last], online[1][:, last], stream[last])
    assert (np.array(LEVELS) - stale > 0.1).all()  # the stale band misses far more often
    np.testing.assert_allclose(adapted, LEVELS, atol=0.05)


def test_a_window_interval_uses_only_actuals_observed_by_its_origin() -> None:
    calibration = Calibration(LEVELS, np.ones((2, 3, 1)))
    stream = residuals(50, [1.0, 1.0, 1.0], seed=4)
    predictions, origins = np.zeros_like(stream), np.arange(50)
    # Window 29's step 3 is the value of step 32, covered in one stream and missed in the
    # other: windows 30 and 31 cannot have seen it yet.
    stream[29, 2] = 0.0
    changed = stream.copy()
    changed[29, 2] = 100.0

    spreads = np.ones((50, 1, 1))
    lo, hi = replay(predictions, stream, spreads, origins, calibration)
    lo2, hi2 = replay(predictions, changed, spreads, origins, calibration)

    np.testing.assert_array_equal(lo[:, :32], lo2[:, :32])
    np.testing.assert_array_equal(hi[:, :32], hi2[:, :32])
    assert not np.array_equal(hi[:, 32:], hi2[:, 32:])  # window 32 on has seen the miss


def test_gaps_between_origins_deliver_each_actual_once() -> None:
    calibration = Calibration((0.8,), np.ones((1, 2, 1)))
    together, apart = OnlineRadius(calibration, gain=0.1), OnlineRadius(calibration, gain=0.1)
    # Two misses of step 1 arrive together, as after a gap in the origins.
    together.observe(np.array([0, 0]), np.ones((1, 2, 1), dtype=bool))
    for _ in range(2):
        apart.observe(np.array([0]), np.ones((1, 1, 1), dtype=bool))

    np.testing.assert_allclose(together.radius, apart.radius)
    assert together.radius[0, 0, 0] > 1


def test_the_next_steps_misses_widen_the_far_steps_before_their_own_actuals_arrive() -> None:
    calibration = Calibration(LEVELS, np.ones((2, 24, 1)))
    online = OnlineRadius(calibration)
    # Three forecasts' first steps missed: no actual of steps 2 to 24 has arrived yet.
    for _ in range(3):
        online.observe(np.array([0]), np.ones((2, 1, 1), dtype=bool))

    assert (online.radius[:, 1:] > 1.05).all()
    assert (online.radius[:, 0] > online.radius[:, 1:].max(axis=1)).all()  # its own most


def walk_errors(n: int, horizon: int, scale: float, seed: int) -> np.ndarray:
    """``(n, H, 1)``: the errors of forecasting a random walk by its last value from each step
    in turn, so that they are correlated across steps and across forecasts, as real ones are."""
    steps = np.random.default_rng(seed).normal(size=n + horizon) * scale
    level = np.concatenate([[0.0], np.cumsum(steps)])
    ahead = np.arange(n)[:, None] + np.arange(1, horizon + 1)
    return (level[ahead] - level[:n, None])[..., None]


def test_coverage_of_every_interval_published_comes_back_within_two_points() -> None:
    # Calibrated on errors four times smaller than the stream's from its first forecast, as
    # when validation errors understate the test's: the far steps hear of their own misses a
    # day late, so tracking each step alone left coverage 4 points short over 1,500 forecasts.
    horizon, n = 24, 1500
    calibration = calibrate(
        np.zeros((500, horizon, 1)), walk_errors(500, horizon, 1.0, seed=100), ONE, LEVELS
    )
    stream = walk_errors(n, horizon, 4.0, seed=0)
    predictions, spreads = np.zeros_like(stream), np.ones((n, 1, 1))

    lo, hi = replay(predictions, stream, spreads, np.arange(n), calibration)

    np.testing.assert_allclose(coverage(lo, hi, stream), LEVELS, atol=0.02)


@pytest.mark.parametrize("levels", [(), (0.0,), (1.0,), (0.8, 0.8), (1.5,)])
def test_a_level_outside_zero_to_one_is_refused(levels: tuple[float, ...]) -> None:
    with pytest.raises(IntervalError, match="level"):
        check_levels(levels)


def test_the_metrics_score_coverage_width_winkler_and_pinball() -> None:
    y = np.array([[[0.0]], [[3.0]]])  # two windows, one step, one channel
    lo, hi = np.full((1, 2, 1, 1), -1.0), np.full((1, 2, 1, 1), 1.0)

    metrics = interval_metrics(lo, hi, y, (0.8,))

    assert metrics["coverage.0.8"] == 0.5
    assert metrics["width.0.8"] == 2.0
    # The miss is 2 above the bound: the score adds 2 / 0.2 * 2 = 20 to its width of 2.
    assert metrics["winkler.0.8"] == pytest.approx((2 + 22) / 2)
    # The bounds as the 0.1 and 0.9 quantiles. Lower, 1 and 4 below the values: 0.1 each unit,
    # (0.1 + 0.4) / 2. Upper, 1 above and 2 below: (0.1 * 1 + 0.9 * 2) / 2.
    assert metrics["pinball"] == pytest.approx((0.25 + 0.95) / 2)


def test_radii_are_in_units_of_each_window_spread() -> None:
    # Two series of one shape at scales 1 and 100: one radius, intervals 100 times wider.
    rng = np.random.default_rng(6)
    inputs = np.cumsum(rng.normal(size=(500, 48, 1)), axis=1)
    errors = rng.normal(size=(500, 4, 1))
    both = np.concatenate([inputs, 100 * inputs])
    spreads = spread(both)
    calibration = calibrate(
        np.zeros((1000, 4, 1)), np.concatenate([errors, 100 * errors]), spreads, (0.8,)
    )

    lo, hi = calibration.bounds(np.zeros((1000, 4, 1)), spreads)

    width = (hi - lo)[0, :, 0, 0]
    np.testing.assert_allclose(width[500:], 100 * width[:500], rtol=1e-9)


def test_a_flat_lookback_still_gets_an_interval() -> None:
    flat = np.full((1, 24, 1), 7.0)

    assert spread(flat)[0, 0, 0] == pytest.approx(7e-3)

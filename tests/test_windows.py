"""Pure window functions: resampling, de-duplication, gaps, training windows, rolling buffers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.open_steps import OpenHours
from pipeline.windows import (
    BATCH_ENDED,
    DISPLACED,
    OUTRUN,
    SERIES,
    TS,
    Append,
    Gap,
    HeldJump,
    Jump,
    JumpRule,
    LongArrays,
    RollingWindow,
    WindowSet,
    build_window_sets,
    deduplicate,
    freq_to_ms,
    infer_step_ms,
    regularize,
    regularize_all,
    step_to_freq,
    validation_blocks,
    window_starts,
)

START = pd.Timestamp("2024-01-01T00:00:00Z")
STEP = pd.Timedelta(hours=1)
MAX_GAP = 3


def long_frame(
    series: list[str], offsets: list[pd.Timedelta], **channels: list[float]
) -> pd.DataFrame:
    return pd.DataFrame({SERIES: series, TS: [START + o for o in offsets], **channels})


def hourly(series_id: str, steps: list[int], values: list[float]) -> pd.DataFrame:
    """One series observed at the given hour indices, channel ``x``."""
    return long_frame([series_id] * len(steps), [k * STEP for k in steps], x=values)


def index_series(n_steps: int, offset: float = 0.0) -> pd.DataFrame:
    """A regular series whose value at step ``k`` is ``offset + k``: values reveal positions."""
    grid = pd.date_range(START, periods=n_steps, freq="1h", name=TS)
    return pd.DataFrame({"x": offset + np.arange(n_steps, dtype=np.float64)}, index=grid)


# --- freq_to_ms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freq", "expected"),
    [
        ("1h", 60 * 60 * 1000),
        ("15min", 15 * 60 * 1000),
        ("30s", 30 * 1000),
        ("1D", 24 * 60 * 60 * 1000),
    ],
)
def test_freq_to_ms(freq: str, expected: int) -> None:
    assert freq_to_ms(freq) == expected


# --- deduplicate ----------------------------------------------------------------------------------


def test_deduplicate_keeps_the_first_of_each_series_and_ts() -> None:
    frame = long_frame(
        ["a", "a", "b", "a", "a"],
        [0 * STEP, 0 * STEP, 0 * STEP, 1 * STEP, 0 * STEP],
        x=[1.0, 9.0, 2.0, 3.0, 7.0],
    )

    kept, dropped = deduplicate(frame)

    assert dropped == 2
    assert list(zip(kept[SERIES], kept["x"], strict=True)) == [("a", 1.0), ("b", 2.0), ("a", 3.0)]


def test_deduplicate_without_duplicates_keeps_everything() -> None:
    frame = hourly("a", [0, 1, 2], [1.0, 2.0, 3.0])

    kept, dropped = deduplicate(frame)

    assert dropped == 0
    pd.testing.assert_frame_equal(kept, frame)


# --- regularize -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1, MAX_GAP - 1, MAX_GAP])
def test_regularize_interpolates_a_gap_up_to_max_gap(gap: int) -> None:
    # Values lie on a line 2k + 1, so linear interpolation must recover them exactly.
    steps = [0, 1, 2, *range(3 + gap, 8 + gap)]
    frame = hourly("a", steps, [2.0 * k + 1 for k in steps])

    out = regularize(frame, "1h", max_gap=MAX_GAP)

    n_steps = 8 + gap
    assert out.index.tolist() == [START + k * STEP for k in range(n_steps)]
    np.testing.assert_allclose(out["x"].to_numpy(), 2.0 * np.arange(n_steps) + 1)


@pytest.mark.parametrize("gap", [MAX_GAP + 1, MAX_GAP + 5])
def test_regularize_leaves_a_gap_longer_than_max_gap_missing(gap: int) -> None:
    steps = [0, 1, 2, *range(3 + gap, 8 + gap)]
    frame = hourly("a", steps, [2.0 * k + 1 for k in steps])

    out = regularize(frame, "1h", max_gap=MAX_GAP)

    values = out["x"].to_numpy()
    assert len(values) == 8 + gap
    assert np.isnan(values[3 : 3 + gap]).all()
    observed = np.array(steps)
    np.testing.assert_array_equal(values[observed], 2.0 * observed + 1)


def test_regularize_applies_the_policy_per_gap() -> None:
    # A short gap (1 step) then a long one (MAX_GAP + 1 steps) in the same series.
    steps = [0, 2, 3, 4 + MAX_GAP + 1, 5 + MAX_GAP + 1]
    frame = hourly("a", steps, [float(k) for k in steps])

    values = regularize(frame, "1h", max_gap=MAX_GAP)["x"].to_numpy()

    assert values[1] == 1.0
    assert np.isnan(values[4 : 4 + MAX_GAP + 1]).all()
    assert not np.isnan(np.delete(values, range(4, 4 + MAX_GAP + 1))).any()


def test_regularize_sorts_time() -> None:
    frame = hourly("a", [2, 0, 1], [2.0, 0.0, 1.0])

    out = regularize(frame, "1h", max_gap=MAX_GAP)

    assert out["x"].tolist() == [0.0, 1.0, 2.0]


# --- regularize_all -------------------------------------------------------------------------------

HOUR_MS = 3_600_000


def random_fleet(seed: int) -> pd.DataFrame:
    """Series with gaps of 1 to MAX_GAP + 3 steps, NaN channel values, and a one-row series."""
    rng = np.random.default_rng(seed)
    channels = ["c0", "c1", "c2"][: rng.integers(1, 4)]
    parts = []
    for k in range(rng.integers(2, 7)):
        n_rows = 1 if k == 1 else int(rng.integers(2, 40))
        gaps = rng.choice([0, 0, 0, *range(1, MAX_GAP + 4)], n_rows)
        steps = np.cumsum(gaps + 1) + rng.integers(-5, 5)
        values = rng.normal(size=(len(channels), n_rows)) * 100
        values[rng.random(values.shape) < 0.2] = np.nan
        columns = dict(zip(channels, values.tolist(), strict=True))
        parts.append(long_frame([f"s{k}"] * n_rows, [int(j) * STEP for j in steps], **columns))
    fleet = pd.concat(parts, ignore_index=True)
    return fleet.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any row order


def assert_matches_regularize(fleet: pd.DataFrame, step_ms: int = HOUR_MS) -> None:
    """Each series of ``regularize_all`` is ``regularize``'s float64 result rounded to float32."""
    regular = regularize_all(LongArrays.from_frame(fleet), step_ms, MAX_GAP)

    assert regular.series == sorted(fleet[SERIES].unique())
    for i, series_id in enumerate(regular.series):
        expected = regularize(fleet[fleet[SERIES] == series_id], step_to_freq(step_ms), MAX_GAP)
        pd.testing.assert_frame_equal(regular.frame(i), expected.astype(np.float32))


@pytest.mark.parametrize("seed", range(30))
def test_regularize_all_is_regularize_of_each_series(seed: int) -> None:
    assert_matches_regularize(random_fleet(seed))


def test_regularize_all_fills_a_gap_of_max_gap_but_not_longer() -> None:
    short = [0, 1, *range(2 + MAX_GAP, 4 + MAX_GAP)]
    long = [0, 1, *range(3 + MAX_GAP, 5 + MAX_GAP)]
    fleet = pd.concat([hourly("a", short, [2.0 * k for k in short]), hourly("b", long, long)])

    regular = regularize_all(LongArrays.from_frame(fleet), HOUR_MS, MAX_GAP)

    assert regular.values.dtype == np.float32
    a, b = regular.frame(0)["x"].to_numpy(), regular.frame(1)["x"].to_numpy()
    np.testing.assert_array_equal(a, 2.0 * np.arange(4 + MAX_GAP))
    assert np.isnan(b[2 : 3 + MAX_GAP]).all()
    np.testing.assert_array_equal(b[long], long)


def test_regularize_all_never_interpolates_across_two_series() -> None:
    # a's channel y ends missing and b's starts missing: together a "gap" of 2 steps, not a gap.
    a = long_frame(["a"] * 3, [0 * STEP, 1 * STEP, 2 * STEP], x=[0.0, 1.0, 2.0], y=[0, 1, np.nan])
    b = long_frame(["b"] * 2, [0 * STEP, 1 * STEP], x=[5.0, 6.0], y=[np.nan, 9.0])

    regular = regularize_all(LongArrays.from_frame(pd.concat([a, b])), HOUR_MS, MAX_GAP)

    assert np.isnan(regular.values[[2, 3], 1]).all()
    assert_matches_regularize(pd.concat([a, b]))


def test_regularize_all_drops_rows_off_the_grid_as_regularize_does() -> None:
    half = pd.Timedelta(minutes=30)
    offsets = [0 * STEP, 1 * STEP + half, 2 * STEP, 5 * STEP, 6 * STEP + half]
    fleet = long_frame(["a"] * 5, offsets, x=[0.0, 99.0, 2.0, 5.0, 99.0])

    regular = regularize_all(LongArrays.from_frame(fleet), HOUR_MS, MAX_GAP)

    # The grid ends at the last whole step; the row half a step after it is dropped.
    np.testing.assert_array_equal(regular.frame(0)["x"], [0, 1, 2, 3, 4, 5, np.nan])
    assert_matches_regularize(fleet)


def test_regularize_all_takes_float32_rows_and_other_steps() -> None:
    fleet = random_fleet(7)
    stored = LongArrays.from_frame(fleet)
    as_stored = LongArrays(
        stored.series, stored.codes, stored.ts_ms, stored.values.astype(np.float32), stored.channels
    )

    from_float32 = regularize_all(as_stored, HOUR_MS, MAX_GAP)

    for i, series_id in enumerate(from_float32.series):
        own = fleet[fleet[SERIES] == series_id]
        as_read = own.assign(
            **{c: own[c].astype(np.float32).astype(np.float64) for c in stored.channels}
        )
        expected = regularize(as_read, "1h", MAX_GAP).astype(np.float32)
        pd.testing.assert_frame_equal(from_float32.frame(i), expected)
    quarter = fleet.assign(ts=START + (fleet[TS] - START) / 4)
    assert_matches_regularize(quarter, step_ms=HOUR_MS // 4)


def test_regularize_all_of_no_rows_is_empty() -> None:
    empty = np.empty(0, np.int64)
    rows = LongArrays(["a"], empty.astype(np.int32), empty, np.empty((0, 1)), ("x",))

    regular = regularize_all(rows, HOUR_MS, MAX_GAP)

    assert len(regular) == 0
    assert regular.values.shape == (0, 1)
    assert regular.offsets.tolist() == [0]
    assert regular.start_ms.shape == (0,)


def test_regularize_all_refuses_unsorted_or_repeated_rows() -> None:
    rows = LongArrays.from_frame(hourly("a", [0, 1, 2], [0.0, 1.0, 2.0]))
    repeated = LongArrays(
        rows.series, rows.codes, rows.ts_ms[[0, 1, 1]], rows.values, rows.channels
    )
    unsorted = LongArrays(
        ["a", "b"], np.array([1, 0, 0], np.int32), rows.ts_ms, rows.values, rows.channels
    )

    for bad in (repeated, unsorted):
        with pytest.raises(ValueError, match="sorted"):
            regularize_all(bad, HOUR_MS, MAX_GAP)


def test_regularize_all_frames_are_read_only_views() -> None:
    regular = regularize_all(LongArrays.from_frame(random_fleet(3)), HOUR_MS, MAX_GAP)

    frame = regular.frame(0)

    assert np.shares_memory(frame.to_numpy(), regular.values)
    with pytest.raises(ValueError, match="read-only"):
        frame.iloc[0, 0] = 1.0


# --- window_starts and WindowSet -----------------------------------------------------------------


def all_windows(values: np.ndarray, lookback: int, horizon: int) -> WindowSet:
    """Every complete window of one series, as training and backtests build them."""
    starts = window_starts(values, 0, len(values), lookback + horizon)
    labels = np.full(len(starts), "s", dtype=object)
    return WindowSet(values.astype(np.float32), starts, lookback, horizon, labels)


@pytest.mark.parametrize(
    ("n_steps", "lookback", "horizon", "n_channels"),
    [(10, 3, 2, 1), (50, 24, 6, 3), (8, 4, 4, 2), (20, 1, 1, 1)],
)
def test_windows_shapes_and_values(
    n_steps: int, lookback: int, horizon: int, n_channels: int
) -> None:
    values = np.arange(n_steps * n_channels, dtype=np.float64).reshape(n_steps, n_channels)

    windows = all_windows(values, lookback, horizon)
    inputs, targets = windows.inputs, windows.targets

    n_windows = n_steps - lookback - horizon + 1
    assert inputs.shape == (n_windows, lookback, n_channels)
    assert targets.shape == (n_windows, horizon, n_channels)
    assert inputs.dtype == targets.dtype == np.float32
    for i in range(n_windows):
        np.testing.assert_array_equal(inputs[i], values[i : i + lookback])
        np.testing.assert_array_equal(targets[i], values[i + lookback : i + lookback + horizon])


def test_windows_with_nan_are_skipped() -> None:
    n_steps, lookback, horizon, hole = 20, 4, 2, 9
    values = np.arange(n_steps, dtype=np.float64).reshape(n_steps, 1)
    values[hole] = np.nan

    windows = all_windows(values, lookback, horizon)

    # A window starting at i covers steps i .. i + L + H - 1.
    clean_starts = [i for i in range(n_steps - lookback - horizon + 1) if not i <= hole < i + 6]
    assert windows.inputs[:, 0, 0].tolist() == clean_starts
    assert not np.isnan(windows.inputs).any()
    assert not np.isnan(windows.targets).any()


def test_nan_in_any_channel_skips_the_window() -> None:
    values = np.ones((6, 2))
    values[0, 1] = np.nan

    assert len(all_windows(values, lookback=2, horizon=1)) == 6 - 2 - 1 + 1 - 1


@pytest.mark.parametrize("n_steps", [0, 3, 4])
def test_too_short_series_gives_no_windows(n_steps: int) -> None:
    windows = all_windows(np.zeros((n_steps, 2)), lookback=3, horizon=2)

    assert windows.inputs.shape == (0, 3, 2)
    assert windows.targets.shape == (0, 2, 2)


# --- build_window_sets ----------------------------------------------------------------------------


def test_build_window_sets_splits_each_series_in_time() -> None:
    n_steps, lookback, horizon, val_fraction = 100, 8, 4, 0.2
    cut = n_steps - int(n_steps * val_fraction)  # first step whose target is validation

    train, val = build_window_sets(
        {"a": index_series(n_steps)}, ["x"], lookback, horizon, val_fraction
    )

    assert train.targets.max() < cut
    assert val.targets.min() >= cut
    # Nothing is lost at the seam: the first validation target is the first validation step,
    # and every training target step up to the cut is used.
    assert val.targets[:, 0, 0].tolist() == list(range(cut, n_steps - horizon + 1))
    assert train.targets[:, -1, 0].max() == cut - 1
    # Validation inputs may look back into the training part.
    assert val.inputs.min() == cut - lookback


def test_validation_folds_hold_the_validation_steps_spread_over_the_latest_half() -> None:
    n_steps, lookback, horizon, val_fraction = 400, 8, 4, 0.2

    train, val = build_window_sets(
        {"a": index_series(n_steps)}, ["x"], lookback, horizon, val_fraction, folds=4
    )

    held_out = np.unique(val.targets)
    assert len(held_out) == 80  # as many steps as one block of the last fifth
    assert held_out.max() == n_steps - 1 and held_out.min() >= n_steps // 2
    assert len(np.flatnonzero(np.diff(held_out) > 1)) == 3  # four blocks, three holes
    # No training target is a validation target, and the holes between blocks are trained on.
    assert not np.isin(train.targets, held_out).any()
    assert np.isin(np.arange(n_steps // 2, n_steps), train.targets).sum() > 80
    # Validation origins lie in every block, not in the last one alone.
    first_targets = val.targets[:, 0, 0]
    assert first_targets.min() < n_steps * 0.65 and first_targets.max() == n_steps - horizon


def test_validation_folds_shrink_so_each_holds_two_horizons() -> None:
    assert len(validation_blocks(1000, 200, horizon=24, folds=4)) == 4
    assert len(validation_blocks(1000, 200, horizon=50, folds=4)) == 2
    assert validation_blocks(1000, 200, horizon=150, folds=4).tolist() == [[800, 1000]]


def test_build_window_sets_stacks_series_with_labels() -> None:
    lookback, horizon, val_fraction = 6, 3, 0.25
    series = {"a": index_series(60), "b": index_series(40, offset=1000.0)}

    train, val = build_window_sets(series, ["x"], lookback, horizon, val_fraction)

    for windows in (train, val):
        assert len(windows.series) == len(windows) == len(windows.targets)
        from_b = windows.series == "b"
        assert set(windows.series) == {"a", "b"}
        assert (windows.inputs[from_b] >= 1000).all()
        assert (windows.inputs[~from_b] < 1000).all()
    # Each series is split at its own last quarter.
    for series_id, n_steps, offset in (("a", 60, 0.0), ("b", 40, 1000.0)):
        cut = offset + n_steps - int(n_steps * val_fraction)
        assert train.targets[train.series == series_id].max() < cut
        assert val.targets[val.series == series_id].min() >= cut
    n_train_a = (60 - 15) - lookback - horizon + 1
    assert (train.series == "a").sum() == n_train_a


def test_build_window_sets_never_crosses_a_long_gap() -> None:
    frame = index_series(60)
    frame.iloc[20:25] = np.nan

    train, val = build_window_sets({"a": frame}, ["x"], 6, 3, 0.25)

    assert not np.isnan(train.inputs).any()
    assert not np.isnan(train.targets).any()
    assert len(val) > 0


# --- RollingWindow --------------------------------------------------------------------------------

STEP_MS = 10


def rolling(
    lookback: int = 4, max_gap: int = MAX_GAP, n_channels: int = 1, grace_steps: int = 0
) -> RollingWindow:
    return RollingWindow(lookback, n_channels, STEP_MS, max_gap, grace_steps)


def feed(window: RollingWindow, steps: list[int]) -> list[Append]:
    """Append value ``k`` at step ``k`` for each step."""
    return [window.append(k * STEP_MS, np.array([float(k)])) for k in steps]


def placed_steps(window: RollingWindow) -> list[int]:
    return [step.ts_ms // STEP_MS for step in window.placed()]


def test_rolling_window_accepts_a_regular_sequence() -> None:
    window = rolling(lookback=4)

    outcomes = feed(window, [0, 1, 2])

    assert outcomes == [Append.ACCEPTED] * 3
    assert not window.is_whole
    assert feed(window, [3]) == [Append.ACCEPTED]
    assert window.is_whole
    assert window.window()[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert window.last_ts_ms == 3 * STEP_MS


def test_rolling_window_reports_each_placed_step_with_its_window_once_whole() -> None:
    window = rolling(lookback=2)
    feed(window, [0, 1, 2])

    steps = window.placed()

    assert [s.ts_ms for s in steps] == [0, STEP_MS, 2 * STEP_MS]
    assert steps[0].window is None
    assert steps[1].window is not None and steps[1].window[:, 0].tolist() == [0.0, 1.0]
    assert steps[2].window is not None and steps[2].window[:, 0].tolist() == [1.0, 2.0]
    assert window.placed() == []


def test_rolling_window_floors_timestamps_to_the_step() -> None:
    window = rolling()

    window.append(3 * STEP_MS + 7, np.array([1.0]))

    assert window.last_ts_ms == 3 * STEP_MS
    assert window.append(3 * STEP_MS + 2, np.array([2.0])) is Append.DUPLICATE


def test_rolling_window_drops_a_duplicate_keeping_the_first() -> None:
    window = rolling(lookback=2)
    feed(window, [0, 1])

    outcome = window.append(1 * STEP_MS, np.array([99.0]))

    assert outcome is Append.DUPLICATE
    assert window.window()[:, 0].tolist() == [0.0, 1.0]


def test_rolling_window_knows_an_older_observed_step_is_a_duplicate_not_late() -> None:
    window = rolling(lookback=4)
    feed(window, [0, 1, 2, 3])

    assert window.append(1 * STEP_MS, np.array([99.0])) is Append.DUPLICATE
    assert window.window()[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_rolling_window_refuses_a_late_observation() -> None:
    window = rolling(lookback=3)
    feed(window, [0, 2])  # step 1 is interpolated, never observed

    outcome = window.append(1 * STEP_MS, np.array([99.0]))

    assert outcome is Append.LATE
    assert window.window()[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert window.last_ts_ms == 2 * STEP_MS


def test_rolling_window_refuses_a_step_older_than_the_window() -> None:
    window = rolling(lookback=2)
    feed(window, [5, 6, 7])

    assert window.append(1 * STEP_MS, np.array([99.0])) is Append.LATE


@pytest.mark.parametrize("grace", [1, 2, 5])
def test_rolling_window_places_out_of_order_records_within_the_grace_period(grace: int) -> None:
    window = rolling(lookback=4, grace_steps=grace)
    arrival = [0, 2, 1, 4, 3, 5, 6, 7, 8, 9]  # each at most one step out of order

    assert feed(window, arrival) == [Append.ACCEPTED] * len(arrival)

    newest_placed = 9 - grace
    assert placed_steps(window) == list(range(newest_placed + 1))
    expected = [float(k) for k in range(newest_placed - 3, newest_placed + 1)]
    assert window.window()[:, 0].tolist() == expected


def test_rolling_window_holds_a_step_for_its_grace_period() -> None:
    window = rolling(lookback=2, grace_steps=2)
    feed(window, [0, 1])
    assert placed_steps(window) == []

    feed(window, [2])

    assert placed_steps(window) == [0]


def test_rolling_window_is_late_beyond_the_grace_period() -> None:
    window = rolling(lookback=8, grace_steps=1)
    feed(window, [0, 1, 3, 4])  # step 2 missing: interpolated when 3 was placed

    assert window.append(2 * STEP_MS, np.array([99.0])) is Append.LATE
    assert window.append(4 * STEP_MS, np.array([99.0])) is Append.DUPLICATE  # still held
    feed(window, [5])
    assert window.window()[-5:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("gap", range(1, MAX_GAP + 1))
def test_rolling_window_interpolates_a_short_gap(gap: int) -> None:
    lookback = 8
    window = rolling(lookback=lookback)
    feed(window, [0, 1, 2])

    feed(window, [3 + gap])

    assert [s.gap for s in window.placed()][-1] is Gap.FILLED
    n_held = 4 + gap
    # Value k sits at step k, so interpolated steps must hold their own index.
    assert window.window()[-n_held:, 0].tolist() == [float(k) for k in range(n_held)]
    assert window.is_whole == (n_held >= lookback)


def test_rolling_window_interpolates_every_channel() -> None:
    window = rolling(lookback=3, n_channels=2)
    window.append(0, np.array([0.0, 10.0]))

    window.append(2 * STEP_MS, np.array([2.0, 30.0]))

    np.testing.assert_allclose(window.window(), [[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]])


@pytest.mark.parametrize("gap", [MAX_GAP + 1, 50])
def test_rolling_window_restarts_after_a_long_gap(gap: int) -> None:
    lookback = 4
    window = rolling(lookback=lookback)
    feed(window, [0, 1, 2, 3, 4])
    assert window.is_whole
    window.placed()
    first = 5 + gap

    feed(window, [first])

    assert [s.gap for s in window.placed()] == [Gap.RESTARTED]
    for k in range(1, lookback - 1):
        feed(window, [first + k])
        assert not window.is_whole
    feed(window, [first + lookback - 1])

    assert window.is_whole
    assert window.window()[:, 0].tolist() == [float(first + k) for k in range(lookback)]
    assert [s.window is not None for s in window.placed()] == [False] * (lookback - 2) + [True]


def test_rolling_window_is_oldest_first_after_wrap_around() -> None:
    window = rolling(lookback=3)

    feed(window, list(range(10)))

    assert window.window()[:, 0].tolist() == [7.0, 8.0, 9.0]


def test_rolling_window_returns_a_copy() -> None:
    window = rolling(lookback=2)
    feed(window, [0, 1])

    snapshot = window.window()
    feed(window, [2])

    assert snapshot[:, 0].tolist() == [0.0, 1.0]


def test_rolling_window_memory_is_bounded() -> None:
    lookback, n_channels = 16, 3
    window = rolling(lookback=lookback, n_channels=n_channels, grace_steps=2)
    ring = window._ring  # the only storage the window holds, besides held steps
    ring_shape, ring_bytes = ring.shape, ring.nbytes

    for k in range(10_000):
        window.append(k * STEP_MS, np.full(n_channels, float(k)))
        window.placed()

    assert window._ring is ring
    assert (window._ring.shape, window._ring.nbytes) == (ring_shape, ring_bytes)
    assert len(window._held) == 2
    assert window.window().shape == (lookback, n_channels)
    assert window.window()[:, 0].tolist() == [float(k) for k in range(9998 - lookback, 9998)]


def test_rolling_window_interpolates_a_gap_longer_than_lookback() -> None:
    window = rolling(lookback=2, max_gap=5)
    feed(window, [0])

    feed(window, [4])

    assert [s.gap for s in window.placed()] == [Gap.NONE, Gap.FILLED]
    assert window.window()[:, 0].tolist() == [3.0, 4.0]


# --- step inference -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freq", "expected"), [("1h", "h"), ("30min", "30min"), ("1D", "D"), ("15min", "15min")]
)
def test_the_step_of_regular_data_is_its_frequency(freq: str, expected: str) -> None:
    stamps = pd.date_range("2024-01-01", periods=50, freq=freq, tz="UTC")
    ts_ms = stamps.as_unit("ms").asi8

    assert step_to_freq(infer_step_ms(ts_ms) or 0) == expected


def test_the_step_of_irregular_data_is_what_most_readings_are_apart() -> None:
    rng = np.random.default_rng(0)
    hours = np.arange(500) * 3_600_000
    jittered = hours + rng.integers(-120_000, 120_000, size=500)  # clocks off by up to 2 min
    with_holes = np.delete(jittered, rng.choice(500, size=80, replace=False))  # 16% lost

    assert infer_step_ms(with_holes) == 3_600_000


def test_a_step_near_no_common_one_is_kept_to_the_second() -> None:
    assert infer_step_ms(np.arange(10) * 7_000) == 7_000
    assert infer_step_ms(np.array([5, 5, 5])) is None


# --- a series' clock never jumps on the word of one record --------------------------------------

JUMPS = JumpRule(max_jump_steps=3)
HELD_30 = HeldJump(30 * STEP_MS, 20, "the record")  # held at step 30, 20 steps ahead of step 10
CLAIM_30 = HeldJump(30 * STEP_MS, 20)  # its batch ended: only its time is left


@pytest.mark.parametrize(
    ("newest", "step", "held", "jump"),
    [
        (None, 100, None, Jump.WITHIN),  # a new series: no clock to jump from
        (10, 13, None, Jump.WITHIN),  # max_jump_steps ahead: taken on its own word
        (10, 14, None, Jump.HELD),
        (10, 2, None, Jump.WITHIN),  # behind: late or not, as usual
        (10, 12, HELD_30, Jump.WITHIN),  # the series goes on while a step is held
        (10, 30, HELD_30, Jump.REPEAT),  # the held step again: a duplicate, the first wins
        (10, 30, CLAIM_30, Jump.HELD),  # the same time, again: still one word, held
        (10, 27, HELD_30, Jump.CONFIRMS),  # a second far step near the held one, either side
        (10, 33, CLAIM_30, Jump.CONFIRMS),
        (10, 34, HELD_30, Jump.HELD),  # far from the held one too: it displaces it
    ],
)
def test_a_far_step_is_held_until_another_confirms_it(
    newest: int | None, step: int, held: HeldJump | None, jump: Jump
) -> None:
    newest_ms = None if newest is None else newest * STEP_MS

    assert JUMPS.judge(newest_ms, step * STEP_MS, STEP_MS, held) is jump


def test_a_series_of_unknown_step_never_holds() -> None:
    assert JUMPS.judge(0, 10**9, 1, None) is Jump.WITHIN  # ingest, before a step is inferred


def test_a_held_step_is_outrun_once_the_series_comes_within_reach() -> None:
    assert not JUMPS.outrun(26 * STEP_MS, STEP_MS, HELD_30)
    assert JUMPS.outrun(27 * STEP_MS, STEP_MS, HELD_30)


@pytest.mark.parametrize(
    ("why", "left"), [(BATCH_ENDED, CLAIM_30), (DISPLACED, None), (OUTRUN, None)]
)
def test_a_refused_held_step_leaves_its_time_only_at_a_batch_end(why: str, left: object) -> None:
    assert JumpRule.left_after(HELD_30, why) == left
    assert JumpRule.refusal(HELD_30, why).startswith("held: 20 steps ahead of the series' newest")


def test_holding_records_how_far_ahead_the_step_was() -> None:
    held = JUMPS.hold(10 * STEP_MS, 30 * STEP_MS, STEP_MS, "the record")

    assert held == HELD_30


def test_rolling_window_newest_step_counts_steps_held_for_their_grace() -> None:
    window = rolling(grace_steps=2)
    assert window.newest_ms is None

    feed(window, [0, 1, 2])

    assert (window.newest_ms, window.last_ts_ms) == (2 * STEP_MS, 0)


# --- open steps: series with recurring closed periods ---------------------------------------------

OFFICE = OpenHours.from_text("mon-fri 09:00-17:00")  # START, 2024-01-01, is a Monday
HOUR_MS = 3_600_000


def office_steps(days: int) -> list[pd.Timestamp]:
    """The open hours of ``days`` days from START: 8 steps a weekday, none at weekends."""
    grid = pd.date_range(START, periods=days * 24, freq="1h")
    return [t for t in grid if t.day_of_week < 5 and 9 <= t.hour < 17]


def office_fleet(days: int, drop: tuple[int, ...] = ()) -> pd.DataFrame:
    steps = [t for k, t in enumerate(office_steps(days)) if k not in drop]
    return pd.DataFrame({SERIES: "a", TS: steps, "x": np.arange(len(steps), dtype=float)})


def test_regularize_all_on_open_hours_places_rows_on_open_steps_only() -> None:
    fleet = office_fleet(14)  # two weeks: nights and a weekend between the rows

    regular = regularize_all(LongArrays.from_frame(fleet), HOUR_MS, MAX_GAP, OFFICE)
    every_step = regularize_all(LongArrays.from_frame(fleet), HOUR_MS, MAX_GAP)

    frame = regular.frame(0)
    assert list(frame.index) == list(fleet[TS])  # no night, no weekend
    np.testing.assert_array_equal(frame["x"], fleet["x"])
    assert every_step.frame(0)["x"].isna().any()  # on every step a night is a long gap


def test_on_open_hours_gaps_are_counted_in_open_steps() -> None:
    # Steps 7 and 8 (Monday 16:00, Tuesday 09:00): 2 open steps missing across a night, filled;
    # steps 20-23 (Wednesday 13:00-16:00): 4 > MAX_GAP, left missing.
    fleet = office_fleet(7, drop=(7, 8, 20, 21, 22, 23))
    closed = pd.DataFrame({SERIES: "a", TS: [START + pd.Timedelta(hours=20)], "x": [99.0]})

    rows = LongArrays.from_frame(pd.concat([fleet, closed]).sort_values(TS))
    x = regularize_all(rows, HOUR_MS, MAX_GAP, OFFICE).frame(0)["x"].to_numpy()

    assert len(x) == 5 * 8 and 99.0 not in x  # the row at a closed step is dropped
    np.testing.assert_allclose(x[6:10], [6.0, 6.0 + 1 / 3, 6.0 + 2 / 3, 7.0], rtol=1e-6)
    assert np.isnan(x[20:24]).all() and not np.isnan(np.delete(x, range(20, 24))).any()


def office_window(lookback: int = 10, grace_steps: int = 0) -> RollingWindow:
    return RollingWindow(lookback, 1, HOUR_MS, MAX_GAP, grace_steps, OFFICE)


def feed_times(window: RollingWindow, times: list[pd.Timestamp]) -> list[Append]:
    return [window.append(t.value // 10**6, np.array([float(k)])) for k, t in enumerate(times)]


def test_a_rolling_window_on_open_hours_stays_whole_across_a_night_and_a_weekend() -> None:
    window = office_window(lookback=10)

    feed_times(window, office_steps(8))  # Monday to the next Monday: 6 days of 8 open steps
    steps = window.placed()

    assert [s.gap for s in steps] == [Gap.NONE] * len(steps)
    assert all(s.window is not None for s in steps[9:])
    np.testing.assert_array_equal(window.window()[:, 0], np.arange(38, 48, dtype=np.float32))


def test_a_rolling_window_on_open_hours_fills_a_short_gap_across_a_night() -> None:
    window = office_window()
    times = office_steps(2)

    feed_times(window, times[:7] + times[9:])  # Monday 16:00 and Tuesday 09:00 lost

    gaps = [s.gap for s in window.placed()]
    assert gaps.count(Gap.FILLED) == 1 and Gap.RESTARTED not in gaps
    assert window.is_whole


def test_a_rolling_window_on_open_hours_accepts_but_never_places_a_closed_step() -> None:
    window = office_window()
    monday_16, monday_20 = START + pd.Timedelta(hours=16), START + pd.Timedelta(hours=20)

    outcomes = feed_times(window, [monday_16, monday_20])

    assert outcomes == [Append.ACCEPTED, Append.ACCEPTED]
    assert [s.ts_ms for s in window.placed()] == [monday_16.value // 10**6]
    tuesday_9 = (START + pd.Timedelta(hours=33)).value // 10**6
    assert window.append(tuesday_9, np.array([1.0])) is Append.ACCEPTED
    assert window.placed()[0].gap is Gap.NONE  # the night, and the step in it, are no gap
    assert window.append(monday_16.value // 10**6, np.array([5.0])) is Append.DUPLICATE
    assert window.append(monday_20.value // 10**6, np.array([5.0])) is Append.LATE

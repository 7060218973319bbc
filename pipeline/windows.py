"""Pure window functions: resampling, de-duplication, gap policy, training windows, rolling buffers.

The policies, in one place:

* **Duplicates.** Two observations of the same (series, ts) are duplicates; the first one accepted
  wins, so replaying a topic never rewrites history.
* **Steps.** Timestamps are floored to the series frequency; of several observations in one step
  the first accepted wins (ingest, serve and the pyfunc alike), so a step always holds a value
  that was really observed.
* **Gaps.** A gap of up to ``max_gap`` missing steps is filled by linear interpolation. A longer gap
  is left missing: no training window crosses it, and a live series gets no forecast until
  ``lookback`` steps have arrived after it.
* **Open steps.** A series with open hours (:class:`pipeline.open_steps.OpenHours`: nights and
  weekends closed) lives on its open steps only: closed steps do not exist, a gap is counted in
  open steps, so a night is no gap, and a row at a closed step is dropped.
* **Out of order and late records.** A live rolling window holds each step for a grace period of
  ``grace_steps`` steps of event time, and places what arrived in that time in timestamp order.
  An observation of a step that has already been placed is a duplicate if that step was observed
  (counted and dropped), otherwise late: it is refused (the caller dead-letters it as ``late``).
* **Jumps.** A series' clock never jumps on the word of one record: a step too far ahead of
  the newest is held until a second record confirms it, else refused as ``future``
  (:class:`JumpRule`, the one rule of ingest and serve).

Imports only numpy and pandas.
"""

from __future__ import annotations

import bisect
import enum
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Generic, Protocol, TypeVar

import numpy as np
import pandas as pd

from pipeline.open_steps import OpenHours

SERIES = "series"
TS = "ts"
Held = TypeVar("Held")  # what a held jump keeps to accept if it is confirmed


def freq_to_ms(freq: str) -> int:
    """Length of one step of a pandas frequency string, in milliseconds.

    >>> freq_to_ms("1h"), freq_to_ms("15min")
    (3600000, 900000)
    """
    return int(pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) / pd.Timedelta(milliseconds=1))


# Steps a series' spacing snaps to when it is within 10% of one (jittered clocks, lost records).
COMMON_STEPS_MS = tuple(
    int(pd.Timedelta(step) / pd.Timedelta(milliseconds=1))
    for step in ("1s", "5s", "10s", "15s", "30s", "1min", "2min", "5min", "10min", "15min",
                 "20min", "30min", "1h", "2h", "3h", "4h", "6h", "8h", "12h", "1D", "7D")
)  # fmt: skip


def infer_step_ms(ts_ms: np.ndarray | Sequence[int]) -> int | None:
    """A series' step: the median spacing of its distinct timestamps, snapped to a common step.

    None with fewer than two distinct timestamps. Irregular series get the step most of their
    readings are apart; a step no common one is near is rounded to the second. A few readings
    (ingest's per-series calls) take a plain-Python path: numpy's per-call cost is the larger.

    >>> hour = 3_600_000
    >>> infer_step_ms(np.array([0, hour, 2 * hour, 5 * hour])), infer_step_ms(np.array([7]))
    (3600000, None)
    >>> infer_step_ms(np.array([0, 1_795_000, 3_610_000, 5_399_000]))  # half-hourly, jittered
    1800000
    >>> infer_step_ms([0, 1_795_000, 3_610_000, 5_399_000, 5_399_000])
    1800000
    """
    if len(ts_ms) <= FEW_READINGS:
        distinct = sorted({int(t) for t in ts_ms})
        if len(distinct) < 2:
            return None
        median = float(statistics.median(b - a for a, b in pairwise(distinct)))
    else:
        unique = np.unique(np.asarray(ts_ms))
        if len(unique) < 2:
            return None
        median = float(np.median(np.diff(unique)))
    return _snapped(median)


# Readings below which inferring a step in plain Python is faster than in numpy.
FEW_READINGS = 64
_LOG_STEPS = [math.log(step) for step in COMMON_STEPS_MS]


def _snapped(median: float) -> int:
    """The common step nearest ``median`` (in ratio) if within 10% of it, else whole seconds."""
    i = bisect.bisect_left(_LOG_STEPS, math.log(median))
    candidates = COMMON_STEPS_MS[max(i - 1, 0) : i + 1]
    nearest = min(candidates, key=lambda step: abs(math.log(step / median)))
    if abs(nearest - median) <= 0.1 * nearest:
        return nearest
    return max(1000, round(median / 1000) * 1000)


def step_to_freq(step_ms: int) -> str:
    """The pandas frequency string of a step.

    >>> step_to_freq(3_600_000), step_to_freq(1_800_000), step_to_freq(86_400_000)
    ('h', '30min', 'D')
    """
    days, rest = divmod(step_ms, 86_400_000)
    if days and not rest:
        return "D" if days == 1 else f"{days}D"
    return str(pd.tseries.frequencies.to_offset(pd.Timedelta(milliseconds=step_ms)).freqstr)


def format_timestamp(ts_ms: int) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, the form every Rollcast message uses.

    >>> format_timestamp(0)
    '1970-01-01T00:00:00Z'
    """
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    text = moment.isoformat(timespec="milliseconds" if ts_ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def timestamps_ms(frame: pd.DataFrame) -> np.ndarray:
    """A long frame's ``ts`` column as epoch milliseconds (int64)."""
    return frame[TS].dt.as_unit("ms").astype("int64").to_numpy()


def channel_columns(frame: pd.DataFrame) -> list[str]:
    """The value columns of a long frame, in sorted order."""
    return sorted(c for c in frame.columns if c not in (SERIES, TS))


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop repeated (series, ts) rows, keeping the first; return the frame and the count dropped.

    >>> f = pd.DataFrame({"series": ["a", "a", "b"], "ts": [1, 1, 1], "x": [1.0, 9.0, 2.0]})
    >>> kept, dropped = deduplicate(f)
    >>> kept["x"].tolist(), dropped
    ([1.0, 2.0], 1)
    """
    kept = frame.drop_duplicates(subset=[SERIES, TS], keep="first")
    return kept, len(frame) - len(kept)


def regularize(series_frame: pd.DataFrame, freq: str, max_gap: int) -> pd.DataFrame:
    """One series on a complete grid of ``freq`` steps, indexed by ``ts``, gaps filled per policy.

    Runs of up to ``max_gap`` missing steps are interpolated linearly; longer runs stay NaN.
    """
    values = series_frame.set_index(TS)[channel_columns(series_frame)].sort_index()
    if values.empty:
        return values
    grid = pd.date_range(values.index[0], values.index[-1], freq=freq)
    values = values.reindex(grid)
    values.index.name = TS
    filled = values.interpolate(method="linear", limit_area="inside")
    return filled.mask(_missing_run_length(values) > max_gap)


def _missing_run_length(values: pd.DataFrame) -> pd.DataFrame:
    """For each missing cell, the length of the run of missing cells it belongs to (else 0)."""
    missing = values.isna()
    run_ids = (~missing).cumsum()
    lengths = {c: missing[c].groupby(run_ids[c]).transform("sum") for c in values.columns}
    return pd.DataFrame(lengths, index=values.index).where(missing, 0)


# --- every series at once -------------------------------------------------------------------------

# Input rows placed per pass of regularize_all: bounds its temporaries (~60 bytes a row, so
# ~16 MB) whatever the fleet's size, and keeps them near the caches and off fresh pages.
CHUNK_ROWS = 1 << 18


class LongRows(Protocol):
    """Rows of many series as arrays, sorted by (code, ts), no (code, ts) twice.

    ``store.StoredRows`` is one; :class:`LongArrays` builds one from a long frame.
    """

    @property
    def series(self) -> list[str]: ...  # ids: codes index them

    @property
    def codes(self) -> np.ndarray: ...  # (N,) int series code of each row

    @property
    def ts_ms(self) -> np.ndarray: ...  # (N,) int64 epoch milliseconds

    @property
    def values(self) -> np.ndarray: ...  # (N, C) float, NaN where a channel was not observed

    @property
    def channels(self) -> tuple[str, ...]: ...


def series_bounds(rows: LongRows) -> np.ndarray:
    """``(S+1,)`` row offsets: series ``i`` is rows ``bounds[i]:bounds[i+1]`` (rows sorted by
    code; a series with no rows has an empty range)."""
    codes = rows.codes
    return np.searchsorted(codes, np.arange(len(rows.series) + 1, dtype=codes.dtype)).astype(
        np.int64
    )


@dataclass(frozen=True)
class LongArrays:
    """The arrays of a long frame, as :func:`regularize_all` takes them (a :class:`LongRows`)."""

    series: list[str]
    codes: np.ndarray  # (N,) int32
    ts_ms: np.ndarray  # (N,) int64
    values: np.ndarray  # (N, C) float64
    channels: tuple[str, ...]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> LongArrays:
        """A de-duplicated long frame's rows, sorted by (series, ts); O(N log N).

        >>> rows = LongArrays.from_frame(pd.DataFrame(
        ...     {"series": ["b", "a", "b"], "ts": pd.to_datetime([5, 1, 2], unit="ms"), "x": 1.0}))
        >>> rows.series, rows.codes.tolist(), rows.ts_ms.tolist()
        (['a', 'b'], [0, 1, 1], [1, 2, 5])
        """
        channels = channel_columns(frame)
        codes, names = pd.factorize(frame[SERIES], sort=True)
        ts_ms = timestamps_ms(frame)
        order = np.lexsort((ts_ms, codes))
        values = frame[channels].to_numpy(dtype=np.float64)[order]
        return cls(
            list(names), codes[order].astype(np.int32), ts_ms[order], values, tuple(channels)
        )


@dataclass(frozen=True)
class RegularSeries:
    """Every series of a long frame on its own complete grid of one step, back to back.

    ``values`` is float32, read-only: what training windows are cut from (:class:`WindowSet`
    takes it as is), at half the memory of float64. Each value is the float64 result of
    :func:`regularize` rounded once to float32.
    """

    series: list[str]  # ids, in code order; only series with rows
    offsets: np.ndarray  # (S+1,) int64: series i covers rows offsets[i]:offsets[i+1]
    start_ms: np.ndarray  # (S,) int64 first grid timestamp of each series (epoch ms)
    step_ms: int
    values: np.ndarray  # (T, C) float32, NaN in a gap over max_gap and outside observed channels
    channels: tuple[str, ...]
    open_hours: OpenHours | None = None  # set: each grid holds only the open steps

    def __len__(self) -> int:
        return len(self.series)

    def frame(self, i: int) -> pd.DataFrame:
        """Series ``i`` as :func:`regularize` returns it, but float32: a read-only view of the
        values; O(1), or O(steps) for the time index of open steps."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        start_ms = int(self.start_ms[i])
        if self.open_hours is None:
            start = pd.Timestamp(start_ms, unit="ms", tz="UTC")
            grid = pd.date_range(start, periods=hi - lo, freq=step_to_freq(self.step_ms), name=TS)
        else:
            first = self.open_hours.open_index(np.array([start_ms]), self.step_ms, start_ms)
            times = self.open_hours.open_time(first + np.arange(hi - lo), self.step_ms, start_ms)
            grid = pd.DatetimeIndex(pd.to_datetime(times, unit="ms", utc=True), name=TS)
        return pd.DataFrame(self.values[lo:hi], index=grid, columns=list(self.channels), copy=False)


@dataclass(frozen=True)
class _Layout:
    """Where each series' rows are in the input and its grid in the output."""

    rows: np.ndarray  # (S+1,) series i is input rows rows[i]:rows[i+1]
    offsets: np.ndarray  # (S+1,) and output rows offsets[i]:offsets[i+1]
    start_ms: np.ndarray  # (S,) its first timestamp: its grid's first step
    step_ms: int
    max_gap: int
    open_hours: OpenHours | None = None
    first_open: np.ndarray | None = None  # (S,) with open hours: the open index of start_ms


def regularize_all(
    rows: LongRows, step_ms: int, max_gap: int, open_hours: OpenHours | None = None
) -> RegularSeries:
    """Every series of ``rows`` as :func:`regularize` makes it, all at once, in numpy.

    Parameters
    ----------
    rows
        ``N`` rows of ``S`` series with ``C`` channels, sorted by (code, ts), no (code, ts) twice.
    step_ms
        The grid's step. A row off its series' grid (not a whole number of steps after the
        series' first row) is dropped, as ``regularize``'s reindex drops it.
    max_gap
        Runs of up to this many missing steps of a channel are interpolated linearly between
        the observed steps either side; longer runs, and steps before a channel's first or
        after its last observation in a series, stay NaN.
    open_hours
        The series' weekly schedule, or None (every step exists). With one, each grid holds
        only the open steps from a series' first open step to its last, ``max_gap`` counts
        open steps (a night is no gap), and a row at a closed step is dropped as an off-grid
        one is. The open index of each row is computed per distinct grid phase (one, for
        series floored to the step, as ingest stores them).

    Returns
    -------
    RegularSeries
        The ``S`` series that have rows, in code order; ``values`` ``(T, C)`` float32, ``T``
        the steps of every grid. Time and memory grow linearly with ``N + T * C`` (one pass
        over the rows, one over the grid); temporaries are bounded by :data:`CHUNK_ROWS`.

    Raises
    ------
    ValueError
        If the arrays' shapes disagree, or the rows are not sorted or repeat a (code, ts).
    """
    values = np.asarray(rows.values)
    codes, ts_ms = np.asarray(rows.codes), np.asarray(rows.ts_ms, dtype=np.int64)
    _check_rows(codes, ts_ms, values, len(rows.series), len(rows.channels))
    layout = _layout(codes, ts_ms, step_ms, max_gap, open_hours)
    out = np.full((int(layout.offsets[-1]), values.shape[1]), np.nan, dtype=np.float32)
    for first, last in _chunks(layout.rows, CHUNK_ROWS):
        _place(layout, first, last, ts_ms, values, out)
    out.flags.writeable = False
    names = [rows.series[code] for code in codes[layout.rows[:-1]].tolist()]
    return RegularSeries(
        names, layout.offsets, layout.start_ms, step_ms, out, tuple(rows.channels), open_hours
    )


def _check_rows(
    codes: np.ndarray, ts_ms: np.ndarray, values: np.ndarray, n_series: int, n_channels: int
) -> None:
    """Raise ValueError unless the arrays agree and codes are sorted and in range; O(N)."""
    n = len(codes)
    if codes.ndim != 1 or ts_ms.shape != (n,) or values.shape != (n, n_channels):
        raise ValueError(f"rows disagree: {codes.shape}, {ts_ms.shape}, {values.shape}")
    if n and (codes[0] < 0 or codes[-1] >= n_series or bool((codes[1:] < codes[:-1]).any())):
        raise ValueError("row codes must be sorted and index the series")


def _layout(
    codes: np.ndarray,
    ts_ms: np.ndarray,
    step_ms: int,
    max_gap: int,
    open_hours: OpenHours | None = None,
) -> _Layout:
    """Each series' input rows and output grid: one grid from its first to its last row (its
    open steps, with open hours); O(N), O(S) more with open hours."""
    n = len(codes)
    starts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    rows = np.concatenate([[0], starts, [n]] if n else [[0]]).astype(np.int64)
    start_ms, last_ms = ts_ms[rows[:-1]], ts_ms[rows[1:] - 1]
    if open_hours is None:
        steps = (last_ms - start_ms) // step_ms + 1
        offsets = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
        return _Layout(rows, offsets, start_ms, step_ms, max_gap)
    phase = start_ms % step_ms
    first_open = _open_index(open_hours, start_ms, step_ms, phase)
    steps = _open_index(open_hours, last_ms + step_ms, step_ms, phase) - first_open
    offsets = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    start_open = _open_time(open_hours, first_open, step_ms, phase)
    return _Layout(rows, offsets, start_open, step_ms, max_gap, open_hours, first_open)


def _open_index(
    hours: OpenHours, ts_ms: np.ndarray, step_ms: int, phase_ms: np.ndarray
) -> np.ndarray:
    """:meth:`OpenHours.open_index` of each timestamp on the grid of its own phase."""
    return _by_phase(lambda ts, phase: hours.open_index(ts, step_ms, phase), ts_ms, phase_ms)


def _open_time(
    hours: OpenHours, index: np.ndarray, step_ms: int, phase_ms: np.ndarray
) -> np.ndarray:
    """:meth:`OpenHours.open_time` of each open index on the grid of its own phase."""
    return _by_phase(lambda i, phase: hours.open_time(i, step_ms, phase), index, phase_ms)


def _by_phase(
    compute: Callable[[np.ndarray, int], np.ndarray], values: np.ndarray, phase_ms: np.ndarray
) -> np.ndarray:
    """``compute(values, phase)`` for each distinct phase; O(n) for one phase, O(n log n) more."""
    if not len(values):
        return np.empty(0, np.int64)
    if bool((phase_ms == phase_ms[0]).all()):
        return compute(values, int(phase_ms[0]))
    out = np.empty(len(values), np.int64)
    order = np.argsort(phase_ms, kind="stable")
    phases, firsts = np.unique(phase_ms[order], return_index=True)
    for phase, part in zip(phases.tolist(), np.split(order, firsts[1:]), strict=True):
        out[part] = compute(values[part], phase)
    return out


def _chunks(rows: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Runs of whole series of about ``size`` rows (one series may hold more), as series ranges."""
    cuts = np.searchsorted(rows, np.arange(size, rows[-1], size))
    edges = np.unique(np.concatenate([[0], cuts, [len(rows) - 1]])).tolist()
    return list(pairwise(edges))


def _place(
    layout: _Layout, first: int, last: int, ts_ms: np.ndarray, values: np.ndarray, out: np.ndarray
) -> None:
    """Put series ``first:last`` on their grids in ``out`` and fill their short gaps.

    O(rows + filled steps) for those series' rows: each row goes to its grid position, then
    each channel's short runs of missing steps are interpolated.
    """
    lo, hi = int(layout.rows[first]), int(layout.rows[last])
    counts = np.diff(layout.rows[first : last + 1])
    sid = np.repeat(np.arange(first, last), counts)
    if bool((np.diff(ts_ms[lo:hi]) <= 0)[sid[1:] == sid[:-1]].any()):
        raise ValueError("each series' rows must be sorted by ts, with no ts twice")
    steps, on_grid = _grid_steps(layout, first, last, ts_ms[lo:hi], counts)
    position = steps + np.repeat(layout.offsets[first:last], counts)
    chunk = values[lo:hi]
    if on_grid.all():
        out[position] = chunk
    else:
        out[position[on_grid]] = chunk[on_grid]
    for c in range(chunk.shape[1]):
        observed = on_grid & ~np.isnan(chunk[:, c])
        _fill_gaps(out[:, c], position, observed, sid, chunk[:, c], layout.max_gap)


def _grid_steps(
    layout: _Layout, first: int, last: int, ts_ms: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's step on its series' grid (from 0), and whether the row is on that grid (a
    whole number of steps after the series' first row and, with open hours, at an open step)."""
    hours, first_open = layout.open_hours, layout.first_open
    if hours is None or first_open is None:
        start = np.repeat(layout.start_ms[first:last], counts)
        steps, off = np.divmod(ts_ms - start, layout.step_ms)
        return steps, off == 0
    phase = np.repeat(layout.start_ms[first:last] % layout.step_ms, counts)
    on_grid = ((ts_ms - phase) % layout.step_ms == 0) & hours.is_open(ts_ms)
    index = _open_index(hours, ts_ms, layout.step_ms, phase)
    return index - np.repeat(first_open[first:last], counts), on_grid


def _fill_gaps(
    column: np.ndarray,
    position: np.ndarray,
    observed: np.ndarray,
    sid: np.ndarray,
    y: np.ndarray,
    max_gap: int,
) -> None:
    """Interpolate into ``column`` each run of 1 to ``max_gap`` missing steps inside a series.

    ``position`` (grid row), ``observed``, ``sid`` (series) and ``y`` (this channel's value)
    are per input row. O(rows + filled steps). ``np.interp`` between each run's two observed
    neighbours, on grid positions, in float64, is exactly what pandas' linear interpolation does.
    """
    kept = np.flatnonzero(observed)
    x = position[kept]
    missing = np.diff(x) - 1
    kept_sid = sid[kept]
    inside = kept_sid[1:] == kept_sid[:-1]
    runs = np.flatnonzero((missing >= 1) & (missing <= max_gap) & inside)
    if not len(runs):
        return
    lengths = missing[runs]
    firsts = x[runs] + 1 - (np.cumsum(lengths) - lengths)
    cells = np.repeat(firsts, lengths) + np.arange(lengths.sum())
    xp = np.stack([x[runs], x[runs + 1]], axis=1).ravel()
    fp = np.stack([y[kept[runs]], y[kept[runs + 1]]], axis=1).ravel().astype(np.float64)
    distinct = np.concatenate([[True], xp[1:] != xp[:-1]])  # a step can end a run, start the next
    column[cells] = np.interp(cells, xp[distinct], fp[distinct])


@dataclass(frozen=True)
class WindowSet:
    """Windows of ``lookback + horizon`` steps, kept as start indices into series values.

    ``values`` holds every series back to back as ``(T, C)`` float32; window ``i`` covers rows
    ``starts[i] : starts[i] + lookback + horizon``. Nothing is copied per window until
    :attr:`inputs` or :attr:`targets` is read; training gathers batches by index instead.
    """

    values: np.ndarray  # (T, C) float32
    starts: np.ndarray  # (N,) int64
    lookback: int
    horizon: int
    series: np.ndarray  # (N,) series id of each window
    # (T,) int64 epoch ms of each row, for the calendar features; None where rows have no time.
    times: np.ndarray | None = None
    # The columns forecast (the others are inputs only); None: every column.
    target_columns: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def inputs(self) -> np.ndarray:
        """``(N, L, C)``"""
        return self.values[self.starts[:, None] + np.arange(self.lookback)]

    @property
    def targets(self) -> np.ndarray:
        """``(N, H, C_out)``: the forecast columns of the horizon."""
        rows = self.values[self.starts[:, None] + self.lookback + np.arange(self.horizon)]
        return self.forecast_columns(rows)

    @property
    def target_inputs(self) -> np.ndarray:
        """``(N, L, C_out)``: the forecast columns of the lookback (what the naive baselines
        repeat)."""
        return self.forecast_columns(self.inputs)

    def forecast_columns(self, values: np.ndarray) -> np.ndarray:
        """The forecast columns ``(..., C_out)`` of ``values`` ``(..., C)``."""
        return values if self.target_columns is None else values[..., list(self.target_columns)]

    def forecasting(self, columns: tuple[int, ...] | None) -> WindowSet:
        """These windows with ``columns`` as the forecast ones (None: every column)."""
        return replace(self, target_columns=columns)

    @property
    def origins(self) -> np.ndarray | None:
        """``(N,)`` the time of each window's last input step (None without row times)."""
        return None if self.times is None else self.times[self.starts + self.lookback - 1]

    def subset(self, index: np.ndarray) -> WindowSet:
        return replace(self, starts=self.starts[index], series=self.series[index])


def window_starts(values: np.ndarray, first: int, last: int, span: int) -> np.ndarray:
    """Starts in ``[first, last]`` of windows of ``span`` rows that hold no NaN.

    >>> v = np.array([[0.0], [1.0], [np.nan], [3.0], [4.0], [5.0]])
    >>> window_starts(v, 0, 4, span=2).tolist()
    [0, 3, 4]
    """
    first, last = max(first, 0), min(last, len(values) - span)
    if last < first:
        return np.empty(0, dtype=np.int64)
    missing = np.concatenate([[0], np.cumsum(np.isnan(values).any(axis=1))])
    starts = np.arange(first, last + 1)
    return starts[missing[starts + span] == missing[starts]].astype(np.int64)


def split_point(n_steps: int, val_fraction: float) -> int:
    """Index of the first step whose target belongs to validation (the last ``val_fraction``)."""
    return n_steps - max(1, round(n_steps * val_fraction))


# Rolling-origin validation: the validation steps are cut into folds spread evenly over the
# latest VAL_REACH of a series' steps, so early stopping and the tuner judge a model on several
# stretches of the recent past, not on one (a week of holidays, a heat wave). Blocked
# validation of this kind is sound for autoregressive forecasters (Bergmeir, Hyndman and Koo,
# "A note on the validity of cross-validation for evaluating autoregressive time series
# prediction", Comput. Stat. Data Anal. 120, 2018).
VAL_REACH = 0.5
# Folds by default (the train flow's ROLLCAST_VAL_FOLDS, the backtest's --val-folds).
VAL_FOLDS = 4
MAX_VAL_FOLDS = 64  # past this a fold is a few origins even on years of history
# A fold holds at least this many horizons of target steps, so it scores several origins.
MIN_FOLD_HORIZONS = 2


def validation_blocks(n_steps: int, val_steps: int, horizon: int, folds: int) -> np.ndarray:
    """The ``(K, 2)`` ``[start, end)`` steps of each validation fold, the last ending at
    ``n_steps``: ``val_steps`` in all, in at most ``folds`` blocks spread evenly over the
    latest :data:`VAL_REACH` of the steps (fewer where a fold would hold under
    :data:`MIN_FOLD_HORIZONS` horizons; one block: the last ``val_steps``).

    >>> validation_blocks(100, 20, horizon=2, folds=4).tolist()
    [[57, 62], [70, 75], [83, 88], [95, 100]]
    >>> validation_blocks(100, 20, horizon=5, folds=4).tolist()
    [[65, 75], [90, 100]]
    """
    folds = max(1, min(folds, val_steps // (MIN_FOLD_HORIZONS * horizon)))
    reach = max(val_steps, round(n_steps * VAL_REACH))
    ends = n_steps - np.round(np.arange(folds - 1, -1, -1) * reach / folds).astype(np.int64)
    sizes = np.full(folds, val_steps // folds, dtype=np.int64)
    sizes[-1] += val_steps - sizes.sum()
    return np.stack([ends - sizes, ends], axis=1)


def block_overlap(
    target_starts: np.ndarray, horizon: int, blocks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which windows' targets (``horizon`` steps from ``target_starts``) touch no block, and
    which lie inside one: two ``(N,)`` masks.

    >>> clear, inside = block_overlap(np.array([0, 3, 5, 7, 9]), 2, np.array([[5, 8]]))
    >>> clear.tolist(), inside.tolist()
    ([True, True, False, False, True], [False, False, True, False, False])
    """
    after = np.searchsorted(blocks[:, 1], target_starts, side="right")  # first block ending later
    block = blocks[np.minimum(after, len(blocks) - 1)]
    before_end = after < len(blocks)
    clear = ~before_end | (target_starts + horizon <= block[:, 0])
    inside = before_end & (target_starts >= block[:, 0]) & (target_starts + horizon <= block[:, 1])
    return clear, inside


def channel_scale(series: Mapping[str, pd.DataFrame], channels: Sequence[str]) -> np.ndarray:
    """Each channel's standard deviation over every series: a fixed unit for comparing errors.

    >>> frame = pd.DataFrame({"a": [0.0, 2.0, np.nan], "b": [1.0, 1.0, 1.0]})
    >>> channel_scale({"s": frame}, ["a", "b"]).tolist()
    [1.0, 1.0]
    """
    values = np.concatenate(
        [frame[list(channels)].to_numpy(np.float64) for frame in series.values()]
    )
    spread = np.nanstd(values, axis=0)
    return np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)


def build_window_sets(
    series_values: Mapping[str, pd.DataFrame],
    channels: Sequence[str],
    lookback: int,
    horizon: int,
    val_fraction: float,
    folds: int = 1,
) -> tuple[WindowSet, WindowSet]:
    """Train and validation windows over many regularized series.

    Each series' last ``val_fraction`` of steps, in ``folds`` blocks spread over its latest
    part (:func:`validation_blocks`), holds the validation targets; training targets touch no
    block. Inputs of either may reach into the other's steps.
    """
    blocks, times, train, val, offset = [], [], [], [], 0
    for series_id, frame in series_values.items():
        values = frame[list(channels)].to_numpy(dtype=np.float32)
        val_steps = len(values) - split_point(len(values), val_fraction)
        held_out = validation_blocks(len(values), val_steps, horizon, folds)
        fit, check = held_out_starts(values, lookback, horizon, held_out)
        train.append((series_id, offset + fit))
        val.append((series_id, offset + check))
        blocks.append(values)
        times.append(_index_ms(frame))
        offset += len(values)
    stacked = np.concatenate(blocks) if blocks else np.empty((0, len(channels)), np.float32)
    known = [t for t in times if t is not None]
    stamps = np.concatenate(known) if known and len(known) == len(times) else None
    return _window_set(stacked, stamps, train, (lookback, horizon)), _window_set(
        stacked, stamps, val, (lookback, horizon)
    )


def held_out_starts(
    values: np.ndarray, lookback: int, horizon: int, blocks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Starts of the training windows (targets clear of every block) and of the validation
    windows (targets inside one) over ``values``; no window holds a NaN."""
    span = lookback + horizon
    every = window_starts(values, 0, len(values) - span, span)
    clear, inside = block_overlap(every + lookback, horizon, blocks)
    return every[clear], every[inside]


def _index_ms(frame: pd.DataFrame) -> np.ndarray | None:
    """The epoch milliseconds of a regularized frame's time index (None if it has no times)."""
    if not isinstance(frame.index, pd.DatetimeIndex):
        return None
    return frame.index.as_unit("ms").asi8.astype(np.int64)


def _window_set(
    values: np.ndarray,
    times: np.ndarray | None,
    parts: list[tuple[str, np.ndarray]],
    span: tuple[int, int],
) -> WindowSet:
    starts = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    labels = [np.full(len(p[1]), p[0], dtype=object) for p in parts]
    series = np.concatenate(labels) if labels else np.empty(0, dtype=object)
    return WindowSet(values, starts.astype(np.int64), *span, series, times)


class Append(enum.Enum):
    """What :meth:`RollingWindow.append` did with an observation."""

    ACCEPTED = "accepted"  # placed, or held until its grace period ends
    DUPLICATE = "duplicate"  # a step already observed: dropped, the first one wins
    LATE = "late"  # older than the grace period allows: refused


# Why a held step was refused, in its dead letter's detail.
DISPLACED = "a later far record displaced it"
OUTRUN = "the series' own records came within reach of it"
BATCH_ENDED = "no record confirmed it in its batch"


class Jump(enum.Enum):
    """What :meth:`JumpRule.judge` says of a step, against its series' clock."""

    WITHIN = "within"  # within reach of the series' newest step: admitted as usual
    HELD = "held"  # too far ahead: held (displacing any step held before) until confirmed
    REPEAT = "repeat"  # the step held, again: a duplicate, the first one wins
    CONFIRMS = "confirms"  # a second far step near the held one: the clock moves to both


@dataclass(frozen=True, slots=True)
class HeldJump(Generic[Held]):
    """A step too far ahead of its series' newest, waiting for another record to confirm it.

    ``item`` is what to accept if it is confirmed (ingest: the record and its observation;
    serve: the record and its values); None once its batch ended unconfirmed and it was
    dead-lettered: only its time is kept, as a claim a later record may still confirm.
    """

    step_ms: int  # on the series' grid, epoch ms
    ahead_steps: int  # how far ahead of the series' newest step it was when it came
    item: Held | None = None


@dataclass(frozen=True, slots=True)
class JumpRule:
    """A series' clock never jumps on the word of one record: the one rule of ingest and serve.

    A step more than ``max_jump_steps`` steps ahead of the series' newest accepted step is
    held, one per series (the newest far one; memory stays bounded whatever the fleet), until
    a record of another step within ``max_jump_steps`` of it, and also out of reach, confirms
    it: then both are accepted, in step order. Meanwhile steps within reach are admitted as
    usual, so a backfill behind a stray current record goes on. A held step that is never
    confirmed is refused as ``future``: when a far record displaces it, when the series' own
    clock comes within reach of it, or at the end of its batch (ingest's flush, serve's poll),
    so every record is decided before its offset is committed. After the batch its time is
    kept as a claim (:attr:`HeldJump.item` None): a series back from a long outage resumes at
    its second live record even when each batch holds one record of it.

    >>> rule, hour = JumpRule(max_jump_steps=2), 3_600_000
    >>> rule.judge(10 * hour, 12 * hour, hour, None).value
    'within'
    >>> held = HeldJump(20 * hour, 10)
    >>> [rule.judge(10 * hour, s * hour, hour, held).value for s in (13, 21, 20, 30)]
    ['held', 'confirms', 'held', 'held']
    >>> rule.outrun(18 * hour, hour, held)
    True
    """

    max_jump_steps: int

    def judge(
        self, newest_ms: int | None, step_ms: int, step_len_ms: int, held: HeldJump | None
    ) -> Jump:
        """What to do with ``step_ms`` of a series whose newest step is ``newest_ms`` (None:
        no step yet), on steps of ``step_len_ms`` (1: not known yet, so never held)."""
        reach_ms = self.max_jump_steps * step_len_ms
        if newest_ms is None or step_len_ms <= 1 or step_ms - newest_ms <= reach_ms:
            return Jump.WITHIN
        if held is None:
            return Jump.HELD
        if step_ms == held.step_ms:
            return Jump.REPEAT if held.item is not None else Jump.HELD
        return Jump.CONFIRMS if abs(step_ms - held.step_ms) <= reach_ms else Jump.HELD

    def outrun(self, newest_ms: int, step_len_ms: int, held: HeldJump) -> bool:
        """Whether the series' own clock came within reach of the held step: it is dropped."""
        return held.step_ms - newest_ms <= self.max_jump_steps * step_len_ms

    def hold(self, newest_ms: int, step_ms: int, step_len_ms: int, item: Held) -> HeldJump[Held]:
        """The held jump of ``item`` at ``step_ms``."""
        return HeldJump(step_ms, (step_ms - newest_ms) // step_len_ms, item)

    @staticmethod
    def left_after(held: HeldJump[Held], why: str) -> HeldJump[Held] | None:
        """What stays held once the held record is refused for ``why``: at a batch's end its
        time, as a claim; otherwise nothing."""
        return replace(held, item=None) if why == BATCH_ENDED else None

    @staticmethod
    def refusal(held: HeldJump, why: str) -> str:
        """The ``future`` dead letter's detail for a held step never confirmed."""
        return (
            f"held: {held.ahead_steps} steps ahead of the series' newest step, unconfirmed ({why})"
        )


class Gap(enum.Enum):
    """How a step was placed in the ring, by the gap policy."""

    NONE = "none"  # the step right after the previous one
    FILLED = "filled"  # a short gap before it was interpolated
    RESTARTED = "restarted"  # a long gap before it emptied the window


class Step:
    """One observed step placed in a rolling window, and the whole window ending at it.

    ``window`` ``(L, C)`` is None while fewer than ``lookback`` steps are held. While the step
    is its window's newest, ``window`` is a view of the ring (no copy: the serve loop gathers a
    batch straight from the rings); before the ring is written again, the step keeps a copy,
    unless it was released (:meth:`release`; then ``window`` is None). So it is always this step's
    window when read; copy it to hold on to it.
    """

    __slots__ = ("_ring", "_window", "gap", "ts_ms", "values")

    def __init__(self, ts_ms: int, values: np.ndarray, gap: Gap, ring: np.ndarray | None) -> None:
        self.ts_ms = ts_ms
        self.values = values  # (C,) as observed
        self.gap = gap
        self._ring = ring  # the ring's view of the window, while it is the newest
        self._window: np.ndarray | None = None

    @property
    def window(self) -> np.ndarray | None:
        return self._ring if self._ring is not None else self._window

    def keep(self) -> None:
        """Copy the window out of the ring, which is about to be written."""
        if self._ring is not None:
            self._window, self._ring = self._ring.copy(), None

    def release(self) -> None:
        """The window was read for the last time: the ring may move on without a copy."""
        self._ring = None


class RollingWindow:
    """The newest ``lookback`` steps of one series, in a fixed-size numpy ring.

    Observations may arrive out of order by up to ``grace_steps`` steps: a step is held until an
    observation ``grace_steps`` newer arrives, then placed in timestamp order. Memory is bounded
    by ``lookback * channels`` floats plus the held steps, whatever the stream does.

    With ``open_hours`` the window holds open steps only: a gap is counted in open steps
    (:meth:`OpenHours.open_steps_between`), so a night or a weekend is no gap, and a step in
    closed hours is accepted (it moves event time on) but never placed, as training drops it.

    >>> w = RollingWindow(lookback=2, n_channels=1, step_ms=10, max_gap=1)
    >>> [w.append(t, np.array([float(t)])).value for t in (0, 10, 10, 40, 0)]
    ['accepted', 'accepted', 'duplicate', 'accepted', 'late']
    >>> [(s.ts_ms, s.gap.value, s.window is not None) for s in w.placed()]
    [(0, 'none', False), (10, 'none', True), (40, 'restarted', False)]
    """

    def __init__(
        self,
        lookback: int,
        n_channels: int,
        step_ms: int,
        max_gap: int,
        grace_steps: int = 0,
        open_hours: OpenHours | None = None,
    ) -> None:
        # Every step is written twice, L apart, so the window is always one contiguous slice.
        self._ring = np.zeros((2 * lookback, n_channels), dtype=np.float32)
        self._observed_ts = np.full(lookback, -1, dtype=np.int64)  # -1: an interpolated step
        self._lookback = lookback
        self._step_ms = step_ms
        self._max_gap = max_gap
        self._grace_ms = grace_steps * step_ms
        self._open_hours = open_hours
        self._held: dict[int, np.ndarray] = {}
        self._newest_ms: int | None = None
        self._placed: list[Step] = []
        self._newest: Step | None = None  # the newest placed step, whose window is the ring's
        self._count = 0  # steps written since the last restart
        self.last_ts_ms: int | None = None  # the newest placed step

    @property
    def lookback(self) -> int:
        return self._lookback

    @property
    def is_whole(self) -> bool:
        return self._count >= self._lookback

    @property
    def newest_ms(self) -> int | None:
        """The newest step accepted, placed or still held for its grace period (None: none)."""
        return self._newest_ms

    def append(self, ts_ms: int, values: np.ndarray) -> Append:
        """Take one observation at ``ts_ms`` (floored to the step grid)."""
        ts_ms -= ts_ms % self._step_ms
        if self.last_ts_ms is not None and ts_ms <= self.last_ts_ms:
            return Append.DUPLICATE if self._holds(ts_ms) else Append.LATE
        if ts_ms in self._held:
            return Append.DUPLICATE
        self._held[ts_ms] = values
        if self._newest_ms is None or ts_ms > self._newest_ms:
            self._newest_ms = ts_ms
        self._release(self._newest_ms - self._grace_ms)
        return Append.ACCEPTED

    def placed(self) -> list[Step]:
        """The steps placed since the last call, oldest first."""
        placed, self._placed = self._placed, []
        return placed

    def window(self) -> np.ndarray:
        """The newest ``lookback`` steps, oldest first, as a new ``(L, C)`` array."""
        return self._view().copy()

    def _view(self) -> np.ndarray:
        start = self._count % self._lookback
        return self._ring[start : start + self._lookback]

    def _holds(self, ts_ms: int) -> bool:
        assert self.last_ts_ms is not None
        if self._open_hours is not None and not self._open_hours.is_open_at(ts_ms):
            return False  # a closed step is never placed
        back = self._steps_apart(ts_ms, self.last_ts_ms)
        if back >= min(self._count, self._lookback):
            return False
        return bool(self._observed_ts[(self._count - 1 - back) % self._lookback] == ts_ms)

    def _release(self, up_to_ms: int) -> None:
        while self._held:
            ts_ms = min(self._held) if len(self._held) > 1 else next(iter(self._held))
            if ts_ms > up_to_ms:
                return
            self._place(ts_ms, self._held.pop(ts_ms))

    def _steps_apart(self, earlier_ms: int, later_ms: int) -> int:
        """Steps from one placed (or placeable) step to a later one: open steps, with open
        hours; the open-hours count runs only across a gap, not once per record."""
        apart = (later_ms - earlier_ms) // self._step_ms
        if self._open_hours is None or apart <= 1:
            return apart
        between = self._open_hours.open_steps_between(earlier_ms, later_ms, self._step_ms)
        return int(between) + 1

    def _place(self, ts_ms: int, values: np.ndarray) -> None:
        if self._open_hours is not None and not self._open_hours.is_open_at(ts_ms):
            return  # closed steps do not exist: nothing to place, no gap either
        if self._newest is not None:
            self._newest.keep()  # the ring is about to move on from its window
        gap = Gap.NONE
        if self.last_ts_ms is not None:
            missing = self._steps_apart(self.last_ts_ms, ts_ms) - 1
            if 0 < missing <= self._max_gap:
                self._interpolate(missing, values)
                gap = Gap.FILLED
            elif missing > self._max_gap:
                self._count, gap = 0, Gap.RESTARTED
        self._push(values, ts_ms)
        self.last_ts_ms = ts_ms
        step = Step(ts_ms, values, gap, self._view() if self.is_whole else None)
        self._placed.append(step)
        self._newest = step

    def _interpolate(self, missing: int, values: np.ndarray) -> None:
        # A copy: with max_gap > lookback the ring wraps onto the row being read.
        previous = self._ring[(self._count - 1) % self._lookback].copy()
        for k in range(1, missing + 1):
            self._push(previous + (values - previous) * (k / (missing + 1)), -1)

    def _push(self, values: np.ndarray, observed_ts: int) -> None:
        slot = self._count % self._lookback
        self._ring[slot] = self._ring[slot + self._lookback] = values
        self._observed_ts[slot] = observed_ts
        self._count += 1

"""Training data: stored rows → the series one model can train on, under one data contract.

numpy and pandas only; the caller reads the store (any :class:`pipeline.store.SeriesStore`'s
``rows``, or :class:`pipeline.windows.LongArrays` of a frame) and hands the rows in. Training
repairs what it can and skips what it cannot, saying why, so one poisoned record (a value beyond
the record policy, a far-future step, a foreign channel) never fails a run.

Cost grows linearly with the rows read: every step below is an array operation over all series
at once (:func:`pipeline.windows.regularize_all`), plus a few microseconds of Python per series.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.contract import DEFAULT_FREQ, DataContract
from pipeline.open_steps import OpenHours, detect_open_hours
from pipeline.windows import (
    LongArrays,
    LongRows,
    RegularSeries,
    freq_to_ms,
    infer_step_ms,
    regularize_all,
    series_bounds,
    step_to_freq,
    window_starts,
)

logger = logging.getLogger(__name__)

# The step of a series with one reading, which says nothing of its step: any will do.
ONE_READING_STEP_MS = 3_600_000
# Readings a series' step is inferred from: its newest ones (a step rarely changes).
STEP_READINGS = 64
# The gap policies of recurring closed periods (config.StoreSettings.gap_policy).
AUTO, CONTINUOUS, OPEN_HOURS = "auto", "continuous", "open_hours"


class RowLimits(Protocol):
    """The part of the record policy a stored row must meet (``records.RecordPolicy`` has it)."""

    @property
    def max_abs_value(self) -> float: ...

    @property
    def max_ahead_ms(self) -> int: ...


@dataclass(frozen=True)
class TrainingData:
    """The stored series fit to train on, on their regular grid, and why others were left out."""

    series: dict[str, pd.DataFrame]
    contract: DataContract  # the channels, step and gap policy the series were prepared under
    skipped: dict[str, str]  # series id -> reason
    repaired_rows: int  # rows dropped because the record policy refuses them
    rows_read: int = 0
    version: int | None = None  # the table version the rows were read at

    @property
    def channels(self) -> tuple[str, ...]:
        return self.contract.channels

    @property
    def freq(self) -> str:
        return self.contract.freq

    def longest(self) -> int:
        """Steps of the longest series (0 when there is none)."""
        return max((len(frame) for frame in self.series.values()), default=0)


def prepare_training_data(
    rows: LongRows,
    limits: RowLimits,
    freq: str | None,
    max_gap: int,
    span: int,
    gap_policy: str = AUTO,
) -> TrainingData:
    """Every stored series the record policy accepts, regularized, with a window of ``span``.

    * rows the policy refuses (a store written before it, or by hand) are dropped;
    * the model's channels are those of most series, and its step (``freq``, else inferred from
      each series' readings) too; a series with other channels or another step is skipped;
    * recurring closed periods (``gap_policy`` ``auto`` or ``open_hours``): the open hours
      detected in the fit series' timestamps, pooled (:func:`detect_open_hours`), join the
      contract and the series are regularized on their open steps, so a night is no gap;
      ``open_hours`` skips every series when none are found, ``continuous`` never looks;
    * a series with no stretch of ``span`` steps without a gap over ``max_gap`` is skipped.
    """
    read = len(rows.codes)
    rows, repaired = policy_rows(rows, limits, int(time.time() * 1000))
    bounds = series_bounds(rows)
    own = channel_sets(rows, bounds)
    steps = _series_steps(rows, bounds, freq)
    channels = contract_channels(own)
    shared = Counter(steps).most_common(1)[0][0] if steps else freq_to_ms(freq or DEFAULT_FREQ)
    contract = DataContract(channels, freq or step_to_freq(shared), max_gap)
    skipped = _misfits(rows.series, own, steps, contract, shared)
    fit = [i for i, name in enumerate(rows.series) if name not in skipped]
    fit_rows = _subset(rows, bounds, fit, channels)
    hours = _open_hours(fit_rows, shared, gap_policy)
    if hours is None and gap_policy == OPEN_HOURS:
        skipped |= {rows.series[i]: NO_OPEN_HOURS for i in fit if own[i]}
        fit_rows = _subset(rows, bounds, [], channels)
    contract = replace(contract, open_hours=hours.to_text() if hours else None)
    regular = regularize_all(fit_rows, shared, max_gap, hours)
    series, short = _with_a_window(regular, span)
    counts = dict(zip(rows.series, np.diff(bounds).tolist(), strict=True))
    kind = "open steps" if hours else "steps"
    for name in short:
        skipped[name] = (
            f"no stretch of {span} {kind} without a gap over {max_gap} ({counts[name]} rows)"
        )
    for series_id, reason in list(skipped.items())[:20]:
        logger.warning("series %r left out of training: %s", series_id[:64], reason)
    if len(skipped) > 20:
        logger.warning("... and %d more series left out", len(skipped) - 20)
    return TrainingData(series, contract, skipped, repaired, read, getattr(rows, "version", None))


NO_OPEN_HOURS = (
    "no recurring closed periods (nights, weekends) in the data, and ROLLCAST_GAP_POLICY="
    "open_hours requires them: set it to auto or continuous"
)


def _open_hours(rows: LongRows, step_ms: int, gap_policy: str) -> OpenHours | None:
    """The open hours of the fit series under ``gap_policy``, logged when found; O(rows)."""
    if gap_policy == CONTINUOUS:
        return None
    hours = detect_open_hours(rows.ts_ms, step_ms, series_bounds(rows))
    if hours is not None:
        logger.info(
            "the series are closed outside %s (UTC): training on open steps", hours.to_text()
        )
    return hours


def _with_a_window(regular: RegularSeries, span: int) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The series with a gap-free stretch of ``span`` steps, as frames; and those without."""
    series, short = {}, []
    for i, name in enumerate(regular.series):
        values = regular.values[regular.offsets[i] : regular.offsets[i + 1]]
        if len(window_starts(values, 0, len(values), span)):
            series[name] = regular.frame(i)
        else:
            short.append(name)
    return series, short


def frames_to_rows(frames: list[pd.DataFrame]) -> LongArrays:
    """Long frames of stored series as rows (for callers holding frames, such as tests)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return LongArrays([], np.empty(0, np.int32), np.empty(0, np.int64), np.empty((0, 0)), ())
    return LongArrays.from_frame(pd.concat(frames, ignore_index=True))


def policy_rows(rows: LongRows, limits: RowLimits, now_ms: int) -> tuple[LongRows, int]:
    """The rows the record policy accepts, and how many it refused; O(N * C)."""
    values = rows.values
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values) | (np.abs(values) > limits.max_abs_value)
    ok = ~bad.any(axis=1) & (rows.ts_ms <= now_ms + limits.max_ahead_ms)
    if ok.all():
        return rows, 0
    kept = LongArrays(rows.series, rows.codes[ok], rows.ts_ms[ok], values[ok], tuple(rows.channels))
    return kept, int(len(ok) - ok.sum())


def channel_sets(rows: LongRows, bounds: np.ndarray) -> list[tuple[str, ...]]:
    """Each series' channels: those it has a value of (empty for a series with no rows)."""
    present = ~np.isnan(rows.values)
    has_rows = bounds[1:] > bounds[:-1]
    seen = np.zeros((len(rows.series), len(rows.channels)), dtype=bool)
    if has_rows.any():
        seen[has_rows] = np.logical_or.reduceat(present, bounds[:-1][has_rows], axis=0)
    names = tuple(rows.channels)
    return [tuple(c for c, s in zip(names, row, strict=True) if s) for row in seen.tolist()]


def contract_channels(own: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The channel set most series have (ties: the larger set, then by name)."""
    sets = Counter(c for c in own if c)
    if not sets:
        return ()
    return max(sets, key=lambda c: (sets[c], len(c), c))


def _series_steps(rows: LongRows, bounds: np.ndarray, freq: str | None) -> list[int]:
    """Each series' step in ms: ``freq``'s, else inferred from its newest readings."""
    if freq is not None:
        return [freq_to_ms(freq)] * len(rows.series)
    ts = rows.ts_ms
    return [
        infer_step_ms(ts[max(lo, hi - STEP_READINGS) : hi]) or ONE_READING_STEP_MS
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]


def _misfits(
    names: list[str],
    own: list[tuple[str, ...]],
    steps: list[int],
    contract: DataContract,
    shared_ms: int,
) -> dict[str, str]:
    """The series another step or other channels keep out of the model, with the reason."""
    skipped = {}
    for name, channels, step in zip(names, own, steps, strict=True):
        if not channels:
            continue  # no rows left after the policy: nothing to train on, nothing to say
        if step != shared_ms:
            skipped[name] = f"its step {step_to_freq(step)} is not the model's {contract.freq}"
        elif channels != contract.channels:
            model = list(contract.channels)[:8]
            skipped[name] = f"its channels {list(channels)[:8]} are not the model's {model}"
    return skipped


def _subset(
    rows: LongRows, bounds: np.ndarray, fit: list[int], channels: tuple[str, ...]
) -> LongRows:
    """The rows of series ``fit``, with ``channels`` only; no copy when that is every row."""
    columns = [list(rows.channels).index(c) for c in channels]
    if len(fit) == len(rows.series) and tuple(rows.channels) == channels:
        return rows
    take = (
        np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in fit])
        if fit
        else np.empty(0, np.int64)
    )
    return LongArrays(
        rows.series, rows.codes[take], rows.ts_ms[take], rows.values[take][:, columns], channels
    )

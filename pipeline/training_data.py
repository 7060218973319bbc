"""Training data: stored series → the series one model can train on, under one data contract.

numpy and pandas only; the caller reads the store (any :class:`pipeline.store.SeriesStore`)
and hands its series in. Training repairs what it can and skips what it cannot, saying why, so
one poisoned record (a value beyond the record policy, a far-future step, a foreign channel)
never fails a run. Cost grows with the stored rows: each series is filtered and regularized once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.contract import DEFAULT_FREQ, DataContract
from pipeline.windows import (
    channel_columns,
    infer_step_ms,
    regularize,
    step_to_freq,
    timestamps_ms,
    window_starts,
)

logger = logging.getLogger(__name__)

# The step of a series with one reading, which says nothing of its step: any will do.
ONE_READING_STEP_MS = 3_600_000


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
    stored: Iterable[tuple[str, pd.DataFrame]],
    limits: RowLimits,
    freq: str | None,
    max_gap: int,
    span: int,
) -> TrainingData:
    """Every stored series the record policy accepts, regularized, with a window of ``span``.

    * rows the policy refuses (a store written before it, or by hand) are dropped;
    * the model's channels are those of most series, and its step (``freq``, else inferred from
      each series' readings) too; a series with other channels or another step is skipped;
    * a series with no stretch of ``span`` steps without a gap over ``max_gap`` is skipped.
    """
    frames, repaired = kept_rows(stored, limits)
    channels = contract_channels(frames)
    steps = {sid: freq or step_to_freq(_step_ms(frame)) for sid, frame in frames.items()}
    shared = Counter(steps.values()).most_common(1)[0][0] if steps else (freq or DEFAULT_FREQ)
    contract = DataContract(channels, shared, max_gap)
    series, skipped = {}, {}
    for series_id, frame in frames.items():
        if steps[series_id] != shared:
            skipped[series_id] = f"its step {steps[series_id]} is not the model's {shared}"
            continue
        regular = _regular_or_reason(frame, contract, span)
        if isinstance(regular, str):
            skipped[series_id] = regular
        else:
            series[series_id] = regular
    for series_id, reason in skipped.items():
        logger.warning("series %r left out of training: %s", series_id[:64], reason)
    return TrainingData(series, contract, skipped, repaired)


def kept_rows(
    stored: Iterable[tuple[str, pd.DataFrame]], limits: RowLimits
) -> tuple[dict[str, pd.DataFrame], int]:
    """Each series' rows the policy accepts, and how many rows it refused in all."""
    now_ms = int(time.time() * 1000)
    frames, repaired = {}, 0
    for series_id, frame in stored:
        kept = policy_rows(frame, limits, now_ms)
        repaired += len(frame) - len(kept)
        frames[series_id] = kept
    return frames, repaired


def _step_ms(frame: pd.DataFrame) -> int:
    return infer_step_ms(timestamps_ms(frame)) or ONE_READING_STEP_MS


def policy_rows(frame: pd.DataFrame, limits: RowLimits, now_ms: int) -> pd.DataFrame:
    """The rows of one stored series that the record policy accepts."""
    values = frame[channel_columns(frame)].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        in_bounds = np.isfinite(values) & (np.abs(values) <= limits.max_abs_value)
    stamps = timestamps_ms(frame)
    ok = in_bounds.all(axis=1) & (stamps <= now_ms + limits.max_ahead_ms)
    return frame[ok]


def contract_channels(frames: dict[str, pd.DataFrame]) -> tuple[str, ...]:
    """The channel set most series have (ties: the larger set, then by name)."""
    sets = Counter(tuple(channel_columns(f)) for f in frames.values() if not f.empty)
    if not sets:
        return ()
    return max(sets, key=lambda c: (sets[c], len(c), c))


def _regular_or_reason(
    frame: pd.DataFrame, contract: DataContract, span: int
) -> str | pd.DataFrame:
    """The regularized series, or the reason it cannot be trained on."""
    own = tuple(channel_columns(frame))
    if own != contract.channels:
        return f"its channels {list(own)[:8]} are not the model's {list(contract.channels)[:8]}"
    regular = regularize(frame, contract.freq, contract.max_gap)
    values = regular.to_numpy(dtype=np.float32)
    if len(window_starts(values, 0, len(values), span)) == 0:
        return (
            f"no stretch of {span} steps without a gap over {contract.max_gap} ({len(frame)} rows)"
        )
    return regular

"""The series store: one Parquet file per series under ``<data_dir>/store``.

Writes are atomic (a temporary file renamed over the old one), so a crash mid-write leaves
the previous version intact. On a repeated (series, ts) the row already stored wins.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.records import RecordPolicy
from pipeline.windows import (
    SERIES,
    TS,
    channel_columns,
    deduplicate,
    infer_step_ms,
    regularize,
    step_to_freq,
    timestamps_ms,
    window_starts,
)

logger = logging.getLogger(__name__)

SUFFIX = ".parquet"
# File names are at most 255 bytes; a longer quoted id is hashed and read back from the file.
MAX_QUOTED_CHARS = 200
HASHED_PREFIX = "~"


class SeriesStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, series_id: str) -> Path:
        return self.root / file_name(series_id)

    def series_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(_series_id(path) for path in self.root.glob(f"*{SUFFIX}"))

    def read(self, series_id: str) -> pd.DataFrame:
        """All stored rows of one series, sorted by ``ts``; empty if it was never stored."""
        path = self._path(series_id)
        if not path.exists():
            return pd.DataFrame(columns=[SERIES, TS])
        return pd.read_parquet(path)

    def channels(self) -> set[str]:
        """Every channel some stored series has, from the files' schemas (no rows are read).

        A damaged file adds nothing here; reading its series says what is wrong with it.
        """
        if not self.root.exists():
            return set()
        names: set[str] = set()
        for path in self.root.glob(f"*{SUFFIX}"):
            try:
                names.update(pq.read_schema(path).names)
            except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
                continue
        return names - {SERIES, TS}

    def read_all(self) -> dict[str, pd.DataFrame]:
        return {series_id: self.read(series_id) for series_id in self.series_ids()}

    def append(self, frame: pd.DataFrame, stored: dict[str, pd.DataFrame] | None = None) -> int:
        """Merge a long frame into the store; return how many new rows were written.

        ``stored`` may hold what :meth:`read` returned for some of the series, to save a read.
        """
        if frame.empty:
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        stored = stored or {}
        return sum(
            self._merge(str(series_id), rows, stored.get(str(series_id)))
            for series_id, rows in frame.groupby(SERIES)
        )

    def _merge(self, series_id: str, rows: pd.DataFrame, stored: pd.DataFrame | None) -> int:
        stored = self.read(series_id) if stored is None else stored
        rows = rows.dropna(axis=1, how="all")  # channels of other series in the same batch
        parts = [rows] if stored.empty else [stored, rows]
        merged, _ = deduplicate(pd.concat(parts, ignore_index=True))
        merged = merged.sort_values(TS, kind="stable").reset_index(drop=True)
        path = self._path(series_id)
        tmp = path.with_suffix(".tmp")
        merged.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return len(merged) - len(stored)


def file_name(series_id: str) -> str:
    """A safe file name for any series id: quoted, or hashed when quoting makes it too long.

    A quoted name never starts with ``~`` followed by hex alone; a hashed one is ``~<sha256>``.

    >>> file_name("sensor/1"), file_name("x" * 300)[:12]
    ('sensor%2F1.parquet', '~0d4e2ca9e9c')
    """
    quoted = quote(series_id, safe="")
    if len(quoted) <= MAX_QUOTED_CHARS and not quoted.startswith(HASHED_PREFIX):
        return quoted + SUFFIX
    digest = hashlib.sha256(series_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{HASHED_PREFIX}{digest}{SUFFIX}"


def _series_id(path: Path) -> str:
    stem = path.name[: -len(SUFFIX)]
    if not stem.startswith(HASHED_PREFIX):
        return unquote(stem)
    column = pq.read_table(path, columns=[SERIES]).column(0)
    return str(column[0].as_py())


@dataclass(frozen=True)
class TrainingData:
    """The stored series fit to train on, on their regular grid, and why others were left out."""

    series: dict[str, pd.DataFrame]
    channels: tuple[str, ...]
    freq: str  # the step the series share (pandas frequency)
    skipped: dict[str, str]  # series id -> reason
    repaired_rows: int  # rows dropped because the record policy refuses them


def load_training_data(
    store: SeriesStore, policy: RecordPolicy, freq: str | None, max_gap: int, span: int
) -> TrainingData:
    """Every stored series the record policy accepts, regularized, with a window of ``span``.

    Training repairs what it can and skips what it cannot, saying why; one poisoned record
    (a value beyond the policy, a far-future step, a foreign channel) never fails a run:

    * rows the policy refuses (a store written before it, or by hand) are dropped;
    * the model's channels are those of most series, and its step (``freq``, else inferred from
      each series' readings) too; a series with other channels or another step is skipped;
    * a series with no gap-free stretch of ``span`` steps is skipped.
    """
    now_ms = int(time.time() * 1000)
    frames, repaired = {}, 0
    for series_id, frame in store.read_all().items():
        kept = policy_rows(frame, policy, now_ms)
        repaired += len(frame) - len(kept)
        frames[series_id] = kept
    channels = contract_channels(frames)
    steps = {sid: freq or step_to_freq(_step_ms(frame)) for sid, frame in frames.items()}
    shared = Counter(steps.values()).most_common(1)[0][0] if steps else (freq or "h")
    skipped: dict[str, str] = {}
    series: dict[str, pd.DataFrame] = {}
    for series_id, frame in frames.items():
        if steps[series_id] != shared:
            skipped[series_id] = f"its step {steps[series_id]} is not the model's {shared}"
            continue
        reason = _regular_or_reason(frame, channels, shared, max_gap, span)
        if isinstance(reason, str):
            skipped[series_id] = reason
        else:
            series[series_id] = reason
    for series_id, reason in skipped.items():
        logger.warning("series %r left out of training: %s", series_id[:64], reason)
    return TrainingData(series, channels, shared, skipped, repaired)


def _step_ms(frame: pd.DataFrame) -> int:
    return infer_step_ms(timestamps_ms(frame)) or 3_600_000  # one reading: any step will do


def policy_rows(frame: pd.DataFrame, policy: RecordPolicy, now_ms: int) -> pd.DataFrame:
    """The rows of one stored series that the record policy accepts."""
    values = frame[channel_columns(frame)].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        in_bounds = np.isfinite(values) & (np.abs(values) <= policy.max_abs_value)
    stamps = timestamps_ms(frame)
    ok = in_bounds.all(axis=1) & (stamps <= now_ms + policy.max_ahead_ms)
    return frame[ok]


def contract_channels(frames: dict[str, pd.DataFrame]) -> tuple[str, ...]:
    """The channel set most series have (ties: the larger set, then by name)."""
    sets = Counter(tuple(channel_columns(f)) for f in frames.values() if not f.empty)
    if not sets:
        return ()
    return max(sets, key=lambda c: (sets[c], len(c), c))


def _regular_or_reason(
    frame: pd.DataFrame, channels: tuple[str, ...], freq: str, max_gap: int, span: int
) -> str | pd.DataFrame:
    """The regularized series, or the reason it cannot be trained on."""
    own = tuple(channel_columns(frame))
    if own != channels:
        return f"its channels {list(own)[:8]} are not the model's {list(channels)[:8]}"
    regular = regularize(frame, freq, max_gap)
    values = regular.to_numpy(dtype=np.float32)
    if len(window_starts(values, 0, len(values), span)) == 0:
        return f"no stretch of {span} steps without a gap over {max_gap} ({len(frame)} rows)"
    return regular

"""The series store port: what ingest writes to and training reads from.

A store holds the observations of many series as one long table (``series``, ``ts``, one
column per channel). It is append-only: a repeated (series, ts) is stored again, and every read
keeps the row stored first. :class:`pipeline.delta_store.DeltaSeriesStore` is the adapter (a
Delta Lake table, local or on object storage); another table format is one module like it.

Ingest records, in the same transaction as the rows, the newest offset of each source partition
it wrote (:class:`OffsetRange`), so a restarted or a second writer resumes from the store's own
record: what reaches the table from a topic does so once. The newest record time is recorded
with it, so that a partition whose offsets started again (a broker replaced by an empty one) is
told from a replay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline import RollcastError
from pipeline.windows import series_bounds


@dataclass(frozen=True)
class StoreInfo:
    """What a store says of itself, read from its metadata (no rows are read)."""

    location: str  # a folder or a table URI
    series: int
    channels: tuple[str, ...]  # every channel some stored series has, sorted
    rows: int = 0  # stored rows, duplicates included
    files: int = 0
    bytes: int = 0
    version: int | None = None  # the table version read


@dataclass(frozen=True)
class OffsetRange:
    """The offsets of one source partition that a write holds: ``first`` to ``last``, and the
    newest record time (epoch ms, Kafka's record timestamp) among them, if known."""

    first: int
    last: int
    newest_ms: int | None = None


@dataclass(frozen=True)
class StoredRows:
    """Stored rows of many series, first-stored row per (series, ts), sorted by (series, ts).

    ``codes[i]`` indexes ``series``; ``values`` is ``(N, C)`` float32 in ``channels`` order,
    NaN where a series has no such channel.
    """

    series: list[str]
    codes: np.ndarray  # (N,) int32
    ts_ms: np.ndarray  # (N,) int64 epoch milliseconds
    values: np.ndarray  # (N, C) float32
    channels: tuple[str, ...]
    version: int | None = None  # the table version they were read at

    def __len__(self) -> int:
        return len(self.codes)

    def bounds(self) -> np.ndarray:
        """``(S+1,)`` row offsets: series ``i`` is rows ``bounds[i]:bounds[i+1]``."""
        return series_bounds(self)

    def frame(self, i: int) -> pd.DataFrame:
        """Series ``i``'s rows as a long frame (its channels only)."""
        lo, hi = self.bounds()[i : i + 2]
        values = self.values[lo:hi]
        own = [c for j, c in enumerate(self.channels) if not np.isnan(values[:, j]).all()]
        frame = pd.DataFrame({c: values[:, self.channels.index(c)].astype(np.float64) for c in own})
        frame.insert(0, "ts", pd.to_datetime(self.ts_ms[lo:hi], unit="ms", utc=True))
        frame.insert(0, "series", self.series[i])
        return frame


@dataclass(frozen=True)
class RecentSteps:
    """What ingest needs of one stored series: its channels and newest steps (epoch ms)."""

    channels: frozenset[str]
    steps: list[int]  # sorted, at most the number asked for


class OffsetsTakenError(RollcastError):
    """Another writer already stored some of these offsets; ``versions`` says up to where."""

    def __init__(self, versions: dict[str, int]) -> None:
        super().__init__(f"offsets already in the table: {versions}")
        self.versions = versions


class StoreError(RollcastError):
    """The series store cannot be read or written."""


class SeriesStore(Protocol):
    """Append-only storage of series; on a repeated (series, ts) the row stored first wins."""

    def append(self, frame: pd.DataFrame, offsets: Mapping[str, OffsetRange] | None = None) -> int:
        """Store every row of a long frame in one transaction, with each source's ``offsets``.

        Raises :class:`OffsetsTakenError` when the store already records an offset of a range.
        Returns the rows written.
        """
        ...

    def ingested_offsets(self, sources: list[str]) -> dict[str, int]:
        """The newest offset stored for each of ``sources`` that has one."""
        ...

    def ingested_times(self, sources: list[str]) -> dict[str, int]:
        """The newest record time (epoch ms) stored for each of ``sources`` that has one."""
        ...

    def cutoff_for(self, max_rows: int, version: int | None = None) -> int | None:
        """A time (epoch ms) after which about ``max_rows`` rows are stored; None: all fit."""
        ...

    def recent_steps(self, steps: int) -> dict[str, RecentSteps]:
        """Every stored series' channels and newest ``steps`` steps, in one read."""
        ...

    def read(self, series_id: str) -> pd.DataFrame:
        """Every stored row of one series, sorted by ``ts``; empty if it was never stored."""
        ...

    def rows(self, since_ms: int | None = None, version: int | None = None) -> StoredRows:
        """Every stored row (at ``version``; newer than ``since_ms``), de-duplicated."""
        ...

    def series_ids(self) -> list[str]:
        """Every stored series, sorted."""
        ...

    def channels(self) -> set[str]:
        """Every channel some stored series has, read without reading rows."""
        ...

    def info(self) -> StoreInfo: ...

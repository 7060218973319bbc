"""The series store port: what ingest writes to and training reads from.

A store holds the observations of many series as long frames (``series``, ``ts``, one column
per channel). :class:`pipeline.parquet_store.ParquetSeriesStore` is today's adapter; another
backend (a table format on object storage) is one new module with a class like it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pandas as pd


@dataclass(frozen=True)
class StoreInfo:
    """What a store says of itself without reading rows."""

    location: str  # a folder or a table URI
    series: int
    channels: tuple[str, ...]  # every channel some stored series has, sorted


class SeriesStore(Protocol):
    """Append-and-read storage of series; on a repeated (series, ts) the stored row wins."""

    def append(self, frame: pd.DataFrame, stored: dict[str, pd.DataFrame] | None = None) -> int:
        """Store a long frame's new rows; return how many were new. ``stored`` may hold what
        :meth:`read` returned for some of its series, to save a read."""
        ...

    def read(self, series_id: str) -> pd.DataFrame:
        """Every stored row of one series, sorted by ``ts``; empty if it was never stored."""
        ...

    def series_ids(self) -> list[str]:
        """Every stored series, sorted."""
        ...

    def channels(self) -> set[str]:
        """Every channel some stored series has, read without reading rows."""
        ...

    def info(self) -> StoreInfo: ...


def each_series(store: SeriesStore) -> Iterator[tuple[str, pd.DataFrame]]:
    """Every stored series with its rows, one read at a time (one series in memory per step
    for the caller that does not keep them)."""
    for series_id in store.series_ids():
        yield series_id, store.read(series_id)

"""The series store: one Parquet file per series under ``<data_dir>/store``.

Writes are atomic (a temporary file renamed over the old one), so a crash mid-write leaves
the previous version intact. On a repeated (series, ts) the row already stored wins.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd

from pipeline.windows import SERIES, TS, deduplicate, regularize

logger = logging.getLogger(__name__)

SUFFIX = ".parquet"


class SeriesStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, series_id: str) -> Path:
        # Series ids are arbitrary strings; quoting makes them safe file names.
        return self.root / f"{quote(series_id, safe='')}{SUFFIX}"

    def series_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(unquote(p.name[: -len(SUFFIX)]) for p in self.root.glob(f"*{SUFFIX}"))

    def read(self, series_id: str) -> pd.DataFrame:
        """All stored rows of one series, sorted by ``ts``; empty if it was never stored."""
        path = self._path(series_id)
        if not path.exists():
            return pd.DataFrame(columns=[SERIES, TS])
        return pd.read_parquet(path)

    def read_all(self) -> dict[str, pd.DataFrame]:
        return {series_id: self.read(series_id) for series_id in self.series_ids()}

    def append(self, frame: pd.DataFrame) -> int:
        """Merge a long frame into the store; return how many new rows were written."""
        self.root.mkdir(parents=True, exist_ok=True)
        return sum(self._merge(series_id, rows) for series_id, rows in frame.groupby(SERIES))

    def _merge(self, series_id: str, rows: pd.DataFrame) -> int:
        stored = self.read(series_id)
        parts = [rows] if stored.empty else [stored, rows]
        merged, _ = deduplicate(pd.concat(parts, ignore_index=True))
        merged = merged.sort_values(TS, kind="stable").reset_index(drop=True)
        path = self._path(series_id)
        tmp = path.with_suffix(".tmp")
        merged.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return len(merged) - len(stored)


def load_regular_series(store: SeriesStore, freq: str, max_gap: int) -> dict[str, pd.DataFrame]:
    """Every stored series on its regular grid, gaps filled per the policy in ``windows``."""
    return {sid: regularize(frame, freq, max_gap) for sid, frame in store.read_all().items()}


def shared_channels(series_values: dict[str, pd.DataFrame]) -> tuple[str, ...]:
    """The channels every series has; a model over several series forecasts exactly these."""
    sets = [set(frame.columns) for frame in series_values.values()]
    return tuple(sorted(set.intersection(*sets))) if sets else ()

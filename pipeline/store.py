"""The series store: one Parquet file per series under ``<data_dir>/store``.

Writes are atomic (a temporary file renamed over the old one), so a crash mid-write leaves
the previous version intact. On a repeated (series, ts) the row already stored wins.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow.parquet as pq

from pipeline.windows import SERIES, TS, deduplicate, regularize

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


def load_regular_series(store: SeriesStore, freq: str, max_gap: int) -> dict[str, pd.DataFrame]:
    """Every stored series on its regular grid, gaps filled per the policy in ``windows``."""
    return {sid: regularize(frame, freq, max_gap) for sid, frame in store.read_all().items()}


def shared_channels(series_values: dict[str, pd.DataFrame]) -> tuple[str, ...]:
    """The channels every series has; a model over several series forecasts exactly these."""
    sets = [set(frame.columns) for frame in series_values.values()]
    return tuple(sorted(set.intersection(*sets))) if sets else ()

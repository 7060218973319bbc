"""The old series store: one Parquet file per series under ``<data_dir>/store``.

Rollcast stores series in a Delta table now (:mod:`pipeline.delta_store`); this layout is kept
so :func:`pipeline.maintenance.migrate_parquet` can read a store written before, and tests can
write one. Writes are atomic (a temporary file renamed
over the old one), so a crash mid-write leaves the previous version intact. On a repeated
(series, ts) the row already stored wins. An append rewrites each touched series' file, so its
cost grows with the history of the series it touches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow.parquet as pq

from pipeline.store import StoreInfo
from pipeline.windows import SERIES, TS, deduplicate

SUFFIX = ".parquet"
# File names are at most 255 bytes; a longer quoted id is hashed and read back from the file.
MAX_QUOTED_CHARS = 200
HASHED_PREFIX = "~"


class ParquetSeriesStore:
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

    def info(self) -> StoreInfo:
        """Where the store is, how many series it holds and their channels (no rows read)."""
        return StoreInfo(str(self.root), len(self.series_ids()), tuple(sorted(self.channels())))

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

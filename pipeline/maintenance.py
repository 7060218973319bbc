"""Keeping the series table fast and small: compaction, de-duplication, vacuum, migration.

Ingest appends a small file per flush and never rewrites; this is where files are merged
(z-ordered by series, so a read of some series skips most files), repeated (series, ts) rows
dropped (the first stored kept, as every read does) and files no version within the retention
still needs deleted. Every step is one Delta commit: readers see the table before or after it,
and a concurrent ingest commit makes it retry, never lose rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake
from deltalake.exceptions import CommitFailedError

from pipeline.delta_store import (
    STORED_AT,
    DeltaSeriesStore,
    SeriesCodes,
    arrow_dataset,
    first_stored,
)
from pipeline.parquet_store import ParquetSeriesStore
from pipeline.progress import Progress
from pipeline.store import StoreError, StoreInfo
from pipeline.windows import SERIES, TS

logger = logging.getLogger(__name__)

# Series rewritten per de-duplication commit: bounds its memory and its conflict window.
DEDUPLICATE_SERIES_PER_COMMIT = 1000
# Rows appended per migration commit.
MIGRATE_ROWS_PER_COMMIT = 1_000_000


@dataclass(frozen=True)
class CompactionReport:
    before: StoreInfo
    after: StoreInfo
    duplicates_removed: int
    files_vacuumed: int

    def as_dict(self) -> dict[str, object]:
        return {
            "files": [self.before.files, self.after.files],
            "bytes": [self.before.bytes, self.after.bytes],
            "rows": [self.before.rows, self.after.rows],
            "duplicates_removed": self.duplicates_removed,
            "files_vacuumed": self.files_vacuumed,
            "version": self.after.version,
        }


def compact(store: DeltaSeriesStore, retention_hours: float) -> CompactionReport:
    """Drop repeated rows, merge small files z-ordered by series, then vacuum.

    Cost: one streamed read of ``series, ts, stored_at``, a rewrite of the series with
    repeats, and one rewrite of the table's files.
    """
    before = store.info()
    if store.latest() is None:
        return CompactionReport(before, before, 0, 0)
    removed = deduplicate(store)
    _retrying(store, lambda: store.latest().optimize.z_order([SERIES, TS]))  # type: ignore[union-attr]
    vacuumed = _retrying(store, lambda: vacuum(store, retention_hours))
    after = store.info()
    logger.info(
        "compacted %s: %d -> %d files, %d -> %d bytes, %d repeated rows removed",
        store.uri,
        before.files,
        after.files,
        before.bytes,
        after.bytes,
        removed,
    )
    return CompactionReport(before, after, removed, vacuumed)


def vacuum(store: DeltaSeriesStore, retention_hours: float) -> int:
    """Delete files no version younger than ``retention_hours`` needs; return how many."""
    table = store.latest()
    if table is None:
        return 0
    deleted = table.vacuum(
        retention_hours=int(retention_hours),
        dry_run=False,
        enforce_retention_duration=False,
    )
    return len(deleted)


def series_with_repeats(store: DeltaSeriesStore) -> list[str]:
    """The series that have a (series, ts) stored more than once (one streamed read)."""
    codes, parts = SeriesCodes(), []
    for batch in store.batches([SERIES, TS]):
        ts = batch.column(TS).cast(pa.int64()).to_numpy(zero_copy_only=False)
        parts.append((codes.of(batch.column(SERIES)), ts))
    if not parts:
        return []
    code = np.concatenate([c for c, _ in parts])
    ts = np.concatenate([t for _, t in parts])
    order = np.lexsort((ts, code))
    code, ts = code[order], ts[order]
    repeated = (code[1:] == code[:-1]) & (ts[1:] == ts[:-1])
    return sorted({codes.ids[c] for c in np.unique(code[1:][repeated])})


def deduplicate(store: DeltaSeriesStore) -> int:
    """Rewrite each series with repeated steps keeping its first stored rows; return removed."""
    series = series_with_repeats(store)
    removed = 0
    for lo in range(0, len(series), DEDUPLICATE_SERIES_PER_COMMIT):
        chunk = series[lo : lo + DEDUPLICATE_SERIES_PER_COMMIT]
        removed += _retrying(store, lambda chunk=chunk: _rewrite_first_stored(store, chunk))
    return removed


def _rewrite_first_stored(store: DeltaSeriesStore, series: list[str]) -> int:
    """Replace the rows of ``series`` by their first stored rows, in one commit."""
    table = store.latest()
    assert table is not None
    where = pc.field(SERIES).isin(series)
    rows = arrow_dataset(table, store.storage_options).to_table(filter=where)
    codes = pc.index_in(rows.column(SERIES), pa.array(series)).to_numpy(zero_copy_only=False)
    ts = rows.column(TS).cast(pa.int64()).to_numpy(zero_copy_only=False)
    stored = rows.column(STORED_AT).cast(pa.int64()).to_numpy(zero_copy_only=False)
    kept = rows.take(pa.array(first_stored(codes.astype(np.int32), ts, stored)))
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in series)
    write_deltalake(
        table,
        kept,
        mode="overwrite",
        predicate=f"{SERIES} IN ({quoted})",
        storage_options=store.storage_options or None,
    )
    return rows.num_rows - kept.num_rows


def _retrying(store: DeltaSeriesStore, step):  # type: ignore[no-untyped-def]
    """Run one commit, again on a fresh snapshot when a concurrent writer won the race."""
    waits = store.retry.waits()
    while True:
        try:
            return step()
        except CommitFailedError as err:
            wait = next(waits, None)
            if wait is None:
                raise StoreError(f"maintenance of {store.uri} kept losing races: {err}") from err
            time.sleep(wait)


def migrate_parquet(folder: Path, store: DeltaSeriesStore) -> int:
    """Append every row of a one-file-per-series Parquet store to the table; return rows.

    The files are read one at a time and committed in batches of about a million rows; the
    first stored row of a (series, ts) stays first. Run it once: running it again stores every
    row again (harmless to reads, removed by compaction).
    """
    old = ParquetSeriesStore(folder)
    ids = old.series_ids()
    progress, pending, written = Progress("migrate", len(ids), logger), [], 0
    for series_id in ids:
        pending.append(old.read(series_id))
        progress.advance()
        if sum(len(f) for f in pending) >= MIGRATE_ROWS_PER_COMMIT:
            written += store.append(pd.concat(pending, ignore_index=True))
            pending = []
    if pending:
        written += store.append(pd.concat(pending, ignore_index=True))
    progress.finish(f"{written} rows of {len(ids)} series")
    return written


def migrate_if_found(folder: Path, store: DeltaSeriesStore) -> int:
    """On first start after an upgrade: move an old Parquet store into the empty table.

    The old folder is renamed ``<folder>.migrated`` once every row is committed, and kept.
    """
    if not folder.is_dir() or not any(folder.glob("*.parquet")) or store.latest() is not None:
        return 0
    logger.warning("migrating the Parquet store in %s into the table %s", folder, store.uri)
    written = migrate_parquet(folder, store)
    folder.rename(folder.with_name(folder.name + ".migrated"))
    logger.warning("migrated %d rows; the old store is kept as %s.migrated", written, folder)
    return written

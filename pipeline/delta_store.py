"""The series table: every observation of the fleet in one Delta Lake table (delta-rs).

An adapter of :class:`pipeline.store.SeriesStore`, on a local path or object storage
(``s3://...`` with delta-rs storage options or the ``AWS_*`` variables). Spark, DuckDB and Polars
read the same table.

* **Append-only.** A write is one transaction holding every series of a flush; stored rows are
  never rewritten by ingest. Each row carries ``stored_at`` (the write's time), so on a repeated
  (series, ts) every read keeps the row stored first; :func:`pipeline.maintenance.compact`
  removes the rest.
* **Offsets in the same commit.** A write records each source partition's newest offset as a
  Delta application transaction (``txn``), and its newest record time as another
  (``<source>:newest-ms``); a writer whose offsets another already stored gets
  :class:`~pipeline.store.OffsetsTakenError`, and concurrent commits of one partition conflict, so a
  topic's record reaches the table once.
* **Concurrent writers.** A commit that loses a race (``CommitFailedError``) is retried with
  backoff on a fresh snapshot.

Cost: an append writes its own rows only (one Parquet file); reads stream record batches and
hold only the columns and time range asked for, so memory grows with the rows read, not the table.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import CommitProperties, Transaction

from pipeline import ResourceError
from pipeline.files import disk_full_cause, one_line
from pipeline.store import (
    OffsetRange,
    OffsetsTakenError,
    RecentSteps,
    StoredRows,
    StoreError,
    StoreInfo,
)
from pipeline.windows import SERIES, TS

logger = logging.getLogger(__name__)

STORED_AT = "stored_at"
META_COLUMNS = (SERIES, TS, STORED_AT)
TIMESTAMP = pa.timestamp("us", tz="UTC")  # Delta's timestamp type
# Record batches streamed per read step: bounds a read's working memory.
BATCH_ROWS = 1 << 20
# The app transaction beside a source's offsets that records its newest record time (epoch ms).
NEWEST_MS = ":newest-ms"


@dataclass(frozen=True)
class CommitRetry:
    """How a commit that lost a race with another writer is retried."""

    attempts: int = 20
    first_wait_s: float = 0.05
    max_wait_s: float = 2.0

    def waits(self) -> Iterator[float]:
        """Jittered exponential waits, one per retry."""
        wait = self.first_wait_s
        for _ in range(self.attempts - 1):
            yield wait * (0.5 + random.random())
            wait = min(wait * 2, self.max_wait_s)


class DeltaSeriesStore:
    """The series table at ``uri`` (a path or an object-store URI)."""

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, str] | None = None,
        retry: CommitRetry | None = None,
    ) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self.retry = retry or CommitRetry()
        self._table: DeltaTable | None = None

    # -- writing ---------------------------------------------------------------------------

    def append(self, frame: pd.DataFrame, offsets: Mapping[str, OffsetRange] | None = None) -> int:
        """Append ``frame`` and record ``offsets`` in one commit; return the rows written.

        Raises :class:`OffsetsTakenError` if the table already holds an offset of a range (checked
        on the snapshot the commit is made on), :class:`StoreError` once retries run out.
        A full disk is :class:`~pipeline.ResourceError` naming the table, never retried; the
        write's data files are removed and nothing is committed.
        """
        offsets = dict(offsets or {})
        if frame.empty:
            return 0
        rows = to_arrow(frame, pd.Timestamp.now(tz="UTC"))
        waits = self.retry.waits()
        while True:
            table = self.latest()
            if table is not None:
                _refuse_taken(table, offsets)
            try:
                self._write(table, rows, offset_transactions(table, offsets))
                return rows.num_rows
            except CommitFailedError as err:
                wait = next(waits, None)
                if wait is None:
                    raise StoreError(f"cannot commit to {self.uri}: {err}") from err
                logger.info("commit to %s lost a race (%s): retrying", self.uri, err)
                time.sleep(wait)

    def _write(self, table: DeltaTable | None, rows: pa.Table, txns: list[Transaction]) -> None:
        """One write; a full disk is :class:`~pipeline.ResourceError` (see :meth:`_full_disk`)."""
        try:
            write_deltalake(
                table if table is not None else self.uri,
                rows,
                mode="append",
                schema_mode="merge",
                storage_options=self.storage_options or None,
                commit_properties=CommitProperties(app_transactions=txns or None),
            )
        except CommitFailedError:
            raise
        except (DeltaError, OSError) as err:
            self._full_disk(err, rows)
            raise

    def _full_disk(self, err: Exception, rows: pa.Table) -> None:
        """If ``err`` is a full disk (or a quota, or a file-size limit), remove the data files
        this write left and raise :class:`~pipeline.ResourceError` naming the table: nothing
        was committed, so no version and no offsets were recorded. Any other error returns.
        """
        cause = disk_full_cause(err)
        if cause is None:
            return
        removed = remove_uncommitted(self.uri, rows.column(STORED_AT))
        if removed:
            logger.info("removed %d uncommitted data files of the failed write", removed)
        raise ResourceError(
            f"{self.uri}: {cause} ({one_line(err)}); nothing was committed: free space and "
            "run again"
        ) from err

    def ingested_offsets(self, sources: list[str]) -> dict[str, int]:
        """The newest offset the table records for each source that has one."""
        table = self.latest()
        if table is None:
            return {}
        versions = {source: table.transaction_version(source) for source in sources}
        return {source: v for source, v in versions.items() if v is not None}

    def ingested_times(self, sources: list[str]) -> dict[str, int]:
        """The newest record time (epoch ms) the table records for each source that has one."""
        table = self.latest()
        if table is None:
            return {}
        times = {source: table.transaction_version(source + NEWEST_MS) for source in sources}
        return {source: t for source, t in times.items() if t is not None}

    # -- reading ---------------------------------------------------------------------------

    def latest(self) -> DeltaTable | None:
        """The table at its newest version (None before the first write)."""
        if self._table is None:
            self._table = self._open()
        else:
            self._table.update_incremental()
        return self._table

    def _open(self, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def at(self, version: int | None) -> DeltaTable | None:
        """The table at ``version`` (time travel), or newest when None."""
        if version is None:
            return self.latest()
        table = self._open(version)
        if table is None:
            raise StoreError(f"{self.uri} has no table to read version {version} of")
        return table

    def channels(self) -> set[str]:
        return self.channels_at(self.latest())

    def _dataset(self, version: int | None = None) -> pds.Dataset | None:
        table = self.at(version)
        return None if table is None else arrow_dataset(table, self.storage_options)

    def batches(
        self, columns: list[str], since_ms: int | None = None, version: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns``, only rows newer than ``since_ms`` (pushed down)."""
        dataset = self._dataset(version)
        if dataset is None:
            return
        where = None if since_ms is None else pc.field(TS) > pa.scalar(since_ms * 1000, TIMESTAMP)
        yield from dataset.to_batches(columns=columns, filter=where, batch_size=BATCH_ROWS)

    def read(self, series_id: str) -> pd.DataFrame:
        """Every row of one series (first stored per ``ts``), sorted by ``ts``."""
        dataset = self._dataset()
        if dataset is None:
            return pd.DataFrame(columns=[SERIES, TS])
        table = dataset.to_table(filter=pc.field(SERIES) == series_id)
        frame = table.to_pandas().sort_values([TS, STORED_AT], kind="stable")
        frame = frame.drop_duplicates(subset=[TS], keep="first").drop(columns=[STORED_AT])
        return frame.dropna(axis=1, how="all").reset_index(drop=True)

    def rows(self, since_ms: int | None = None, version: int | None = None) -> StoredRows:
        """Every stored row newer than ``since_ms`` at ``version``, de-duplicated and sorted.

        Streams the table once; holds 28 bytes per row read (code, ts, stored_at, one float32 per
        channel) plus the sort's 8.
        """
        table = self.at(version)
        channels = tuple(sorted(self.channels_at(table)))
        reader = RowCollector(channels, _row_bound(table))
        for batch in self.batches([*META_COLUMNS, *channels], since_ms, version):
            reader.add(batch)
        pa.default_memory_pool().release_unused()  # the scan's buffers, before the sort's peak
        return reader.finish(None if table is None else table.version())

    def channels_at(self, table: DeltaTable | None) -> set[str]:
        if table is None:
            return set()
        return {f.name for f in table.schema().fields} - set(META_COLUMNS)

    def cutoff_for(self, max_rows: int, version: int | None = None) -> int | None:
        """A time (epoch ms) after which about ``max_rows`` rows are stored; None: all fit.

        Estimated from each file's row count and ``ts`` range (no rows are read), taking a
        file's rows as spread evenly over its range.
        """
        table = self.at(version)
        if table is None or _row_bound(table) <= max_rows:
            return None
        files = file_stats(table)
        lo = _ms(files.column("min.ts").combine_chunks())
        hi = _ms(files.column("max.ts").combine_chunks())
        counts = files.column("num_records").to_numpy().astype(np.float64)
        return newest_cutoff(lo, hi, counts, max_rows)

    def recent_steps(self, steps: int) -> dict[str, RecentSteps]:
        """Each series' channels and newest ``steps`` distinct steps, in one streamed read."""
        channels = tuple(sorted(self.channels()))
        newest = NewestSteps(steps, channels)
        for batch in self.batches([SERIES, TS, *channels]):
            newest.add(batch)
        return newest.finish()

    def series_ids(self) -> list[str]:
        names: set[str] = set()
        for batch in self.batches([SERIES]):
            names.update(pc.unique(batch.column(0)).to_pylist())
        return sorted(names)

    def info(self) -> StoreInfo:
        """Where the table is, its version, files, bytes, rows (duplicates included), series."""
        table = self.latest()
        if table is None:
            return StoreInfo(self.uri, 0, ())
        files = file_stats(table)
        rows, size = _column_sum(files, "num_records"), _column_sum(files, "size_bytes")
        channels = tuple(sorted(self.channels_at(table)))
        return StoreInfo(
            self.uri, len(self.series_ids()), channels, rows, files.num_rows, size, table.version()
        )


def arrow_dataset(table: DeltaTable, storage_options: Mapping[str, str]) -> pds.Dataset:
    """The table's live files at its version as a pyarrow dataset, in its schema.

    Read with pyarrow's own filesystems rather than ``DeltaTable.to_pyarrow_dataset``, whose
    filesystem handler sometimes aborts the interpreter at exit (delta-io/delta-rs#2184; seen
    here in about 1 of 30 runs). A file written before a channel existed reads it as null.
    """
    schema = pa.schema(table.schema().to_arrow())
    uris = table.file_uris()
    if not uris or "://" not in uris[0]:
        return pds.dataset(uris, schema=schema, format="parquet")
    filesystem = object_store(uris[0], storage_options)
    paths = [uri.split("://", 1)[1] for uri in uris]
    return pds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)


def object_store(uri: str, storage_options: Mapping[str, str]) -> pafs.FileSystem:
    """A pyarrow filesystem for an object-store URI, from delta-rs style options or ``AWS_*``."""
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.FileSystem.from_uri(uri)[0]
    options = {**{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    options.update({k.upper(): v for k, v in storage_options.items()})
    endpoint = options.get("AWS_ENDPOINT_URL") or options.get("AWS_ENDPOINT")
    kwargs: dict[str, object] = {"region": options.get("AWS_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if "AWS_ACCESS_KEY_ID" in options:
        kwargs.update(
            access_key=options["AWS_ACCESS_KEY_ID"],
            secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
            session_token=options.get("AWS_SESSION_TOKEN"),
        )
    return pafs.S3FileSystem(**kwargs)


def remove_uncommitted(uri: str, stored_at: pa.ChunkedArray) -> int:
    """Delete the data files of a failed write (its rows' ``stored_at`` is ``stored_at``) that
    no version references; return how many. Local tables only: object stores do not fill up.

    A concurrent writer's files are never touched: every write stamps its rows with its own
    ``stored_at``, and only files whose every row carries this write's stamp are removed.
    Cost: one listing of the table's folder and a read of the new files' ``stored_at``.
    """
    if "://" in uri and not uri.startswith("file://"):
        return 0
    root = Path(uri.removeprefix("file://"))
    try:
        referenced = {name.rsplit("/", 1)[-1] for name in DeltaTable(str(root)).file_uris()}
    except TableNotFoundError:
        referenced = set()
    ours = _stamps(stored_at)
    removed = 0
    for data_file in root.glob("*.parquet"):
        if data_file.name not in referenced and _file_stamps(data_file) == ours:
            data_file.unlink(missing_ok=True)
            removed += 1
    return removed


def _stamps(column: pa.ChunkedArray) -> set[int]:
    return set(pc.unique(column.cast(pa.int64())).to_pylist())


def _file_stamps(path: Path) -> set[int] | None:
    """The ``stored_at`` values of a data file; None if it cannot be read (being written)."""
    try:
        return _stamps(pq.read_table(path, columns=[STORED_AT]).column(STORED_AT))
    except (OSError, pa.ArrowException, KeyError):
        return None


def offset_transactions(
    table: DeltaTable | None, offsets: Mapping[str, OffsetRange]
) -> list[Transaction]:
    """The app transactions recording ``offsets``: each source's last offset, and under
    ``<source>:newest-ms`` the newest record time it ever stored (kept if ``table`` has newer)."""
    transactions = [Transaction(source, span.last) for source, span in offsets.items()]
    for source, span in offsets.items():
        if span.newest_ms is not None:
            stored = None if table is None else table.transaction_version(source + NEWEST_MS)
            transactions.append(Transaction(source + NEWEST_MS, max(span.newest_ms, stored or 0)))
    return transactions


def _refuse_taken(table: DeltaTable, offsets: Mapping[str, OffsetRange]) -> None:
    taken = {}
    for source, span in offsets.items():
        stored = table.transaction_version(source)
        if stored is not None and stored >= span.first:
            taken[source] = stored
    if taken:
        raise OffsetsTakenError(taken)


def _row_bound(table: DeltaTable | None) -> int:
    """The table's stored rows, from its file statistics: a bound on any read of it."""
    if table is None:
        return 0
    return _column_sum(file_stats(table), "num_records")


def _column_sum(files: pa.Table, column: str) -> int:
    return int(pc.sum(files.column(column)).as_py() or 0)


def file_stats(table: DeltaTable) -> pa.Table:
    """One row per live data file: its path, ``num_records``, ``size_bytes`` and column stats."""
    return pa.table(table.get_add_actions(flatten=True))


def newest_cutoff(lo: np.ndarray, hi: np.ndarray, counts: np.ndarray, max_rows: int) -> int:
    """The time after which files of ``counts`` rows over ``[lo, hi]`` hold ``max_rows`` rows.

    A bisection over time, each probe O(files).

    >>> newest_cutoff(np.array([0, 100]), np.array([99, 199]), np.array([100.0, 100.0]), 50)
    150
    """
    span = np.maximum(hi - lo, 1).astype(np.float64)
    start, end = int(lo.min()), int(hi.max())
    while end - start > 1:
        mid = (start + end) // 2
        after = np.clip((hi - mid) / span, 0.0, 1.0) @ counts
        start, end = (mid, end) if after > max_rows else (start, mid)
    return end


def to_arrow(frame: pd.DataFrame, stored_at: pd.Timestamp) -> pa.Table:
    """A long frame as the table's rows: ``series``, ``ts``, ``stored_at``, float64 channels.

    A channel column that is all missing (another series' channel in the same flush) stays
    missing; the table's schema grows by a column when a new channel first comes.
    """
    ts = pd.to_datetime(frame[TS], utc=True).dt.as_unit("us")
    columns = {
        SERIES: pa.array(frame[SERIES].astype(str), pa.string()),
        TS: pa.array(ts, TIMESTAMP),
        STORED_AT: pa.array(np.full(len(frame), stored_at.as_unit("us").value), TIMESTAMP),
    }
    for name in sorted(c for c in frame.columns if c not in (SERIES, TS)):
        columns[name] = pa.array(frame[name].to_numpy(dtype=np.float64), pa.float64())
    return pa.table(columns)


class SeriesCodes:
    """A code per series id, kept across record batches (ids are read once per batch)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._code: dict[str, int] = {}

    def of(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """``(N,)`` int32 codes of a batch's series column."""
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        local = [self._code_of(name) for name in encoded.dictionary.to_pylist()]
        return np.asarray(local, dtype=np.int32)[encoded.indices.to_numpy(zero_copy_only=False)]

    def _code_of(self, name: str) -> int:
        code = self._code.get(name)
        if code is None:
            code = self._code[name] = len(self.ids)
            self.ids.append(name)
        return code

    def sorted_order(self) -> tuple[list[str], np.ndarray]:
        """The ids sorted, and each old code's new code."""
        order = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        recode = np.empty(len(order), dtype=np.int32)
        recode[order] = np.arange(len(order), dtype=np.int32)
        return [self.ids[i] for i in order], recode


def _ms(column: pa.Array) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False) // 1000


class RowCollector:
    """Gathers streamed batches into preallocated arrays, then sorts and de-duplicates once."""

    def __init__(self, channels: tuple[str, ...], bound: int) -> None:
        self.channels, self.codes, self.used = channels, SeriesCodes(), 0
        # np.empty touches no page until written: a bound far above the rows read costs nothing.
        self.code = np.empty(bound, dtype=np.int32)
        self.ts = np.empty(bound, dtype=np.int64)
        self.stored = np.empty(bound, dtype=np.int64)
        self.values = np.empty((bound, len(channels)), dtype=np.float32)

    def add(self, batch: pa.RecordBatch) -> None:
        lo, hi = self.used, self.used + batch.num_rows
        if hi > len(self.code):
            raise StoreError("the table grew while it was read; read it at a version")
        self.code[lo:hi] = self.codes.of(batch.column(SERIES))
        self.ts[lo:hi] = _ms(batch.column(TS))
        self.stored[lo:hi] = _ms(batch.column(STORED_AT))
        for j, name in enumerate(self.channels):
            column = batch.column(name).to_numpy(zero_copy_only=False)
            # Beyond float32 becomes inf, which the record policy refuses (as it did the value).
            with np.errstate(over="ignore"):
                self.values[lo:hi, j] = column
        self.used = hi

    def finish(self, version: int | None) -> StoredRows:
        """The rows, sorted and de-duplicated, at about 28 bytes a row at the peak.

        The sort key (``code << 43 | ts - first ts``) is built in the timestamps' own buffer and
        sorted in place; codes and timestamps are read back from it, so only the values (and,
        on a repeated step, ``stored_at``) are gathered.
        """
        n = self.used
        names, recode = self.codes.sorted_order()
        code, ts = self.code[:n], self.ts[:n]
        if n == 0 or int(ts.max() - ts.min()) >= (1 << 43) or len(names) >= (1 << 20):
            keep = first_stored(recode[code] if n else code, ts, self.stored[:n])
            return StoredRows(
                names, recode[code][keep], ts[keep], self.values[:n][keep], self.channels, version
            )
        first_ts = int(ts.min())
        for lo in range(0, n, BATCH_ROWS):  # in place, a batch at a time: no row-sized temporary
            part = ts[lo : lo + BATCH_ROWS]
            part -= first_ts
            part |= recode[code[lo : lo + BATCH_ROWS]].astype(np.int64) << 43  # now the key
        del self.code, code
        order = np.argsort(ts, kind="stable")
        ts.sort(kind="stable")
        repeated = ts[1:] == ts[:-1]
        if repeated.any():  # rare: replays or concurrent writers; the first stored wins
            order = _first_stored_order(order, ts, self.stored[:n])
            ts = ts[np.concatenate(([True], ~repeated))]
        del self.stored
        values = self.values[:n][order]
        del self.values
        codes = (ts >> 43).astype(np.int32)
        ts &= (1 << 43) - 1
        ts += first_ts
        return StoredRows(names, codes, ts, values, self.channels, version)


def _first_stored_order(
    order: np.ndarray, sorted_key: np.ndarray, stored: np.ndarray
) -> np.ndarray:
    """Of each run of one key in ``order`` (sorted by key), the row stored first."""
    runs = np.cumsum(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1]))) - 1
    pos = np.lexsort((stored[order], runs))
    first = np.concatenate(([True], runs[pos][1:] != runs[pos][:-1]))
    return order[pos[first]]


def first_stored(codes: np.ndarray, ts_ms: np.ndarray, stored_at: np.ndarray) -> np.ndarray:
    """Row indices sorted by (series, ts), keeping the first stored row of each pair.

    One int64 sort key when codes and the time range fit in it (they do below a million series
    and 270 years of milliseconds), else a three-key lexsort.

    >>> first_stored(np.array([1, 0, 0, 1]), np.array([5, 7, 7, 3]), np.array([0, 2, 1, 0]))
    array([2, 3, 0])
    """
    if len(codes) == 0:
        return np.empty(0, dtype=np.int64)
    span = int(ts_ms.max() - ts_ms.min()) + 1
    if int(codes.max()) < (1 << 20) and span < (1 << 43):
        key = _sort_key(codes, ts_ms)
        order = np.argsort(key, kind="stable")
        key.sort(kind="stable")  # in place: sorting again costs less memory than a gather
        if (key[1:] == key[:-1]).any():  # rare: replays or concurrent writers
            return _first_stored_order(order, key, stored_at)
        return order
    else:
        order = np.lexsort((stored_at, ts_ms, codes))
        repeated = (codes[order][1:] == codes[order][:-1]) & (ts_ms[order][1:] == ts_ms[order][:-1])
    return order[np.concatenate(([True], ~repeated))]


def _sort_key(codes: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """``code << 43 | (ts - min ts)`` as int64, built with one temporary."""
    key = ts_ms - ts_ms.min()
    high = codes.astype(np.int64)
    np.left_shift(high, 43, out=high)
    key |= high
    return key


class NewestSteps:
    """Each series' newest ``k`` distinct steps and channels, folded over streamed batches."""

    def __init__(self, k: int, channels: tuple[str, ...]) -> None:
        self.k, self.channels, self.codes = k, channels, SeriesCodes()
        self.code = np.empty(0, dtype=np.int32)
        self.ts = np.empty(0, dtype=np.int64)
        self.present = np.empty((0, len(channels)), dtype=bool)

    def add(self, batch: pa.RecordBatch) -> None:
        present = (
            np.column_stack(
                [batch.column(c).is_valid().to_numpy(zero_copy_only=False) for c in self.channels]
            )
            if self.channels
            else np.empty((batch.num_rows, 0), dtype=bool)
        )
        code = np.concatenate([self.code, self.codes.of(batch.column(SERIES))])
        ts = np.concatenate([self.ts, _ms(batch.column(TS))])
        present = np.concatenate([self.present, present])
        keep = _newest_per_series(code, ts, self.k)
        self.code, self.ts, self.present = code[keep], ts[keep], present[keep]

    def finish(self) -> dict[str, RecentSteps]:
        if not self.codes.ids:
            return {}
        bounds = np.searchsorted(self.code, np.arange(len(self.codes.ids) + 1))
        seen = np.logical_or.reduceat(self.present, bounds[:-1], axis=0)  # (S, C)
        sets: dict[tuple[bool, ...], frozenset[str]] = {}
        recent = {}
        for name, steps, row in zip(
            self.codes.ids, np.split(self.ts, bounds[1:-1]), seen.tolist(), strict=True
        ):
            key = tuple(row)
            if key not in sets:  # one frozenset per channel set, shared by its series
                sets[key] = frozenset(c for c, s in zip(self.channels, key, strict=True) if s)
            recent[name] = RecentSteps(sets[key], steps.tolist())
        return recent


def _newest_per_series(code: np.ndarray, ts: np.ndarray, k: int) -> np.ndarray:
    """Indices, sorted by (code, ts), of each code's newest ``k`` distinct timestamps."""
    order = np.lexsort((ts, code))
    code, ts = code[order], ts[order]
    distinct = np.ones(len(code), dtype=bool)
    distinct[1:] = (code[1:] != code[:-1]) | (ts[1:] != ts[:-1])
    order, code = order[distinct], code[distinct]
    ends = np.searchsorted(code, code, side="right")  # one past each row's series
    return order[ends - np.arange(len(code)) <= k]

"""The series store's Delta table on a real S3 API (moto over HTTP): the storage options in
s3_server.py are the ones delta-rs needs, concurrent writer processes included. See notes/s3.md."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import CommitProperties, Transaction
from s3_server import S3Server, S3Store, s3_server, s3_store_env, s3_store_uri

pytestmark = pytest.mark.integration

# Re-exported for pytest: the fixtures are used by name, not referenced.
__all__ = ["s3_server", "s3_store_env", "s3_store_uri"]

WRITERS = 2
COMMITS_PER_WRITER = 20
ROWS_PER_COMMIT = 5
MAX_ATTEMPTS = 30
WRITERS_TIMEOUT_S = 300


def batch(series: str, start: int, rows: int = ROWS_PER_COMMIT) -> pa.Table:
    return pa.table(
        {
            "series": [series] * rows,
            "t": list(range(start, start + rows)),
            "y": [float(start + i) for i in range(rows)],
        }
    )


def commit(uri: str, options: dict[str, str], table: pa.Table, app_id: str, version: int) -> None:
    write_deltalake(
        uri,
        table,
        mode="append",
        storage_options=options,
        commit_properties=CommitProperties(app_transactions=[Transaction(app_id, version)]),
    )


def test_appends_read_back_time_travel_and_app_transactions(
    s3_server: S3Server, s3_store_uri: S3Store
) -> None:
    uri, options = s3_store_uri
    commit(uri, options, batch("a", 0), "ingest-0", 0)
    commit(uri, options, batch("b", 0), "ingest-0", 1)

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    rows = table.to_pyarrow_table().sort_by([("series", "ascending"), ("t", "ascending")])
    assert rows.column("series").to_pylist() == ["a"] * 5 + ["b"] * 5
    assert table.transaction_version("ingest-0") == 1
    assert table.transaction_version("someone-else") is None

    first = DeltaTable(uri, version=0, storage_options=options)
    assert first.version() == 0
    assert first.to_pyarrow_table().column("series").to_pylist() == ["a"] * 5
    assert first.transaction_version("ingest-0") == 0

    listing = s3_server.client().list_objects_v2(Bucket=s3_store_uri.bucket)
    keys = [entry["Key"] for entry in listing["Contents"]]
    assert "series/_delta_log/00000000000000000000.json" in keys
    assert "series/_delta_log/00000000000000000001.json" in keys


def test_compaction_z_order_vacuum_and_history(s3_store_uri: S3Store) -> None:
    uri, options = s3_store_uri
    for i in range(4):
        commit(uri, options, batch(f"s{i % 2}", i * ROWS_PER_COMMIT), "ingest-0", i)
    table = DeltaTable(uri, storage_options=options)

    assert table.optimize.compact()["numFilesRemoved"] == 4
    assert table.optimize.z_order(["series"])["numFilesAdded"] == 1
    removed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert len(removed) == 5  # the four appended files and the compacted one

    table = DeltaTable(uri, storage_options=options)
    assert table.to_pyarrow_table().num_rows == 4 * ROWS_PER_COMMIT
    assert len(table.file_uris()) == 1
    # history() holds the GIL while it lists the log: it hangs against a server thread in this
    # process, which is why s3_server runs moto in a child process.
    operations = [entry["operation"] for entry in table.history()]
    assert operations == ["VACUUM END", "VACUUM START", "OPTIMIZE", "OPTIMIZE"] + ["WRITE"] * 4
    assert table.transaction_version("ingest-0") == 3


def test_settings_from_the_environment(s3_store_env: S3Store) -> None:
    uri = os.environ["ROLLCAST_STORE_URI"]
    options = json.loads(os.environ["ROLLCAST_STORE_OPTIONS"])
    assert (uri, options) == tuple(s3_store_env)
    commit(uri, options, batch("a", 0), "ingest-0", 0)
    assert DeltaTable(uri, storage_options=options).to_pyarrow_table().num_rows == ROWS_PER_COMMIT


def committed(uri: str, options: dict[str, str], app_id: str) -> int | None:
    """The last version ``app_id`` recorded in the table, None if none (or no table yet)."""
    try:
        return DeltaTable(uri, storage_options=options).transaction_version(app_id)
    except TableNotFoundError:
        return None


def append_commits(
    uri: str, options: dict[str, str], writer: int, start: Any, results: Any
) -> None:
    """One writer process: COMMITS_PER_WRITER appends as fast as it can, from when ``start`` (a
    barrier shared with the other writers) opens. A commit that fails with CommitFailedError is
    retried after a random, growing pause, unless the app transaction shows it landed after all,
    so a retry never writes a batch twice. Puts ``(writer, retries)`` on ``results``."""
    app_id = f"writer-{writer}"
    retries: list[str] = []
    start.wait(timeout=120)
    for i in range(COMMITS_PER_WRITER):
        for attempt in range(MAX_ATTEMPTS):
            if attempt and (done := committed(uri, options, app_id)) is not None and done >= i:
                break
            try:
                commit(uri, options, batch(f"w{writer}", i * ROWS_PER_COMMIT), app_id, i)
                break
            except CommitFailedError as error:
                retries.append(str(error).splitlines()[0])
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
        else:
            raise AssertionError(f"{app_id}: commit {i} still failing after {MAX_ATTEMPTS} tries")
    results.put((writer, retries))


def test_concurrent_writer_processes_lose_no_commit(s3_store_uri: S3Store) -> None:
    uri, options = s3_store_uri
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(WRITERS), context.Queue()
    writers = [
        context.Process(target=append_commits, args=(uri, options, w, start, results))
        for w in range(WRITERS)
    ]
    for process in writers:
        process.start()
    deadline = time.monotonic() + WRITERS_TIMEOUT_S
    for process in writers:
        process.join(max(0.0, deadline - time.monotonic()))
    stuck = [process for process in writers if process.is_alive()]
    for process in stuck:
        process.kill()
        process.join()
    assert not stuck, f"{len(stuck)} writer(s) still running after {WRITERS_TIMEOUT_S} s"
    assert [process.exitcode for process in writers] == [0] * WRITERS
    retries = dict(results.get(timeout=10) for _ in writers)

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == WRITERS * COMMITS_PER_WRITER - 1, retries
    rows = table.to_pyarrow_table()
    assert rows.num_rows == WRITERS * COMMITS_PER_WRITER * ROWS_PER_COMMIT
    keys = set(zip(rows.column("series").to_pylist(), rows.column("t").to_pylist(), strict=True))
    assert len(keys) == rows.num_rows  # no duplicate, and so (by the count) none missing
    for w in range(WRITERS):
        assert table.transaction_version(f"writer-{w}") == COMMITS_PER_WRITER - 1
    operations = [entry["operation"] for entry in table.history()]
    assert operations == ["WRITE"] * (WRITERS * COMMITS_PER_WRITER)
    assert DeltaTable(uri, version=0, storage_options=options).to_pyarrow_table().num_rows == (
        ROWS_PER_COMMIT
    )


def test_buckets_are_fresh_per_test(s3_server: S3Server, s3_store_uri: S3Store) -> None:
    assert s3_store_uri.uri == f"s3://{s3_store_uri.bucket}/series"
    assert s3_store_uri.storage_options == s3_server.storage_options()
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_store_uri.bucket)
    assert s3_server.store().bucket != s3_store_uri.bucket

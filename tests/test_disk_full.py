"""A full disk: one line naming the table and the cause, no retry, no file left, no commit."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.states import Failed

from flows.retries import transient_only
from pipeline import ResourceError
from pipeline.delta_store import STORED_AT, DeltaSeriesStore, remove_uncommitted
from pipeline.files import disk_full_is_resource_error
from pipeline.ingest import store_flush
from pipeline.records import Observation
from pipeline.store import OffsetRange

START = pd.Timestamp("2024-01-01", tz="UTC")
# Random values barely compress: this many rows make a data file of several MB.
BIG_ROWS = 400_000


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "series": "a",
            "ts": pd.date_range(START, periods=n, freq="1min"),
            "OT": rng.standard_normal(n),
        }
    )


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real ENOSPC. Needs root (mount); skipped where it cannot be mounted."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_an_append_to_a_full_disk_commits_nothing_and_leaves_no_file(small_disk: Path) -> None:
    store = DeltaSeriesStore(str(small_disk / "series"))
    store.append(frame(10), {"obs:0": OffsetRange(0, 9)})
    before = files_under(small_disk)

    with pytest.raises(ResourceError) as full:
        store.append(frame(BIG_ROWS, seed=1), {"obs:0": OffsetRange(10, 10 + BIG_ROWS)})

    message = str(full.value)
    assert message.startswith(f"{small_disk / 'series'}: no space left on device")
    assert "\n" not in message
    assert store.latest() is not None and store.latest().version() == 0
    assert store.ingested_offsets(["obs:0"]) == {"obs:0": 9}
    assert files_under(small_disk) == before
    assert not transient_only(None, None, Failed(data=full.value))


CHILD = """
import json, resource, signal, sys
import numpy as np, pandas as pd
from pipeline.delta_store import DeltaSeriesStore
from pipeline.store import OffsetRange
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
n = int(sys.argv[2])
big = pd.DataFrame({"series": "a", "ts": pd.date_range("2024-02-01", periods=n, freq="1min",
    tz="UTC"), "OT": np.random.default_rng(1).standard_normal(n)})
try:
    DeltaSeriesStore(sys.argv[1]).append(big, {"obs:0": OffsetRange(10, 10 + n)})
    print(json.dumps({"error": None}))
except Exception as err:
    print(json.dumps({"error": type(err).__name__, "message": str(err)}))
"""


def test_an_append_past_a_file_size_limit_is_a_resource_error(tmp_path: Path) -> None:
    """Always runs (no mount needed): RLIMIT_FSIZE in a child makes writes fail with EFBIG."""
    uri = tmp_path / "series"
    store = DeltaSeriesStore(str(uri))
    store.append(frame(10), {"obs:0": OffsetRange(0, 9)})
    before = files_under(uri)

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(uri), str(BIG_ROWS)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["error"] == "ResourceError", child.stderr[-2000:]
    assert outcome["message"].startswith(f"{uri}: file too large")
    assert "\n" not in outcome["message"]
    assert DeltaSeriesStore(str(uri)).latest().version() == 0
    assert DeltaSeriesStore(str(uri)).ingested_offsets(["obs:0"]) == {"obs:0": 9}
    assert files_under(uri) == before


def test_only_the_failed_writes_own_uncommitted_files_are_removed(tmp_path: Path) -> None:
    uri = tmp_path / "series"
    DeltaSeriesStore(str(uri)).append(frame(10))
    committed = files_under(uri)
    ours = pa.chunked_array([pa.array([1_000_000] * 3, pa.timestamp("us", tz="UTC"))])
    pq.write_table(pa.table({STORED_AT: ours}), uri / "part-00001-ours.parquet")
    theirs = pa.table({STORED_AT: pa.array([2_000_000] * 3, pa.timestamp("us", tz="UTC"))})
    pq.write_table(theirs, uri / "part-00000-a-concurrent-writer.parquet")
    (uri / "part-00002-being-written.parquet").write_bytes(b"PAR1")

    removed = remove_uncommitted(str(uri), ours)

    assert removed == 1
    assert files_under(uri) == committed | {
        "part-00000-a-concurrent-writer.parquet",
        "part-00002-being-written.parquet",
    }


class FullStore:
    """A store whose disk is full: every append fails."""

    def __init__(self) -> None:
        self.appends = 0

    def append(self, frame: pd.DataFrame, offsets: object = None) -> int:
        self.appends += 1
        raise ResourceError("/data/series: no space left on device")


class Sources:
    """The ledger's offsets part: what the flush holds, and what it records once stored."""

    def __init__(self) -> None:
        self.recorded: list[object] = []

    def ranges(self, records: object) -> dict[str, OffsetRange]:
        return {"obs:0": OffsetRange(0, 0)}

    def stored(self, ranges: object) -> None:
        self.recorded.append(ranges)


def test_the_ingest_flush_does_not_retry_a_full_disk_nor_record_its_offsets() -> None:
    store, ledger = FullStore(), SimpleNamespace(sources=Sources())
    kept = [(None, Observation("a", 0, {"OT": 1.0}))]

    with pytest.raises(ResourceError, match="no space left"):
        store_flush(store, [], kept, ledger)  # type: ignore[arg-type]

    assert store.appends == 1
    assert ledger.sources.recorded == []


def test_a_full_disk_while_training_names_the_file() -> None:
    with pytest.raises(ResourceError) as full, disk_full_is_resource_error("the MLflow store"):
        raise OSError(errno.ENOSPC, "No space left on device", "/artifacts/forecaster.pt")

    assert str(full.value).startswith("/artifacts/forecaster.pt: no space left on device")
    assert not transient_only(None, None, Failed(data=full.value))


def test_other_errors_pass_through_the_training_boundary() -> None:
    with pytest.raises(PermissionError), disk_full_is_resource_error("the MLflow store"):
        raise PermissionError(errno.EACCES, "Permission denied", "/artifacts")

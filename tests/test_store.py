"""The series table (Delta Lake, real files): append and read back, first-stored wins on read,
offsets recorded with the rows, concurrent writers, time travel, what it says of itself, and
training data that survives a poisoned table."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.delta_store import CommitRetry, DeltaSeriesStore
from pipeline.maintenance import compact, migrate_if_found
from pipeline.parquet_store import ParquetSeriesStore
from pipeline.records import RecordPolicy
from pipeline.store import OffsetRange, OffsetsTakenError
from pipeline.training_data import TrainingData, prepare_training_data

START = pd.Timestamp("2016-07-01", tz="UTC")
SPAN = 12


def load_training_data(
    store: DeltaSeriesStore, policy: RecordPolicy, freq: str | None, max_gap: int, span: int
) -> TrainingData:
    return prepare_training_data(store.rows(), policy, freq, max_gap, span)


def rows(series: str, n: int, start: int = 0, **extra: object) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "series": series,
            "ts": pd.date_range(START + pd.Timedelta(hours=start), periods=n, freq="1h"),
            "OT": np.sin(np.arange(start, start + n, dtype=float)),
        }
    )
    return frame.assign(**extra)


def table(tmp_path: Path) -> DeltaSeriesStore:
    return DeltaSeriesStore(str(tmp_path / "series"))


def test_any_series_id_comes_back(tmp_path: Path) -> None:
    store = table(tmp_path)
    ids = ["plain", "a/b", "x" * 300, "é" * 200, "~abc", "..", "%41", "it's"]

    store.append(pd.concat([rows(i, 2) for i in ids], ignore_index=True))

    assert store.series_ids() == sorted(ids)
    assert all(len(store.read(i)) == 2 for i in ids)
    assert store.rows().series == sorted(ids)


def test_a_repeated_step_keeps_the_row_stored_first(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(rows("a", 5))
    store.append(rows("a", 5, start=3).assign(OT=99.0))  # steps 3, 4 again, then 5..7

    stored = store.read("a")
    everything = store.rows()

    assert len(stored) == 8 and stored["OT"].iloc[3] == np.sin(3.0)
    assert stored["OT"].iloc[5:].tolist() == [99.0] * 3
    assert len(everything) == 8 and everything.values[3, 0] == np.float32(np.sin(3.0))
    assert store.info().rows == 10  # both copies are in the table until compaction


def test_compaction_drops_repeats_merges_files_and_keeps_every_step(tmp_path: Path) -> None:
    store = table(tmp_path)
    for start in range(0, 40, 4):
        store.append(pd.concat([rows("a", 6, start), rows("b", 6, start)], ignore_index=True))
    before = store.rows()

    report = compact(store, retention_hours=0)

    after = store.rows()
    assert report.after.files < report.before.files and report.duplicates_removed == 2 * 9 * 2
    assert store.info().rows == len(after) == len(before) == 2 * 42
    assert np.array_equal(after.values, before.values) and np.array_equal(after.ts_ms, before.ts_ms)


def test_offsets_are_stored_with_the_rows_and_never_twice(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(rows("a", 3), {"obs:0": OffsetRange(0, 2), "obs:1": OffsetRange(5, 9)})

    with pytest.raises(OffsetsTakenError) as taken:
        store.append(rows("a", 1, start=3), {"obs:0": OffsetRange(2, 3)})

    assert taken.value.versions == {"obs:0": 2}
    assert store.ingested_offsets(["obs:0", "obs:1", "obs:2"]) == {"obs:0": 2, "obs:1": 9}
    assert len(store.read("a")) == 3


def test_time_travel_reads_the_table_as_it_was(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(rows("a", 10))
    store.append(rows("b", 10, temp=1.0))

    then, now = store.rows(version=0), store.rows()

    assert (then.series, then.version, len(then)) == (["a"], 0, 10)
    assert (now.series, now.version, len(now)) == (["a", "b"], 1, 20)
    assert then.channels == ("OT",) and now.channels == ("OT", "temp")


def test_rows_since_read_only_the_newer_rows(tmp_path: Path) -> None:
    store = table(tmp_path)
    for start in range(0, 100, 10):
        store.append(pd.concat([rows("a", 10, start), rows("b", 10, start)], ignore_index=True))

    cutoff = store.cutoff_for(max_rows=60)
    newest = store.rows(since_ms=cutoff)

    assert cutoff is not None and 50 <= len(newest) <= 70
    assert newest.ts_ms.min() > cutoff and store.cutoff_for(max_rows=10_000) is None


def test_the_store_says_where_it_is_what_it_holds_and_its_channels(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(pd.concat([rows("a", 3), rows("b", 2, temp=1.0)], ignore_index=True))

    info = store.info()

    assert (info.location, info.series, info.channels) == (store.uri, 2, ("OT", "temp"))
    assert (info.rows, info.files, info.version) == (5, 1, 0) and info.bytes > 0
    assert list(store.read("a").columns) == ["series", "ts", "OT"]


def test_ingest_state_comes_from_one_read_of_the_newest_steps(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(pd.concat([rows("a", 30), rows("b", 2, temp=1.0)], ignore_index=True))

    recent = store.recent_steps(4)

    hour = 3_600_000
    first = int(START.value // 1_000_000)
    assert recent["a"].steps == [first + h * hour for h in range(26, 30)]
    assert recent["b"].channels == {"OT", "temp"} and len(recent["b"].steps) == 2


def _append_many(uri: str, writer: int, commits: int) -> None:
    store = DeltaSeriesStore(uri, retry=CommitRetry(attempts=100))
    for i in range(commits):
        store.append(rows(f"w{writer}", 2, start=2 * i), {f"w{writer}": OffsetRange(i, i)})


def test_concurrent_writers_lose_no_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "series")
    DeltaSeriesStore(uri).append(rows("seed", 1))
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(uri, w, 15)) for w in range(3)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=300)

    store = DeltaSeriesStore(uri)
    assert [p.exitcode for p in writers] == [0, 0, 0]
    assert all(len(store.read(f"w{w}")) == 30 for w in range(3))
    assert store.ingested_offsets(["w0", "w1", "w2"]) == {"w0": 14, "w1": 14, "w2": 14}


def test_an_old_parquet_store_is_migrated_on_first_open(tmp_path: Path) -> None:
    old = tmp_path / "store"
    frames = [rows("a", 20), rows("b", 7, temp=2.0), rows("c/d", 3)]
    ParquetSeriesStore(old).append(pd.concat(frames, ignore_index=True))
    store = table(tmp_path)

    migrated = migrate_if_found(old, store)

    assert migrated == 30 and store.series_ids() == ["a", "b", "c/d"]
    for frame in frames:
        series_id = frame["series"].iloc[0]
        pd.testing.assert_frame_equal(
            store.read(series_id), frame.dropna(axis=1), check_dtype=False, check_exact=True
        )
    assert not old.exists() and (tmp_path / "store.migrated").is_dir()
    assert migrate_if_found(old, store) == 0


def test_a_poisoned_store_still_gives_training_data(tmp_path: Path) -> None:
    store = table(tmp_path)
    huge, future = rows("huge", 48), rows("future", 48)
    huge.loc[10, "OT"] = 1e308
    future.loc[47, "ts"] = pd.Timestamp("2250-01-01", tz="UTC")
    store.append(
        pd.concat(
            [rows("good", 48), huge, future, rows("foreign", 48, foo=1.0), rows("short", SPAN - 1)],
            ignore_index=True,
        )
    )

    data = load_training_data(store, RecordPolicy(), "1h", max_gap=3, span=SPAN)

    assert data.channels == ("OT",)
    assert sorted(data.series) == ["future", "good", "huge"]
    assert data.repaired_rows == 2
    assert all(np.isfinite(f.to_numpy()).all() for f in data.series.values())
    assert data.series["future"].index[-1] < pd.Timestamp("2017-01-01", tz="UTC")
    assert "channels" in data.skipped["foreign"] and "stretch" in data.skipped["short"]


def test_the_magnitude_limit_applies_to_stored_rows(tmp_path: Path) -> None:
    store = table(tmp_path)
    store.append(rows("a", 48).assign(OT=lambda f: f["OT"] * 100))

    data = load_training_data(store, RecordPolicy(max_abs_value=50.0), "1h", 3, SPAN)

    assert data.repaired_rows > 0 and (data.series["a"].abs().to_numpy() <= 50.0).all()


def test_each_series_step_is_inferred_and_the_odd_one_left_out(tmp_path: Path) -> None:
    store = table(tmp_path)
    daily = rows("daily", 30).assign(ts=pd.date_range(START, periods=30, freq="1D"))
    store.append(pd.concat([rows("a", 48), rows("b", 48), daily], ignore_index=True))

    data = load_training_data(store, RecordPolicy(), None, 3, SPAN)

    assert data.freq == "h" and sorted(data.series) == ["a", "b"]
    assert "step" in data.skipped["daily"]

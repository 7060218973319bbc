"""The Parquet series store: safe file names, what it says of itself, and training data that
survives a poisoned store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.parquet_store import ParquetSeriesStore, file_name
from pipeline.records import RecordPolicy
from pipeline.store import SeriesStore, each_series
from pipeline.training_data import TrainingData, prepare_training_data


def load_training_data(
    store: SeriesStore, policy: RecordPolicy, freq: str, max_gap: int, span: int
) -> TrainingData:
    return prepare_training_data(each_series(store), policy, freq, max_gap, span)


START = pd.Timestamp("2016-07-01", tz="UTC")
SPAN = 12


def rows(series: str, n: int, **extra: object) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "series": series,
            "ts": pd.date_range(START, periods=n, freq="1h"),
            "OT": np.sin(np.arange(n, dtype=float)),
        }
    )
    return frame.assign(**extra)


def test_any_series_id_gets_a_file_name_and_comes_back(tmp_path: Path) -> None:
    store = ParquetSeriesStore(tmp_path)
    ids = ["plain", "a/b", "x" * 300, "é" * 200, "~abc", "..", "%41"]

    store.append(pd.concat([rows(i, 2) for i in ids], ignore_index=True))

    assert store.series_ids() == sorted(ids)
    assert all(len(file_name(i).encode()) <= 255 for i in ids)
    assert all(len(store.read(i)) == 2 for i in ids)


def test_the_store_says_where_it_is_what_it_holds_and_its_channels(tmp_path: Path) -> None:
    store = ParquetSeriesStore(tmp_path)
    store.append(pd.concat([rows("a", 3), rows("b", 2, temp=1.0)], ignore_index=True))

    info = store.info()

    assert (info.location, info.series, info.channels) == (str(tmp_path), 2, ("OT", "temp"))
    assert [sid for sid, frame in each_series(store) if len(frame)] == ["a", "b"]


def test_a_poisoned_store_still_gives_training_data(tmp_path: Path) -> None:
    store = ParquetSeriesStore(tmp_path)
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
    store = ParquetSeriesStore(tmp_path)
    store.append(rows("a", 48).assign(OT=lambda f: f["OT"] * 100))

    data = load_training_data(store, RecordPolicy(max_abs_value=50.0), "1h", 3, SPAN)

    assert data.repaired_rows > 0 and (data.series["a"].abs().to_numpy() <= 50.0).all()

"""Sources of observations: the synthetic fleet, CSV replay and the frame -> observations stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import (
    DatasetError,
    FleetSpec,
    frame_to_observations,
    load_csv,
    synthetic_fleet,
)
from pipeline.records import Observation
from pipeline.windows import SERIES, TS, regularize

SMALL_FLEET = FleetSpec(n_series=5, n_steps=300, seed=3)
HOUR_MS = 3_600_000

ETT_CSV = """date,HUFL,label,OT
2016-07-01 00:00:00,5.827,low,30.531
2016-07-01 01:00:00,5.693,low,27.787
2016-07-01 02:00:00,5.157,high,27.787
"""


def test_synthetic_fleet_has_every_series_and_both_channels() -> None:
    fleet = synthetic_fleet(SMALL_FLEET)

    assert list(fleet.columns) == [SERIES, TS, "load", "temp"]
    assert fleet[SERIES].nunique() == SMALL_FLEET.n_series
    assert str(fleet[TS].dt.tz) == "UTC"
    assert np.isfinite(fleet[["load", "temp"]].to_numpy()).all()


def test_synthetic_fleet_has_gaps_in_every_series() -> None:
    fleet = synthetic_fleet(SMALL_FLEET)

    assert len(fleet) < SMALL_FLEET.n_series * SMALL_FLEET.n_steps
    rows_per_series = fleet.groupby(SERIES).size()
    assert (rows_per_series < SMALL_FLEET.n_steps).all()
    # Each series spans the whole period: gaps are inside, not at the ends.
    start = pd.Timestamp(SMALL_FLEET.start)
    end = start + pd.Timedelta(hours=SMALL_FLEET.n_steps - 1)
    assert (fleet.groupby(SERIES)[TS].min() == start).all()
    assert (fleet.groupby(SERIES)[TS].max() == end).all()


def test_synthetic_fleet_gaps_are_short_enough_to_interpolate() -> None:
    fleet = synthetic_fleet(SMALL_FLEET)

    for _, frame in fleet.groupby(SERIES):
        values = regularize(frame, SMALL_FLEET.freq, max_gap=3)
        assert len(values) == SMALL_FLEET.n_steps
        assert not values.isna().any().any()


def test_synthetic_fleet_is_deterministic_for_a_seed() -> None:
    first, again = synthetic_fleet(SMALL_FLEET), synthetic_fleet(SMALL_FLEET)
    other = synthetic_fleet(FleetSpec(n_series=5, n_steps=300, seed=4))

    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["load"].to_numpy()[:100], other["load"].to_numpy()[:100])


# --- load_csv -------------------------------------------------------------------------------------


def test_load_csv_returns_a_long_frame_of_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "ETTh1.csv"
    path.write_text(ETT_CSV)

    frame = load_csv(path)

    assert list(frame.columns) == [SERIES, TS, "HUFL", "OT"]
    assert frame[SERIES].tolist() == ["ETTh1"] * 3
    assert str(frame[TS].dt.tz) == "UTC"
    assert frame[TS].tolist() == [
        pd.Timestamp("2016-07-01T00:00:00Z") + pd.Timedelta(hours=h) for h in range(3)
    ]
    assert frame["OT"].tolist() == [30.531, 27.787, 27.787]


def test_load_csv_uses_the_given_series_id_and_first_column_as_date(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("when,value\n2024-01-01T00:00:00+02:00,1.5\n2024-01-01T01:00:00+02:00,2.5\n")

    frame = load_csv(path, series_id="plant-9")

    assert frame[SERIES].tolist() == ["plant-9", "plant-9"]
    assert frame[TS].tolist() == [
        pd.Timestamp("2023-12-31T22:00:00Z"),
        pd.Timestamp("2023-12-31T23:00:00Z"),
    ]
    assert frame["value"].tolist() == [1.5, 2.5]


def test_load_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_csv(tmp_path / "absent.csv")


def test_load_csv_without_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("date,label\n2016-07-01 00:00:00,low\n2016-07-01 01:00:00,high\n")

    with pytest.raises(DatasetError, match="no numeric columns"):
        load_csv(path)


@pytest.mark.filterwarnings("ignore:Could not infer format:UserWarning")
def test_load_csv_with_a_date_column_that_is_not_dates(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("date,OT\nmonday,1.0\ntuesday,2.0\n")

    with pytest.raises(DatasetError, match="not a date"):
        load_csv(path)


# --- frame_to_observations ------------------------------------------------------------------------


def test_frame_to_observations_in_time_order_across_series() -> None:
    fleet = synthetic_fleet(FleetSpec(n_series=3, n_steps=40, seed=1))

    observations = list(frame_to_observations(fleet))

    assert len(observations) == len(fleet)
    times = [obs.ts_ms for obs in observations]
    assert times == sorted(times)
    # Series are interleaved, as a live fleet sends them: all three appear in the first hour.
    assert {obs.series for obs in observations[:3]} == {"sensor-000", "sensor-001", "sensor-002"}
    assert times[0] == pd.Timestamp("2024-01-01T00:00:00Z").value // 1_000_000


def test_frame_to_observations_carries_the_values() -> None:
    frame = pd.DataFrame(
        {
            SERIES: ["b", "a", "a"],
            TS: pd.to_datetime([HOUR_MS, HOUR_MS, 0], unit="ms", utc=True),
            "load": [3.0, 2.0, 1.0],
            "temp": [30.0, np.nan, 10.0],
        }
    )

    observations = list(frame_to_observations(frame))

    assert observations == [
        Observation("a", 0, {"load": 1.0, "temp": 10.0}),
        Observation("a", HOUR_MS, {"load": 2.0}),  # a missing channel is left out, not NaN
        Observation("b", HOUR_MS, {"load": 3.0, "temp": 30.0}),
    ]


@pytest.mark.parametrize("limit", [0, 1, 7])
def test_frame_to_observations_respects_the_limit(limit: int) -> None:
    fleet = synthetic_fleet(FleetSpec(n_series=3, n_steps=40, seed=1))
    everything = list(frame_to_observations(fleet))

    limited = list(frame_to_observations(fleet, limit=limit))

    assert limited == everything[:limit]

"""A business-hours fleet through ingest, training and serve: it lives on its open steps.

Real broker, real Prefect API, real MLflow store. The series have rows from 08:00 to 18:00 on
weekdays only; nothing is missing at night or at weekends, those steps do not exist. Training
must find the open hours (no night is a gap), and serve must keep every window whole across a
weekend and publish forecasts whose steps are open steps, the calendar read at those times,
as the pyfunc does.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from topics import forecast_times, forecast_values, read_topic

from flows.ingest import ingest_flow
from flows.serve import serve_flow
from flows.train import train_flow
from pipeline.config import KafkaSettings, MlflowSettings
from pipeline.datasets import frame_to_observations
from pipeline.kafka_io import KafkaTransport
from pipeline.open_steps import OpenHours
from pipeline.records import parse_timestamp
from pipeline.registry import load_champion
from pipeline.tracking import connect_reader
from pipeline.transport import replay

pytestmark = pytest.mark.integration

LOOKBACK, HORIZON, WEEKS = 20, 15, 6
SCHEDULE = "mon-fri 08:00-18:00"
HOUR_MS = 3_600_000


@pytest.fixture
def tiny_calendar_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ROLLCAST_LOOKBACK": LOOKBACK,
        "ROLLCAST_HORIZON": HORIZON,
        "ROLLCAST_HIDDEN_SIZE": 16,
        "ROLLCAST_NUM_LAYERS": 1,
        "ROLLCAST_SEGMENT_LEN": 5,
        "ROLLCAST_CALENDAR": "true",
        "ROLLCAST_VAL_FOLDS": 1,
        "ROLLCAST_PROMOTION_GATE": "false",  # about the path: a few steps of a tiny model
        # Compared with the pyfunc's float32 to 1e-5 below: bfloat16 (the default where the
        # CPU has it) differs by a few 1e-5.
        "ROLLCAST_INFERENCE_PRECISION": "float32",
    }.items():
        monkeypatch.setenv(name, str(value))


def business_hours_fleet() -> pd.DataFrame:
    """Two series, hourly, open 08:00-18:00 on weekdays, a daily shape plus noise."""
    hours = pd.date_range("2024-01-01", periods=WEEKS * 7 * 24, freq="1h", tz="UTC")
    open_hours = hours[(hours.dayofweek < 5) & (hours.hour >= 8) & (hours.hour < 18)]
    rng = np.random.default_rng(0)
    frames = [
        pd.DataFrame(
            {
                "series": name,
                "ts": open_hours,
                "load": level + np.sin(open_hours.hour / 3) + rng.normal(0, 0.1, len(open_hours)),
            }
        )
        for name, level in (("north", 10.0), ("south", 20.0))
    ]
    return pd.concat(frames, ignore_index=True)


def test_a_business_hours_fleet_trains_and_serves_on_its_open_steps(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_calendar_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = business_hours_fleet()
    sink = KafkaTransport(rollcast_env).sink()
    try:
        produced = replay(sink, frame_to_observations(fleet))
    finally:
        sink.close()
    ingested = ingest_flow(max_records=produced)
    trained = train_flow(max_steps=6)
    served = serve_flow(max_records=produced)

    assert ingested["rows_written"] == produced == len(fleet)
    champion = load_champion(connect_reader(MlflowSettings()))
    assert champion.model.config.open_hours == SCHEDULE, "the schedule was found in the data"
    assert champion.version == trained["version"]
    # A window stays whole over nights and weekends: one forecast per open step once full.
    per_series = len(fleet) // 2
    assert served["forecasts_out"] == 2 * (per_series - LOOKBACK + 1)
    messages = read_topic(
        rollcast_env, rollcast_env.topic_forecasts, expected=served["forecasts_out"]
    )
    forecasts = [json.loads(message.value) for message in messages]
    _assert_steps_are_the_next_open_steps(forecasts)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MlflowSettings().mlflow_tracking_uri)
    _assert_the_pyfunc_forecasts_the_newest_windows_alike(fleet, forecasts)


def _assert_steps_are_the_next_open_steps(forecasts: list[dict]) -> None:
    schedule = OpenHours.from_text(SCHEDULE)
    friday_evening = [f for f in forecasts if f["issued_at"].endswith("T17:00:00Z")]
    friday_evening = [f for f in friday_evening if pd.Timestamp(f["issued_at"]).dayofweek == 4]
    assert friday_evening, "the stream holds forecasts issued on a Friday at 17:00"
    for forecast in forecasts:
        assert forecast["open_hours"] == SCHEDULE  # version 2 names the schedule of its steps
        steps = np.array(forecast_times(forecast))
        assert len(steps) == HORIZON and schedule.is_open(steps).all()
        assert steps[0] > parse_timestamp(forecast["issued_at"]) and (np.diff(steps) > 0).all()
        # The next open step: every step between the forecast's last observation and it is shut.
        between = np.arange(parse_timestamp(forecast["issued_at"]) + HOUR_MS, steps[0], HOUR_MS)
        assert not schedule.is_open(between).any()
    first = pd.Timestamp(friday_evening[0]["start"])
    assert (first.dayofweek, first.hour) == (0, 8), "Friday 17:00 is followed by Monday 08:00"


def _assert_the_pyfunc_forecasts_the_newest_windows_alike(
    fleet: pd.DataFrame, forecasts: list[dict]
) -> None:
    newest = {f["series"]: f for f in forecasts}  # one partition per series, in order
    model_uri = f"models:/{MlflowSettings().model_name}@champion"
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    recent = fleet.groupby("series").tail(LOOKBACK + 30)  # a weekend inside the history
    out = pyfunc.predict(recent.assign(ts=recent["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")))
    for series_id, forecast in newest.items():
        rows = out[out["series"] == series_id].sort_values("step")
        assert [parse_timestamp(ts) for ts in rows["ts"]] == forecast_times(forecast)
        published = forecast_values(forecast, "load")
        np.testing.assert_allclose(rows["load"].to_numpy(), published, rtol=1e-5)

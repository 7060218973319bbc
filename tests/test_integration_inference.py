"""The registered MLflow model and the serve loop forecast alike from the same history.

A real MLflow sqlite store and the embedded broker: the history is produced to the observations
topic, served by the serve loop, and its forecasts read back from the forecasts topic.
"""

from __future__ import annotations

import json
import threading

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from topics import forecast_times, forecast_values, read_topic

from pipeline import registry, runs
from pipeline.config import KafkaSettings, MlflowSettings, ServeSettings, StoreSettings
from pipeline.datasets import frame_to_observations
from pipeline.forecast import ForecastError
from pipeline.intervals import Calibration
from pipeline.kafka_io import KafkaTransport
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.records import parse_timestamp
from pipeline.serve import RollingForecaster, run_serve, stop_rule
from pipeline.tracking import Tracking, connect
from pipeline.transport import replay
from pipeline.windows import format_timestamp

pytestmark = pytest.mark.integration

# The loop stops once the topic has been quiet this long after the group join.
IDLE_S = 3.0

LOOKBACK, HORIZON, HOUR_MS = 24, 6, 3_600_000


def fleet_with_gaps() -> pd.DataFrame:
    """Three series: one whole, one with short gaps and repeats, one restarted by a long gap."""
    rng = np.random.default_rng(0)
    rows = []
    for series, steps in {
        "whole": range(60),
        "short-gaps": [s for s in range(60) if s not in (20, 41, 42, 43)],  # max_gap is 3
        "long-gap": [s for s in range(70) if not 30 <= s < 38],
    }.items():
        for step in steps:
            value = 10 + np.sin(step / 4) + rng.normal(0, 0.1)
            rows.append({"series": series, "ts": step * HOUR_MS, "load": value, "temp": -value})
            if series == "short-gaps" and step % 7 == 0:  # a repeat in the same step: first wins
                rows.append(
                    {"series": series, "ts": step * HOUR_MS + 60_000, "load": 0.0, "temp": 0.0}
                )
    frame = pd.DataFrame(rows)
    return frame.assign(ts=pd.to_datetime(frame["ts"], unit="ms", utc=True))


# The champion's calendar options: none, or the calendar features with a holiday region.
CALENDARS = {"no-calendar": {}, "calendar": {"calendar": True, "holidays": "GB"}}


@pytest.fixture(params=list(CALENDARS))
def registered(
    rollcast_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Tracking:
    """A champion in the test's own store (from rollcast_env); MLflow's own loaders find it
    through ``MLFLOW_TRACKING_URI``, as a user loading the model points them."""
    tracking = connect(MlflowSettings(), StoreSettings())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)
    torch.manual_seed(0)
    config = ForecasterConfig(
        channels=("load", "temp"),
        lookback=LOOKBACK,
        horizon=HORIZON,
        hidden_size=16,
        segment_len=6,
        **CALENDARS[request.param],
    )
    model = build_forecaster(config).eval()
    registry.promote(tracking, runs.register_checkpoint(tracking, model, "test"))
    return tracking


def served_last_forecasts(
    tracking: Tracking, kafka: KafkaSettings, fleet: pd.DataFrame, message: str | None = None
) -> dict[str, dict]:
    """Stream the fleet through the serve loop; each series' newest forecast, as published
    (in the format ``message``; None: the serve loop's default, version 2)."""
    transport = KafkaTransport(kafka)
    sink = transport.sink()
    try:
        replay(sink, frame_to_observations(fleet))
        formats = {} if message is None else {"message": message}
        rolling = RollingForecaster(registry.load_champion(tracking), 100, **formats)
        source = transport.source(transport.topics.observations, ServeSettings().serve_group)
        try:
            stop = stop_rule(None, IDLE_S, threading.Event())
            stats = run_serve(source, sink, rolling, stop)
        finally:
            source.close()
    finally:
        sink.close()
    published = read_topic(kafka, transport.topics.forecasts, stats.forecasts_out, settle_s=2)
    assert len(published) == stats.forecasts_out
    newest: dict[str, dict] = {}
    for record in published:  # one partition per series, in order
        forecast = json.loads(record.value or b"{}")
        newest[forecast["series"]] = forecast
    return newest


def test_the_pyfunc_forecasts_what_the_serve_loop_published(
    registered: Tracking, rollcast_env: KafkaSettings
) -> None:
    fleet = fleet_with_gaps()
    history = fleet.assign(ts=fleet["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered.settings.model_name}@champion")
    from_pyfunc = pyfunc.predict(history)
    # Version 1, still served to existing consumers: each step with its own time, and the
    # values unrounded (float32), so a forecast equal to the pyfunc's to the last bits.
    served = served_last_forecasts(registered, rollcast_env, fleet, message="v1")

    assert set(from_pyfunc["series"]) == set(served) == {"whole", "short-gaps", "long-gap"}
    for series_id, forecast in served.items():
        rows = from_pyfunc[from_pyfunc["series"] == series_id].sort_values("step")
        assert rows["ts"].tolist() == [step["ts"] for step in forecast["forecast"]]
        for channel in ("load", "temp"):
            published = [step[channel] for step in forecast["forecast"]]
            # Equal to float32 precision: the two batch the windows differently, and some CPUs'
            # kernels round the last bit by batch shape. A gap or duplicate handled differently
            # moves a forecast by far more than this.
            np.testing.assert_allclose(rows[channel].to_numpy(), published, rtol=1e-6)
    issued = {sid: forecast["issued_at"] for sid, forecast in served.items()}
    assert issued["short-gaps"] == format_timestamp(59 * HOUR_MS)


@pytest.mark.parametrize("loss", ["mse", "pinball"])  # a point head, a quantile head
def test_the_pyfunc_gives_the_intervals_the_serve_loop_published(
    rollcast_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    tracking = connect(MlflowSettings(), StoreSettings())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri)
    torch.manual_seed(0)
    shape = {"hidden_size": 16, "segment_len": 6, "loss": loss}
    config = ForecasterConfig(("load", "temp"), LOOKBACK, HORIZON, **shape)
    model = build_forecaster(config).eval()
    # Radii that grow with the step ahead and differ by channel, as calibrated ones do.
    steps = np.arange(1, HORIZON + 1)[None, :, None]
    model.calibrate_intervals(
        Calibration((0.8, 0.95), np.array([1.0, 2.0])[:, None, None] * steps * [1.0, 3.0])
    )
    registry.promote(tracking, runs.register_checkpoint(tracking, model, "test"))
    fleet = fleet_with_gaps()
    history = fleet.assign(ts=fleet["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))

    pyfunc = mlflow.pyfunc.load_model(f"models:/{tracking.settings.model_name}@champion")
    from_pyfunc = pyfunc.predict(history)
    served = served_last_forecasts(tracking, rollcast_env, fleet)  # version 2, the default

    assert set(served) == {"whole", "short-gaps", "long-gap"}
    for series_id, forecast in served.items():
        rows = from_pyfunc[from_pyfunc["series"] == series_id].sort_values("step")
        assert rows["ts"].iloc[0] == forecast["start"]
        assert [parse_timestamp(ts) for ts in rows["ts"]] == forecast_times(forecast)
        for channel in ("load", "temp"):
            # 6 significant digits on the wire (records.SIGNIFICANT_DIGITS).
            published = forecast_values(forecast, channel)
            np.testing.assert_allclose(rows[channel], published, rtol=1e-5)
            for level in ("0.8", "0.95"):
                bounds = forecast["intervals"][level]
                for side in ("lo", "hi"):
                    column = rows[f"{channel}_{side}_{level}"].to_numpy()
                    np.testing.assert_allclose(column, bounds[side][channel], rtol=1e-5, atol=1e-6)
        inner, outer = (rows[f"temp_hi_{v}"] - rows[f"temp_lo_{v}"] for v in ("0.8", "0.95"))
        assert (outer > inner).all()
        if loss == "mse":  # around a point, the radii alone: further ahead, wider
            assert (np.diff(outer) > 0).all()


def test_a_long_gap_in_the_last_window_stops_both_from_forecasting(
    registered: Tracking, rollcast_env: KafkaSettings
) -> None:
    fleet = fleet_with_gaps()
    cut = fleet[
        (fleet["series"] == "long-gap")
        & (fleet["ts"] < pd.Timestamp(50 * HOUR_MS, unit="ms", tz="UTC"))
    ]
    history = cut.assign(ts=cut["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registered.settings.model_name}@champion")
    with pytest.raises(ForecastError, match="without a gap of more than 3 steps"):
        pyfunc.predict(history)
    served = served_last_forecasts(registered, rollcast_env, cut)
    assert served["long-gap"]["issued_at"] == format_timestamp(29 * HOUR_MS)  # before the gap

"""The demo path with a tiny model: real broker, real MLflow store, real Prefect API."""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from pandas.tseries.frequencies import to_offset
from topics import forecast_times, forecast_values, read_topic

from flows.ingest import ingest_flow
from flows.serve import serve_flow
from flows.train import train_flow
from pipeline.config import KafkaSettings, MlflowSettings, StoreSettings
from pipeline.datasets import FleetSpec, frame_to_observations, synthetic_fleet
from pipeline.kafka_io import KafkaTransport
from pipeline.model import CheckpointError
from pipeline.recipe import AUTO_NORMS
from pipeline.records import parse_timestamp
from pipeline.registry import ContractError, load_champion
from pipeline.tracking import connect_reader
from pipeline.transport import replay
from pipeline.wiring import open_store

pytestmark = pytest.mark.integration

LOOKBACK, HORIZON, STEPS, SERIES = 48, 12, 400, 3
HOUR_MS = 3_600_000


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ROLLCAST_LOOKBACK": LOOKBACK,
        "ROLLCAST_HORIZON": HORIZON,
        "ROLLCAST_HIDDEN_SIZE": 32,
        "ROLLCAST_NUM_LAYERS": 2,
        "ROLLCAST_SEGMENT_LEN": 24,
        "ROLLCAST_DROPOUT": 0.1,
        # A few steps of a tiny model: these tests are about the path, the gate has its own.
        "ROLLCAST_PROMOTION_GATE": "false",
    }.items():
        monkeypatch.setenv(name, str(value))


def stream_and_ingest(kafka: KafkaSettings, fleet: pd.DataFrame) -> tuple[int, dict]:
    """Produce the fleet to the observations topic and run the ingest flow over it."""
    sink = KafkaTransport(kafka).sink()
    try:
        produced = replay(sink, frame_to_observations(fleet))
    finally:
        sink.close()
    return produced, ingest_flow(max_records=produced)


def test_demo_path_publishes_champion_forecasts_for_every_series(
    rollcast_env: KafkaSettings, prefect_api: None, tiny_model: None
) -> None:
    fleet = synthetic_fleet(FleetSpec(n_series=SERIES, n_steps=STEPS, gaps_per_series=0, seed=3))

    produced, ingested = stream_and_ingest(rollcast_env, fleet)
    flow_called_ms = int(time.time() * 1000)
    trained = train_flow(max_steps=40)
    served = serve_flow(max_records=produced)

    assert ingested["rows_written"] == produced == SERIES * STEPS
    _assert_mlflow_holds_the_run_and_champion(trained)
    _assert_the_run_is_named_and_timed(trained, flow_called_ms)
    assert trained["val_mse"] < trained["val_repeat_last_mse"], "beats repeat-last-value"

    expected = SERIES * (STEPS - LOOKBACK + 1)  # one per step once the window is whole
    assert served["forecasts_out"] == expected
    messages = read_topic(rollcast_env, rollcast_env.topic_forecasts, expected=expected)
    assert len(messages) == expected
    _assert_forecasts_are_complete(messages, fleet, trained["version"])


def _assert_mlflow_holds_the_run_and_champion(trained: dict) -> None:
    settings = MlflowSettings()
    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(trained["run_id"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.mlflow_experiment
    assert run.info.artifact_uri.startswith(StoreSettings().data_dir.resolve().as_uri())
    assert run.data.params["model.lookback"] == str(LOOKBACK)
    assert "val_mse" in run.data.metrics and "val_seasonal_naive_mse" in run.data.metrics
    # Intervals calibrated on the validation windows (split conformal) cover them at their level.
    for level in (0.8, 0.95):
        assert run.data.metrics[f"val_coverage.{level}"] >= level
        assert run.data.metrics[f"val_width.{level}"] > 0
    champion_model = load_champion(connect_reader(settings)).model
    calibration = champion_model.calibration
    assert calibration is not None and calibration.levels == (0.8, 0.95)
    targets = len(champion_model.config.target_names)
    assert calibration.radius.shape == (2, champion_model.config.horizon, targets)
    losses = client.get_metric_history(run.info.run_id, "val_loss")
    # The starting weights', a validation every 25 optimizer steps, one at the budget's end.
    assert [m.step for m in losses] == [0, 25, 40] == [*range(0, trained["steps"], 25), 40]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/validation_forecast.png"}
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == trained["version"] and champion.run_id == run.info.run_id


def _assert_the_run_is_named_and_timed(trained: dict, flow_called_ms: int) -> None:
    client = MlflowClient(MlflowSettings().mlflow_tracking_uri)
    run = client.get_run(trained["run_id"])
    kind = client.get_experiment(run.info.experiment_id).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development", "the UI would open on its GenAI pages"
    assert run.info.run_name.startswith(f"train {MlflowSettings().model_name}: {SERIES} series of")
    assert run.info.run_name.endswith(f", v{trained['version']}")
    # The run spans the flow, training included, not just the logging at its end.
    assert flow_called_ms <= run.info.start_time
    duration_s = (run.info.end_time - run.info.start_time) / 1000
    assert duration_s >= run.data.metrics["train_seconds"] > 0


def _assert_forecasts_are_complete(messages: list, fleet: pd.DataFrame, version: str) -> None:
    issued: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        forecast = json.loads(message.value)
        assert message.key == forecast["series"].encode()
        assert forecast["model"]["version"] == version
        issued_at = parse_timestamp(forecast["issued_at"])
        # Version 2, the default: the steps from start and step, one array per channel.
        assert forecast_times(forecast) == [issued_at + (h + 1) * HOUR_MS for h in range(HORIZON)]
        assert {"load", "temp"} <= forecast["values"].keys()
        assert all(len(forecast_values(forecast, c)) == HORIZON for c in ("load", "temp"))
        assert forecast["intervals"].keys() == {"0.8", "0.95"}  # the champion is calibrated
        issued[forecast["series"]].append(issued_at)
    for series_id, rows in fleet.groupby("series"):
        observed = rows["ts"].to_numpy(dtype="datetime64[ms]").astype("int64")
        assert sorted(issued[series_id]) == sorted(observed.tolist()[LOOKBACK - 1 :])


def test_registered_champion_forecasts_a_dataframe_through_pyfunc(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = synthetic_fleet(FleetSpec(n_series=2, n_steps=300, seed=5))
    stream_and_ingest(rollcast_env, fleet)
    train_flow(max_steps=8)

    settings = MlflowSettings()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)  # as a user would
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    recent = fleet.groupby("series").tail(LOOKBACK)
    recent = recent.assign(ts=recent["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    out = model.predict(recent)

    assert len(out) == 2 * HORIZON
    assert set(out["series"]) == set(fleet["series"])
    assert (
        out.groupby("series")["step"]
        .apply(list)
        .map(lambda s: s == list(range(1, HORIZON + 1)))
        .all()
    )
    last = pd.to_datetime(recent.groupby("series")["ts"].max(), utc=True)
    first_step = pd.to_datetime(out[out["step"] == 1].set_index("series")["ts"], utc=True)
    assert (first_step - last.loc[first_step.index] == pd.Timedelta(hours=1)).all()
    assert out[["load", "temp"]].notna().all().all()


def test_an_unloadable_champion_is_replaced_by_the_next_training(
    rollcast_env: KafkaSettings, prefect_api: None, tiny_model: None
) -> None:
    stream_and_ingest(rollcast_env, synthetic_fleet(FleetSpec(n_series=2, n_steps=300, seed=7)))
    first = train_flow(max_steps=4)
    checkpoints = list((StoreSettings().data_dir / "mlartifacts").rglob("forecaster.pt"))
    for checkpoint in checkpoints:
        checkpoint.write_bytes(b"truncated by a full disk")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_champion(connect_reader(MlflowSettings()))  # the champion really is broken now

    second = train_flow(max_steps=4)

    settings = MlflowSettings()
    client = MlflowClient(settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert first["version"] == "1" and second["version"] == "2"
    assert second["promoted"] is True
    assert str(champion.version) == "2"


def test_the_gate_refuses_a_challenger_that_loses_to_seasonal_naive(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_PROMOTION_GATE", "true")
    # A daily pattern that repeats exactly: seasonal-naive (24 steps) is perfect, no model beats it.
    store = StoreSettings()
    stamps = pd.date_range("2024-01-01", periods=STEPS, freq="1h", tz="UTC")
    pattern = [float(h % 24) ** 1.5 for h in range(STEPS)]
    frame = pd.DataFrame({"series": "daily", "ts": stamps, "load": pattern})
    open_store(store).append(frame)

    trained = train_flow(max_steps=4)

    assert trained["promoted"] is False and trained["val_seasonal_naive_mse"] == 0.0
    run = MlflowClient(MlflowSettings().mlflow_tracking_uri).get_run(str(trained["run_id"]))
    assert run.data.tags["rollcast.promotion"] == "does not beat seasonal-naive"
    assert "margin_vs_seasonal_naive" in run.data.metrics
    with pytest.raises(Exception, match="no 'champion' alias"):
        load_champion(connect_reader(MlflowSettings()))


def test_a_half_hourly_fleet_is_stored_and_served_on_its_own_step(
    rollcast_env: KafkaSettings, prefect_api: None, tiny_model: None
) -> None:
    spec = FleetSpec(n_series=2, n_steps=STEPS, freq="30min", gaps_per_series=0, seed=5)
    fleet = synthetic_fleet(spec)

    produced, ingested = stream_and_ingest(rollcast_env, fleet)
    train_flow(max_steps=4)
    served = serve_flow(max_records=produced)

    assert ingested["rows_written"] == produced == 2 * STEPS  # no reading merged into an hour
    champion = load_champion(connect_reader(MlflowSettings()))
    assert champion.model.config.freq == "30min"
    assert served["forecasts_out"] == 2 * (STEPS - LOOKBACK + 1)
    messages = read_topic(rollcast_env, rollcast_env.topic_forecasts, expected=10)
    first = json.loads(messages[0].value or b"{}")
    assert first["step"] == "30min"
    steps = forecast_times(first)
    assert len(steps) == HORIZON and steps[0] == parse_timestamp(first["issued_at"]) + HOUR_MS // 2
    assert {b - a for a, b in itertools.pairwise(steps)} == {HOUR_MS // 2}


def test_short_series_train_with_a_lookback_sized_to_them(
    rollcast_env: KafkaSettings, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLCAST_PROMOTION_GATE", "false")
    store = StoreSettings()
    stamps = pd.date_range("2024-01-01", periods=150, freq="1h", tz="UTC")
    loads = [[float(h % 24 + i) for h in range(150)] for i in range(2)]
    frames = [pd.DataFrame({"series": f"s{i}", "ts": stamps, "load": loads[i]}) for i in range(2)]
    open_store(store).append(pd.concat(frames, ignore_index=True))

    trained = train_flow(max_steps=4)  # the defaults: lookback 720, horizon 24, segments of 48

    assert trained["promoted"] is True
    config = load_champion(connect_reader(MlflowSettings())).model.config
    # 150 steps: 120 train, and a window may take half of them: 36 of lookback, 24 of horizon.
    assert (config.lookback, config.segment_len) == (36, 36)


def test_training_on_an_empty_store_says_to_ingest_first(
    rollcast_env: KafkaSettings, prefect_api: None
) -> None:
    from pipeline.train import TrainingError

    with pytest.raises(TrainingError, match="is empty: run `rollcast ingest` first"):
        train_flow(max_steps=4)


def stored_fleet(seed: int) -> pd.DataFrame:
    """Two gap-free synthetic series, written straight into the store."""
    fleet = synthetic_fleet(FleetSpec(n_series=2, n_steps=STEPS, gaps_per_series=0, seed=seed))
    open_store(StoreSettings()).append(fleet)
    return fleet


def test_a_model_of_another_data_contract_never_takes_the_alias(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_model: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = stored_fleet(seed=5)
    first = train_flow(max_steps=4)
    # Another dataset, in a store of its own, under the same registered model name.
    monkeypatch.setenv("ROLLCAST_DATA_DIR", str(tmp_path / "other"))
    other = fleet.rename(columns={"load": "OT", "temp": "HUFL"})
    open_store(StoreSettings()).append(other)

    with pytest.raises(ContractError, match="ROLLCAST_MODEL_NAME"):
        train_flow(max_steps=4)

    settings = MlflowSettings()
    client = MlflowClient(settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == first["version"] == "1"
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == 1


def test_a_warm_start_trains_from_the_champion_and_records_its_version(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored_fleet(seed=7)
    first = train_flow(max_steps=40)
    monkeypatch.setenv("ROLLCAST_WARM_START", "true")
    monkeypatch.setenv("ROLLCAST_WARM_START_STEPS", "10")

    second = train_flow(max_steps=40)

    client = MlflowClient(MlflowSettings().mlflow_tracking_uri)
    run = client.get_run(str(second["run_id"]))
    assert run.data.params["data.warm_start_from"] == first["version"] == "1"
    assert run.data.params["train.max_steps"] == "10" and second["steps"] <= 10
    version = client.get_model_version(MlflowSettings().model_name, str(second["version"]))
    assert version.tags["parent_version"] == "1"
    # Started from trained weights: its first validation is already near the champion's best.
    first_losses = client.get_metric_history(str(first["run_id"]), "val_loss")
    warm_losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert warm_losses[0].value < first_losses[0].value


def test_a_seed_ensemble_champion_forecasts_the_mean_of_its_seeds(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored_fleet(seed=11)
    monkeypatch.setenv("ROLLCAST_ENSEMBLE", "2")

    trained = train_flow(max_steps=4)

    champion = load_champion(connect_reader(MlflowSettings())).model
    assert champion.config.members == 2 and len(champion.networks) == 2
    x = torch.randn(3, LOOKBACK, champion.config.n_channels)
    with torch.no_grad():
        mean = torch.stack([network(x) for network in champion.networks]).mean(dim=0)
        torch.testing.assert_close(champion(x), mean)
    params = (
        MlflowClient(MlflowSettings().mlflow_tracking_uri).get_run(trained["run_id"]).data.params
    )
    assert params["ensemble"] == "2" and params["ensemble_seeds"] == "0,1"
    # The default norm "auto" trained both norms (each an ensemble) and kept the better one.
    scores = {norm: float(params[f"norm_val_mse.{norm}"]) for norm in AUTO_NORMS}
    assert champion.config.norm == min(scores, key=lambda norm: scores[norm])


def test_version_2_forecasts_carry_intervals_that_hold_most_actuals(
    rollcast_env: KafkaSettings, prefect_api: None, tiny_model: None
) -> None:
    fleet = synthetic_fleet(FleetSpec(n_series=SERIES, n_steps=STEPS, gaps_per_series=0, seed=4))
    produced, _ = stream_and_ingest(rollcast_env, fleet)
    train_flow(max_steps=40)

    serve_flow(max_records=produced)  # version 2 is the default format

    expected = SERIES * (STEPS - LOOKBACK + 1)
    messages = [
        json.loads(m.value)
        for m in read_topic(rollcast_env, rollcast_env.topic_forecasts, expected=expected)
    ]
    actual = {
        (series, ts): row
        for series, rows in fleet.groupby("series")
        for ts, row in zip(
            rows["ts"].to_numpy(dtype="datetime64[ms]").astype("int64"),
            rows[["load", "temp"]].to_numpy(),
            strict=True,
        )
    }
    inside: dict[str, list[bool]] = defaultdict(list)
    for message in messages:
        assert message["v"] == 2 and pd.Timedelta(to_offset(message["step"])) == pd.Timedelta("1h")
        start = parse_timestamp(message["start"])
        assert start == parse_timestamp(message["issued_at"]) + HOUR_MS
        wide, narrow = message["intervals"]["0.95"], message["intervals"]["0.8"]
        for channel, point in message["values"].items():
            point = np.array(point)
            assert (np.array(wide["lo"][channel]) <= np.array(narrow["lo"][channel])).all()
            assert (np.array(narrow["lo"][channel]) <= point).all()
            assert (point <= np.array(narrow["hi"][channel])).all()
            assert (np.array(narrow["hi"][channel]) <= np.array(wide["hi"][channel])).all()
            column = ("load", "temp").index(channel)
            for h in range(HORIZON):
                row = actual.get((message["series"], start + h * HOUR_MS))
                if row is None:
                    continue  # past the stream's end
                for level, bounds in (("0.8", narrow), ("0.95", wide)):
                    inside[level].append(
                        bounds["lo"][channel][h] <= row[column] <= bounds["hi"][channel][h]
                    )
    # Calibrated on the validation windows, the bands hold about their share of the actuals.
    assert np.mean(inside["0.8"]) > 0.65 and np.mean(inside["0.95"]) > 0.85
    assert np.mean(inside["0.8"]) < np.mean(inside["0.95"])

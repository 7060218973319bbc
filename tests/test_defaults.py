"""One source of truth: the train flow's settings, the backtest and the tuner's first trial all
use the defaults written on ForecasterConfig and TrainConfig."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.backtest import BacktestSpec, run_backtest
from pipeline.config import MlflowSettings, ModelSettings, Settings, TrainSettings
from pipeline.recipe import AUTO_NORMS, TRAINING_NORM, ForecasterConfig, TrainConfig
from pipeline.training import FLOW_ONLY, TrainingSettings

SHAPE = ForecasterConfig(channels=())


@pytest.fixture(autouse=True)
def no_rollcast_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("ROLLCAST_")]:
        monkeypatch.delenv(name)


def test_model_settings_default_to_the_forecaster_config() -> None:
    settings = ModelSettings().model_dump(exclude={"season"})

    # The norm is the one exception: training's "auto" resolves to one a network is built with.
    assert settings == {name: getattr(SHAPE, name) for name in settings} | {"norm": TRAINING_NORM}


def test_train_settings_give_the_train_configs_defaults() -> None:
    assert TrainingSettings.of(Settings()).train_config() == TrainConfig()
    engine_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"max_epochs"}
    assert set(TrainSettings.model_fields) - FLOW_ONLY == engine_fields


def test_the_backtest_trains_the_same_defaults() -> None:
    rows = 600
    t = np.arange(rows)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "OT": np.sin(2 * np.pi * t / 24) + 0.01 * t,
        }
    )
    spec = BacktestSpec(horizon=24, train_overrides={"max_steps": 2})

    metrics = run_backtest(frame, "synthetic", spec).metrics

    model, train = metrics["model_config"], metrics["train_config"]
    for name in ("hidden_size", "num_layers", "dropout", "segment_len", "decoder", "cell"):
        assert model[name] == getattr(SHAPE, name)
    assert set(metrics["norm_val_mse"]) == set(AUTO_NORMS)  # "auto", as the train flow
    assert model["norm"] == min(metrics["norm_val_mse"], key=metrics["norm_val_mse"].get)
    # 600 rows: 420 train, a window takes at most half: 210 - 24 = 186, cut to segments of 48.
    assert metrics["lookback"] == 144
    assert (
        dataclasses.replace(TrainConfig(**train), max_steps=TrainConfig().max_steps)
        == TrainConfig()
    )


def test_the_tracking_store_follows_the_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLCAST_DATA_DIR", "/srv/rollcast")

    assert MlflowSettings().mlflow_tracking_uri == "sqlite:////srv/rollcast/mlflow.db"


def test_an_explicit_tracking_uri_wins_over_the_data_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_DATA_DIR", "/srv/rollcast")
    monkeypatch.setenv("ROLLCAST_MLFLOW_TRACKING_URI", "http://mlflow:5000")

    assert MlflowSettings().mlflow_tracking_uri == "http://mlflow:5000"

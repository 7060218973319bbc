"""The training composition root: what it plans to train from a real store, and the one sizing
rule that training, the tuner and backtests share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import ConfigurationError, InvalidFileError
from pipeline.backtest import BacktestSpec, Borders, spec_config
from pipeline.config import MlflowSettings, ModelSettings, Settings, StoreSettings, TrainSettings
from pipeline.contract import step_of
from pipeline.model import load_checkpoint, save_checkpoint
from pipeline.tracking import Tracking, connect
from pipeline.train import TrainingError
from pipeline.training import (
    TrainingSettings,
    challenger_config,
    load_data,
    make_windows,
    plan_training,
    train_challenger,
)
from pipeline.tuning import Budget, Candidate, search
from pipeline.windows import split_point
from pipeline.wiring import open_store

START = pd.Timestamp("2024-01-01", tz="UTC")


def stored(tmp_path: Path, n_steps: int, channels: tuple[str, ...] = ("load",)) -> StoreSettings:
    """A store under ``tmp_path`` holding two hourly series of ``n_steps`` steps."""
    store = StoreSettings(data_dir=tmp_path)
    t = np.arange(n_steps)
    frames = [
        pd.DataFrame(
            {
                "series": series_id,
                "ts": pd.date_range(START, periods=n_steps, freq="1h"),
                **{c: np.sin(2 * np.pi * t / 24) + k for k, c in enumerate(channels)},
            }
        )
        for series_id in ("a", "b")
    ]
    open_store(store).append(pd.concat(frames, ignore_index=True))
    return store


def settings_of(store: StoreSettings, **model: object) -> TrainingSettings:
    return TrainingSettings.of(
        Settings(store=store, model=ModelSettings(**model), train=TrainSettings())
    )


def first_trial_shape(max_lookback: int) -> tuple[int, int]:
    """(lookback, segment) of the tuner's first trial, the defaults, on data of this room."""

    def evaluate(candidate: Candidate, on_eval: object) -> tuple[float, None]:
        return 1.0, None

    result = search(evaluate, max_lookback, Budget(trials=1))
    model = result.trials[0].candidate.model
    return model["lookback"], model["segment_len"]


@pytest.mark.parametrize(
    ("n_steps", "horizon"), [(60, 6), (120, 24), (400, 24), (400, 96), (1000, 96), (5000, 24)]
)
def test_train_tune_and_backtest_build_one_shape_for_one_series(
    tmp_path: Path, n_steps: int, horizon: int
) -> None:
    settings = settings_of(stored(tmp_path, n_steps), horizon=horizon)
    train_steps = split_point(n_steps, settings.train.val_fraction)

    trained = challenger_config(settings, load_data(settings))
    backtested = spec_config(
        BacktestSpec(horizon=horizon), Borders(train_steps, n_steps, n_steps), ("load",)
    )

    shape = (trained.lookback, trained.segment_len)
    assert shape == (backtested.lookback, backtested.segment_len)
    assert first_trial_shape(trained.lookback) == shape
    assert trained.lookback % trained.segment_len == 0
    assert trained.lookback + horizon <= train_steps // 2 or trained.lookback == 1


def test_the_plan_carries_the_datas_contract_into_the_model_config(tmp_path: Path) -> None:
    store = stored(tmp_path, 400, channels=("load", "temp"))
    settings = settings_of(store.model_copy(update={"max_gap": 5}), horizon=6)

    data = load_data(settings)
    config = challenger_config(settings, data)

    assert data.contract.channels == ("load", "temp") and data.contract.max_gap == 5
    assert config.contract == data.contract
    assert step_of(config.freq) == pd.Timedelta(hours=1)


def office_hours_store(tmp_path: Path, weeks: int = 4) -> StoreSettings:
    """A store holding one hourly series recorded 09:00-17:00 on weekdays only."""
    store = StoreSettings(data_dir=tmp_path)
    grid = pd.date_range(START, periods=weeks * 7 * 24, freq="1h")  # START is a Monday
    steps = grid[(grid.day_of_week < 5) & (grid.hour >= 9) & (grid.hour < 17)]
    frame = pd.DataFrame({"series": "a", "ts": steps, "load": np.sin(np.arange(len(steps)))})
    open_store(store).append(frame)
    return store


@pytest.mark.parametrize("policy", ["auto", "open_hours"])
def test_series_with_open_hours_train_a_model_on_its_open_steps(
    tmp_path: Path, policy: str
) -> None:
    store = office_hours_store(tmp_path).model_copy(update={"gap_policy": policy})
    settings = settings_of(store, horizon=4)

    data = load_data(settings)
    config = challenger_config(settings, data)

    assert data.contract.open_hours == "mon-fri 09:00-17:00"
    assert config.open_hours == data.contract.open_hours
    assert config.contract == data.contract
    assert len(data.series["a"]) == 4 * 5 * 8


def test_on_every_step_series_with_open_hours_cannot_be_trained(tmp_path: Path) -> None:
    store = office_hours_store(tmp_path).model_copy(update={"gap_policy": "continuous"})

    with pytest.raises(TrainingError, match="no stored series can be trained on"):
        load_data(settings_of(store, horizon=4))


def test_an_empty_store_asks_for_ingest(tmp_path: Path) -> None:
    settings = settings_of(StoreSettings(data_dir=tmp_path))

    with pytest.raises(TrainingError, match="rollcast ingest"):
        load_data(settings)


def test_a_tuned_config_overrides_the_settings_and_its_old_loss_key_moves_to_the_model(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(
        json.dumps(
            {
                "model_settings": {"hidden_size": 32},
                "train_settings": {"loss": "l1", "learning_rate": 0.01},
            }
        )
    )

    tuned = settings_of(StoreSettings(data_dir=tmp_path)).tuned(path)

    assert (tuned.model.hidden_size, tuned.model.loss) == (32, "l1")
    assert tuned.train_config().learning_rate == 0.01


@pytest.mark.parametrize("text", ["[]", '{"model_settings": {"hidden_size": -1}}', "not json"])
def test_a_tuned_config_rollcast_cannot_use_is_an_invalid_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(text)

    with pytest.raises(InvalidFileError, match="tuned config"):
        settings_of(StoreSettings(data_dir=tmp_path)).tuned(path)


def weekly_store(tmp_path: Path, weeks: int = 8) -> StoreSettings:
    """A store holding one hourly series whose weekends run at half the weekdays' daily profile:
    a week of steps forecasts it better than a day."""
    store = StoreSettings(data_dir=tmp_path)
    ts = pd.date_range(START, periods=weeks * 7 * 24, freq="1h")
    load = np.where(ts.day_of_week < 5, 1.0, 0.5) * (2 + np.sin(2 * np.pi * ts.hour / 24))
    open_store(store).append(pd.DataFrame({"series": "a", "ts": ts, "load": load}))
    return store


def weekly_training(tmp_path: Path, **model: object) -> tuple[TrainingSettings, Tracking]:
    """Settings of a two-step training on :func:`weekly_store`, and a real MLflow store."""
    mlflow = MlflowSettings(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = TrainingSettings.of(
        Settings(
            store=weekly_store(tmp_path),
            mlflow=mlflow,
            model=ModelSettings(horizon=24, hidden_size=8, **model),
            train=TrainSettings(max_steps=2, batch_size=16),
        )
    )
    return settings, connect(settings.mlflow, settings.store)


@pytest.mark.integration
@pytest.mark.parametrize(("norm", "model_season"), [("season", 168), ("last", 24)])
def test_a_norm_season_model_is_trained_and_saved_with_the_chosen_season(
    tmp_path: Path, norm: str, model_season: int
) -> None:
    settings, tracking = weekly_training(tmp_path, norm=norm)

    plan = plan_training(settings, tracking)
    model = train_challenger(plan, *make_windows(plan)).model
    saved = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt"))

    assert (plan.season, plan.season_name) == (168, "week")
    # Only a network that forecasts from the season carries it; "last" keeps the default.
    assert model.config.season == saved.config.season == model_season
    assert saved.config == plan.config


@pytest.mark.integration
def test_a_given_season_longer_than_the_lookback_is_refused_for_norm_season(
    tmp_path: Path,
) -> None:
    settings, tracking = weekly_training(tmp_path, norm="season", lookback=96, season=168)

    with pytest.raises(
        ConfigurationError, match="ROLLCAST_SEASON=168 is longer than the lookback 96"
    ):
        plan_training(settings, tracking)

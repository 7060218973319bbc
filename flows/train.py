"""Train flow: series store → windows → challenger → MLflow run and version → champion if better."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline import registry
from pipeline.config import MlflowSettings, ModelSettings, StoreSettings, TrainSettings
from pipeline.evaluate import Scorecard, score_forecaster
from pipeline.model import CheckpointError, ForecasterConfig, build_forecaster
from pipeline.store import SeriesStore, load_regular_series, shared_channels
from pipeline.train import TrainConfig, TrainingError, TrainResult, fit
from pipeline.windows import SERIES, TS, WindowSet, build_window_sets


@task(cache_policy=NO_CACHE)
def load_series(store: StoreSettings) -> dict[str, pd.DataFrame]:
    series = load_regular_series(SeriesStore(store.store_dir), store.freq, store.max_gap)
    if not series:
        raise TrainingError(
            f"the series store {store.store_dir} is empty: run `rollcast ingest` first"
        )
    return series


@task(cache_policy=NO_CACHE)
def make_windows(
    series: dict[str, pd.DataFrame], config: ForecasterConfig, val_fraction: float
) -> tuple[WindowSet, WindowSet]:
    return build_window_sets(series, config.channels, config.lookback, config.horizon, val_fraction)


@task(cache_policy=NO_CACHE)
def train_challenger(
    train: WindowSet, val: WindowSet, config: ForecasterConfig, train_config: TrainConfig
) -> TrainResult:
    get_run_logger().info("training on %d windows, validating on %d", len(train), len(val))
    return fit(build_forecaster(config), train, val, train_config)


@task(cache_policy=NO_CACHE)
def score_challenger(result: TrainResult, val: WindowSet, season: int) -> Scorecard:
    return score_forecaster(result.model, val, season)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def log_challenger(
    mlflow_settings: MlflowSettings,
    result: TrainResult,
    train_config: TrainConfig,
    card: Scorecard,
    val: WindowSet,
    example: pd.DataFrame,
    data_params: dict[str, object],
) -> registry.LoggedVersion:
    return registry.log_training_run(
        mlflow_settings, result, train_config, card, val, example, data_params
    )


@task(cache_policy=NO_CACHE)
def score_champion(
    mlflow_settings: MlflowSettings, val: WindowSet, config: ForecasterConfig, season: int
) -> float | None:
    """The current champion's validation MSE on the challenger's windows, if comparable."""
    version = registry.champion_version(mlflow_settings)
    if version is None:
        return None
    try:
        champion = registry.load_version(mlflow_settings, version)
    except (registry.RegistryError, CheckpointError) as err:
        get_run_logger().warning(
            "champion v%s cannot be loaded, so it is replaced: %s", version, err
        )
        return None
    if not champion.model.config.serves_like(config):
        get_run_logger().warning(
            "champion v%s has other inputs or outputs: not comparable", version
        )
        return None
    return score_forecaster(champion.model, val, season).mse


@task(cache_policy=NO_CACHE)
def crown(
    mlflow_settings: MlflowSettings,
    challenger: registry.LoggedVersion,
    challenger_mse: float,
    champion_mse: float | None,
) -> bool:
    """Move the champion alias to the challenger if it wins, or if no champion compares."""
    wins = champion_mse is None or challenger_mse < champion_mse
    registry.tag_version(
        mlflow_settings,
        challenger.version,
        {
            "val_mse": f"{challenger_mse:.6f}",
            "champion_val_mse": str(champion_mse),
            "promoted": str(wins),
        },
    )
    if wins:
        registry.promote(mlflow_settings, challenger.version)
    return wins


def input_example(series: dict[str, pd.DataFrame], config: ForecasterConfig) -> pd.DataFrame:
    """The last ``lookback`` steps of one series, as the pyfunc model expects them."""
    series_id, frame = next(iter(series.items()))
    recent = frame[list(config.channels)].dropna().tail(config.lookback).reset_index()
    stamps = recent[TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return recent.assign(**{SERIES: series_id, TS: stamps})[[SERIES, TS, *config.channels]]


@flow(name="rollcast-train")
def train_flow(
    epochs: int | None = None,
    lookback: int | None = None,
    horizon: int | None = None,
    hidden_size: int | None = None,
    store: StoreSettings | None = None,
    mlflow_settings: MlflowSettings | None = None,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
) -> dict[str, object]:
    """Train a challenger on the whole store and promote it if it beats the champion.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do;
    ``epochs``, ``lookback``, ``horizon`` and ``hidden_size`` override them.
    """
    overrides = {"lookback": lookback, "horizon": horizon, "hidden_size": hidden_size}
    model_settings = (model_settings or ModelSettings()).model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    train_settings = train_settings or TrainSettings()
    if epochs is not None:
        train_settings = train_settings.model_copy(update={"epochs": epochs})
    store, mlflow_settings = store or StoreSettings(), mlflow_settings or MlflowSettings()
    registry.configure(mlflow_settings, store)

    series = load_series(store)
    config = forecaster_config(model_settings, shared_channels(series), store)
    train, val = make_windows(series, config, train_settings.val_fraction)
    train_config = train_config_from(train_settings)
    result = train_challenger(train, val, config, train_config)
    card = score_challenger(result, val, model_settings.season)
    data_params: dict[str, object] = {
        "series": len(series),
        "train_windows": len(train),
        "val_windows": len(val),
    }
    logged = log_challenger(
        mlflow_settings, result, train_config, card, val, input_example(series, config), data_params
    )
    champion_mse = score_champion(mlflow_settings, val, config, model_settings.season)
    promoted = crown(mlflow_settings, logged, card.mse, champion_mse)
    return {
        "run_id": logged.run_id,
        "model_name": mlflow_settings.model_name,
        "version": logged.version,
        "promoted": promoted,
        "epochs": len(result.history),
        "device": result.device,
        **card.as_metrics(),
    }


def forecaster_config(
    settings: ModelSettings, channels: tuple[str, ...], store: StoreSettings
) -> ForecasterConfig:
    """The challenger's config: its shape, the store's channels, frequency and gap policy."""
    if not channels:
        raise TrainingError("the stored series share no channel: one model cannot serve them all")
    shape = settings.model_dump(exclude={"season"})  # season is the baseline's, not the model's
    return ForecasterConfig(channels=channels, freq=store.freq, max_gap=store.max_gap, **shape)


def train_config_from(settings: TrainSettings) -> TrainConfig:
    return TrainConfig(**settings.model_dump(exclude={"val_fraction"}))

"""Train flow: series store → windows → challenger → MLflow run and version → champion if better."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.retries import transient_only
from pipeline import registry
from pipeline.config import (
    MlflowSettings,
    ModelSettings,
    RecordSettings,
    StoreSettings,
    TrainSettings,
)
from pipeline.evaluate import Scorecard, Verdict, default_season, judge, score_forecaster
from pipeline.forecast import example_history
from pipeline.model import (
    CheckpointError,
    Forecaster,
    ForecasterConfig,
    build_forecaster,
    warm_started,
)
from pipeline.records import RecordPolicy
from pipeline.store import SeriesStore, TrainingData, load_training_data
from pipeline.train import TrainConfig, TrainingError, TrainResult, fit
from pipeline.windows import (
    SERIES,
    TS,
    WindowSet,
    bounded_lookback,
    build_window_sets,
    freq_to_ms,
)


@task(cache_policy=NO_CACHE)
def load_series(store: StoreSettings, policy: RecordPolicy, span: int) -> TrainingData:
    """The stored series fit to train on; poisoned rows dropped, unfit series skipped."""
    data = load_training_data(SeriesStore(store.store_dir), policy, store.freq, store.max_gap, span)
    if not data.series and not data.skipped:
        raise TrainingError(
            f"the series store {store.store_dir} is empty: run `rollcast ingest` first"
        )
    logger = get_run_logger()
    if data.repaired_rows:
        logger.warning("dropped %d stored rows the record policy refuses", data.repaired_rows)
    if data.skipped:
        logger.warning("left out %d series (reasons in the log above)", len(data.skipped))
    if not data.series:
        reasons = sorted(set(data.skipped.values()))[:3]
        raise TrainingError(f"no stored series can be trained on: {reasons}")
    return data


@task(cache_policy=NO_CACHE)
def make_windows(
    series: dict[str, pd.DataFrame], config: ForecasterConfig, val_fraction: float
) -> tuple[WindowSet, WindowSet]:
    return build_window_sets(series, config.channels, config.lookback, config.horizon, val_fraction)


@task(cache_policy=NO_CACHE)
def train_challenger(
    train: WindowSet,
    val: WindowSet,
    config: ForecasterConfig,
    train_config: TrainConfig,
    start: Forecaster | None = None,
) -> TrainResult:
    """Train from ``start`` (the champion's weights) when given, else from a fresh model."""
    get_run_logger().info("training on %d windows, validating on %d", len(train), len(val))
    model = start if start is not None else build_forecaster(config, seed=train_config.seed)
    return fit(model, train, val, train_config)


@task(cache_policy=NO_CACHE)
def warm_start_from(
    mlflow_settings: MlflowSettings, config: ForecasterConfig
) -> tuple[Forecaster, str] | None:
    """The champion's weights and version, if there is a champion with this exact config."""
    logger = get_run_logger()
    version = registry.champion_version(mlflow_settings)
    if version is None:
        logger.info("no champion to warm start from: training from scratch")
        return None
    try:
        champion = registry.load_version(mlflow_settings, version)
    except CheckpointError as err:
        logger.warning("cannot warm start from version %s: %s", version, err)
        return None
    model = warm_started(champion.model, config)
    if model is None:
        logger.info("version %s has another config: training from scratch", version)
        return None
    logger.info("warm start from version %s", version)
    return model, version


@task(cache_policy=NO_CACHE)
def score_challenger(result: TrainResult, val: WindowSet, season: int) -> Scorecard:
    return score_forecaster(result.model, val, season)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=transient_only)
def log_challenger(
    mlflow_settings: MlflowSettings,
    result: TrainResult,
    train_config: TrainConfig,
    card: Scorecard,
    val: WindowSet,
    example: pd.DataFrame,
    data_params: dict[str, object],
    label: registry.RunLabel,
) -> registry.LoggedVersion:
    return registry.log_training_run(
        mlflow_settings, result, train_config, card, val, example, data_params, label
    )


@task(cache_policy=NO_CACHE)
def score_champion(
    mlflow_settings: MlflowSettings, val: WindowSet, config: ForecasterConfig, season: int
) -> float | None:
    """The current champion's validation MSE on the challenger's windows, if comparable.

    Raises :class:`registry.RegistryUnavailableError` when the registry cannot say.
    """
    version = registry.champion_version(mlflow_settings)
    if version is None:
        return None
    try:
        champion = registry.load_version(mlflow_settings, version)
    except registry.RegistryUnavailableError:
        raise  # an outage says nothing about the champion: no promotion without a comparison
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
    mlflow_settings: MlflowSettings, challenger: registry.LoggedVersion, verdict: Verdict
) -> bool:
    """Move the champion alias to the challenger if the gate passes it; record why in MLflow."""
    registry.record_verdict(mlflow_settings, challenger, verdict.as_metrics(), verdict.reason)
    logger = get_run_logger()
    if verdict.promoted:
        registry.promote(mlflow_settings, challenger.version)
        logger.info("version %s is champion: %s", challenger.version, verdict.reason)
    else:
        logger.warning("version %s is not promoted: %s", challenger.version, verdict.reason)
    return verdict.promoted


def input_example(series: dict[str, pd.DataFrame], config: ForecasterConfig) -> pd.DataFrame:
    """The last ``lookback`` steps of a series that has them all, as the pyfunc expects them.

    A series whose newest steps lie across a long gap cannot be an example; when none can,
    the example is a flat history.
    """
    for series_id, frame in series.items():
        recent = frame[list(config.channels)].tail(config.lookback)
        if len(recent) == config.lookback and not recent.isna().to_numpy().any():
            recent = recent.reset_index()
            stamps = recent[TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            return recent.assign(**{SERIES: series_id, TS: stamps})[[SERIES, TS, *config.channels]]
    return example_history(config)


@flow(name="rollcast-train")
def train_flow(
    max_steps: int | None = None,
    lookback: int | None = None,
    horizon: int | None = None,
    hidden_size: int | None = None,
    store: StoreSettings | None = None,
    mlflow_settings: MlflowSettings | None = None,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
    records: RecordSettings | None = None,
    tuned_config: Path | None = None,
) -> dict[str, object]:
    """Train a challenger on the whole store and promote it if it beats the champion.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    A tuned config (``tuned_config``, else ``ROLLCAST_TUNED_CONFIG``) overrides them, and with
    ``ROLLCAST_TUNE_TRIALS`` > 0 a search runs first and its best config is used;
    ``max_steps``, ``lookback``, ``horizon`` and ``hidden_size`` override them all.
    """
    started_ms = int(time.time() * 1000)
    store, mlflow_settings = store or StoreSettings(), mlflow_settings or MlflowSettings()
    model_settings, train_settings = chosen_settings(
        store,
        mlflow_settings,
        (model_settings or ModelSettings(), train_settings or TrainSettings()),
        records,
        tuned_config,
    )
    overrides = {"lookback": lookback, "horizon": horizon, "hidden_size": hidden_size}
    model_settings = model_settings.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    if max_steps is not None:
        train_settings = train_settings.model_copy(update={"max_steps": max_steps})
    registry.configure(mlflow_settings, store)

    policy = (records or RecordSettings()).policy()
    shortest_span = model_settings.segment_len + model_settings.horizon
    data = load_series(store, policy, shortest_span)
    series = data.series
    model_settings = sized_to_data(model_settings, data, train_settings.val_fraction)
    config = forecaster_config(model_settings, data, store)
    registry.require_contract(mlflow_settings, registry.DataContract(config.channels, config.freq))
    train, val = make_windows(series, config, train_settings.val_fraction)
    train_config = train_config_from(train_settings)
    warm = warm_start_from(mlflow_settings, config) if train_settings.warm_start else None
    if warm is not None:
        budget = min(train_config.max_steps, train_settings.warm_start_steps)
        train_config = replace(train_config, max_steps=budget)
    result = train_challenger(train, val, config, train_config, warm[0] if warm else None)
    season = model_settings.season or default_season(freq_to_ms(config.freq))
    card = score_challenger(result, val, season)
    data_params: dict[str, object] = {
        "series": len(series),
        "skipped_series": len(data.skipped),
        "repaired_rows": data.repaired_rows,
        "train_windows": len(train),
        "val_windows": len(val),
        "warm_start_from": warm[1] if warm else "none",
    }
    label = registry.RunLabel(started_ms, describe_data(series, config))
    example = input_example(series, config)
    logged = log_challenger(
        mlflow_settings, result, train_config, card, val, example, data_params, label
    )
    champion_mse = score_champion(mlflow_settings, val, config, season)
    verdict = judge(card, champion_mse, train_settings.promotion_gate)
    if warm is not None:
        registry.tag_version(mlflow_settings, logged.version, {"parent_version": warm[1]})
    promoted = crown(mlflow_settings, logged, verdict)
    return {
        "run_id": logged.run_id,
        "model_name": mlflow_settings.model_name,
        "version": logged.version,
        "promoted": promoted,
        "steps": result.steps,
        "best_step": result.best_step,
        "device": result.device,
        **card.as_metrics(),
    }


def describe_data(series: dict[str, pd.DataFrame], config: ForecasterConfig) -> str:
    """A run name's data part, e.g. "8 series of 1h to 2016-07-11 13:00"."""
    last = max(frame.index.max() for frame in series.values())  # indexed by TS
    return f"{len(series)} series of {config.freq} to {last:%Y-%m-%d %H:%M}"


def sized_to_data(
    settings: ModelSettings, data: TrainingData, val_fraction: float
) -> ModelSettings:
    """The settings with a lookback (and segment) the longest stored series can train with."""
    longest = max(len(frame) for frame in data.series.values())
    room = bounded_lookback(settings.lookback, settings.horizon, longest, val_fraction)
    segment = min(settings.segment_len, room) if settings.architecture == "lstm" else 1
    lookback = max(room // segment * segment, segment)
    if (lookback, segment) != (settings.lookback, settings.segment_len):
        get_run_logger().info(
            "lookback %d -> %d (segments of %d steps): the longest series has %d steps",
            settings.lookback,
            lookback,
            segment,
            longest,
        )
    update = {"lookback": lookback}
    if settings.architecture == "lstm":
        update["segment_len"] = segment
    return settings.model_copy(update=update)


def chosen_settings(
    store: StoreSettings,
    mlflow_settings: MlflowSettings,
    settings: tuple[ModelSettings, TrainSettings],
    records: RecordSettings | None,
    tuned_config: Path | None,
) -> tuple[ModelSettings, TrainSettings]:
    """The settings with a tuned config applied: the one given, or a search's when asked for."""
    model_settings, train_settings = settings
    tuned_config = tuned_config or train_settings.tuned_config
    if train_settings.tune_trials and tuned_config is None:
        tuned_config = search_first(store, mlflow_settings, model_settings, train_settings, records)
    if tuned_config is None:
        return model_settings, train_settings
    return with_tuned(model_settings, train_settings, tuned_config)


def search_first(
    store: StoreSettings,
    mlflow_settings: MlflowSettings,
    model_settings: ModelSettings,
    train_settings: TrainSettings,
    records: RecordSettings | None,
) -> Path:
    """Run the tune flow (``ROLLCAST_TUNE_TRIALS`` trials) and return its tuned config."""
    from flows.tune import tune_flow  # the tune flow builds on this module's tasks

    tuned = tune_flow(
        store=store,
        mlflow_settings=mlflow_settings,
        model_settings=model_settings,
        train_settings=train_settings,
        records=records,
    )
    return Path(tuned["tuned_config"])


def with_tuned(
    model_settings: ModelSettings, train_settings: TrainSettings, path: Path
) -> tuple[ModelSettings, TrainSettings]:
    """The settings with a tuned config's overrides (see ``rollcast tune``) applied."""
    try:
        tuned: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot read the tuned config {path}: {err}") from err
    get_run_logger().info("using the tuned config %s: %s", path, tuned)
    return (
        ModelSettings.model_validate(
            {**model_settings.model_dump(), **tuned.get("model_settings", {})}
        ),
        TrainSettings.model_validate(
            {**train_settings.model_dump(), **tuned.get("train_settings", {})}
        ),
    )


def forecaster_config(
    settings: ModelSettings, data: TrainingData, store: StoreSettings
) -> ForecasterConfig:
    """The challenger's config: its shape, the data's channels and step, the gap policy."""
    channels = data.channels
    if not channels:
        raise TrainingError("the stored series share no channel: one model cannot serve them all")
    shape = settings.model_dump(exclude={"season"})  # season is the baseline's, not the model's
    return ForecasterConfig(channels=channels, freq=data.freq, max_gap=store.max_gap, **shape)


# Train-flow settings that are not the engine's.
FLOW_ONLY = {
    "val_fraction",
    "promotion_gate",
    "tuned_config",
    "tune_trials",
    "tune_timeout_s",
    "tune_trial_timeout_s",
    "warm_start",
    "warm_start_steps",
}


def train_config_from(settings: TrainSettings) -> TrainConfig:
    return TrainConfig(**settings.model_dump(exclude=FLOW_ONLY))

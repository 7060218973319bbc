"""The training composition root: settings plus the series store → what to train → a challenger.

:func:`plan_training` turns the settings (with a tuned config applied, see
:meth:`TrainingSettings.tuned`) and the store into a :class:`TrainingPlan`: the data under its
contract, the model config sized to the data, the training config and the champion to warm
start from. The stages after it (windows, fit, score, log, judge) are plain functions here; the
train flow (``flows/train.py``) runs each as a Prefect task, and the tune flow runs
:func:`search_store` on the same plan. Neither flow imports the other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import ConfigurationError, InvalidFileError, ResourceError, registry, runs
from pipeline.config import (
    MlflowSettings,
    ModelSettings,
    RecordSettings,
    Settings,
    StoreSettings,
    TrainSettings,
)
from pipeline.evaluate import (
    Scorecard,
    SeasonChoice,
    Verdict,
    calibrate_forecaster,
    judge,
    score_forecaster,
    series_season,
)
from pipeline.files import one_line, read_json_object
from pipeline.forecast import example_history
from pipeline.model import CheckpointError, Forecaster, warm_started
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.store import SeriesStore, StoredRows
from pipeline.tracking import Tracking
from pipeline.train import TrainingError, TrainResult, fit_config, fit_ensemble
from pipeline.training_data import TrainingData, prepare_training_data
from pipeline.windows import (
    SERIES,
    TS,
    WindowSet,
    build_window_sets,
    format_timestamp,
    freq_to_ms,
    split_point,
)
from pipeline.wiring import open_store

logger = logging.getLogger(__name__)

# Train-flow settings that are not the engine's.
FLOW_ONLY = {
    "val_fraction",
    "val_folds",
    "ensemble",
    "promotion_gate",
    "tuned_config",
    "tune_trials",
    "tune_timeout_s",
    "tune_trial_timeout_s",
    "warm_start",
    "warm_start_steps",
    "train_memory_mb",
    "max_windows",
    "data_version",
}
# Bytes training holds per stored row read: 28 read (code, ts, stored_at, a float32 value),
# 8 for the sort, 4 regularized, and room for the windows' index.
BYTES_PER_ROW = 48
# Settings a tuned config written before the loss moved to the model config keeps under training.
MOVED_TO_MODEL = ("loss",)


@dataclass(frozen=True)
class TrainingSettings:
    """Every setting training reads, read once at the entry point."""

    store: StoreSettings
    mlflow: MlflowSettings
    model: ModelSettings
    train: TrainSettings
    records: RecordSettings

    @classmethod
    def of(cls, settings: Settings) -> TrainingSettings:
        """The parts of the app's settings that training reads."""
        return cls(
            settings.store, settings.mlflow, settings.model, settings.train, settings.records
        )

    def with_max_steps(self, max_steps: int | None) -> TrainingSettings:
        if max_steps is None:
            return self
        return replace(self, train=self.train.model_copy(update={"max_steps": max_steps}))

    def tuned(self, path: Path) -> TrainingSettings:
        """The settings with a tuned config's overrides (see ``rollcast tune``) applied.

        The overrides pass the same checks as the environment's settings. Raises
        :class:`InvalidFileError` (one line naming ``path``) for a file that is not a tuned
        config or names settings Rollcast refuses, and :class:`ResourceError` for a device
        this machine lacks.
        """
        tuned = read_tuned(path)
        logger.info("using the tuned config %s: %s", path, tuned.overrides())
        model, train = dict(tuned.model_settings), dict(tuned.train_settings)
        model.update({name: train.pop(name) for name in MOVED_TO_MODEL if name in train})
        try:
            chosen = replace(
                self,
                model=ModelSettings.model_validate({**self.model.model_dump(), **model}),
                train=TrainSettings.model_validate({**self.train.model_dump(), **train}),
            )
        except (ValidationError, ConfigurationError) as err:
            refused = describe(err) if isinstance(err, ValidationError) else one_line(err)
            raise InvalidFileError(
                f"{path}: the tuned config has settings Rollcast refuses: {refused}"
            ) from err
        require_device(chosen.train.device, f"{path}: the tuned config's")
        return chosen

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train.model_dump(exclude=FLOW_ONLY))


class TunedConfig(BaseModel):
    """A tuned config as ``rollcast tune`` writes it (:func:`pipeline.selection.tuned_config`):
    settings overrides by name, and what they were tuned on."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model_settings: dict[str, Any] = Field(default_factory=dict)
    train_settings: dict[str, Any] = Field(default_factory=dict)
    val_mse: float | None = None
    tuned_on: dict[str, Any] | None = None
    search_run_id: str | None = None

    def overrides(self) -> dict[str, Any]:
        return {**self.model_settings, **self.train_settings}

    def unknown_names(self) -> list[str]:
        """Override names no setting has (a typo would otherwise be ignored silently)."""
        model = set(self.model_settings) - set(ModelSettings.model_fields)
        train = set(self.train_settings) - set(TrainSettings.model_fields) - set(MOVED_TO_MODEL)
        return sorted(f"model_settings.{n}" for n in model) + sorted(
            f"train_settings.{n}" for n in train
        )


def read_tuned(path: Path) -> TunedConfig:
    """The tuned config in ``path``: a capped, regular JSON file of :class:`TunedConfig`'s
    schema; :class:`InvalidFileError`, one line naming the path, if it is not one."""
    try:
        tuned = TunedConfig.model_validate(read_json_object(Path(path), "tuned config"))
    except ValidationError as err:
        raise InvalidFileError(f"{path}: not a tuned config: {describe(err)}") from err
    unknown = tuned.unknown_names()
    if unknown:
        raise InvalidFileError(f"{path}: the tuned config names no such setting: {unknown}")
    return tuned


def describe(err: ValidationError) -> str:
    """A pydantic error on one line: ``field: what is wrong; ...``."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'the file'}: {error['msg']}"
        for error in err.errors()
    ]
    return one_line("; ".join(problems))


def require_device(device: str, source: str) -> None:
    """Refuse a training device this machine lacks before any work starts: the error is
    the machine's (:class:`ResourceError`), not an outage, so no retry can help. ``source``
    says where the setting came from ("ROLLCAST_DEVICE" or a tuned config)."""
    if device == "auto":
        return
    try:
        wanted = torch.device(device)
    except RuntimeError as err:
        raise ConfigurationError(f"{source} device {device!r} is not a torch device") from err
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(
            f"{source} device {device!r} needs a CUDA GPU and this machine has none: "
            "use 'auto' or 'cpu'"
        )
    if wanted.type == "cuda" and (wanted.index or 0) >= torch.cuda.device_count():
        raise ResourceError(
            f"{source} device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)"
        )


@dataclass(frozen=True)
class WarmStart:
    """The champion's weights a challenger starts from, and its version."""

    model: Forecaster
    version: str


@dataclass(frozen=True)
class TrainingPlan:
    """What to train: on which data, with which shape and training, from which weights."""

    data: TrainingData
    config: ForecasterConfig
    train_config: TrainConfig
    val_fraction: float
    season: int  # the seasonal-naive period the challenger is judged against
    warm: WarmStart | None = None
    table: TableRead | None = None  # where the data was read, for the run's dataset input
    season_name: str = "given"  # which candidate the season is (SeasonChoice.name)
    val_folds: int = 1  # validation blocks per series (windows.validation_blocks)
    ensemble: int | str = 1  # seeds averaged, or "auto" (pipeline.train.fit_ensemble)


@dataclass(frozen=True)
class TableRead:
    """The table training read, and the cutoff when its memory setting let it read only the
    newest rows (the version and the rows read are the :class:`TrainingData`'s)."""

    uri: str
    sampled_since: int | None = None  # epoch ms; None: every row of the version


def load_data(settings: TrainingSettings) -> TrainingData:
    """The stored series fit to train on; poisoned rows dropped, unfit series skipped.

    Raises :class:`TrainingError` when the store is empty or no series can be trained on.
    """
    return load_table(settings)[0]


def load_table(settings: TrainingSettings) -> tuple[TrainingData, TableRead]:
    """:func:`load_data`'s data, and which table and rows of it it was read from."""
    store, span = open_store(settings.store), settings.model.segment_len + settings.model.horizon
    since = sample_cutoff(store, settings.train)
    rows = read_rows(store, settings.train, since)
    data = prepare_training_data(
        rows,
        settings.records.policy(),
        settings.store.freq,
        settings.store.max_gap,
        span,
        settings.store.gap_policy,
    )
    check_data(data, store)
    return data, TableRead(table_location(settings.store.table_uri), since)


def check_data(data: TrainingData, store: SeriesStore) -> None:
    """Say what was left out; :class:`TrainingError` when nothing can be trained on."""
    if not data.series and not data.skipped:
        raise TrainingError(
            f"the series store {store.info().location} is empty: run `rollcast ingest` first"
        )
    if data.repaired_rows:
        logger.warning("dropped %d stored rows the record policy refuses", data.repaired_rows)
    if data.skipped:
        logger.warning("left out %d series (reasons in the log above)", len(data.skipped))
    if not data.series:
        reasons = sorted(set(data.skipped.values()))[:3]
        raise TrainingError(f"no stored series can be trained on: {reasons}")


def table_location(uri: str) -> str:
    """A table URI as a run records it: a local path made absolute, an object-store URI as is."""
    return uri if "://" in uri else str(Path(uri).resolve())


def sample_cutoff(store: SeriesStore, train: TrainSettings) -> int | None:
    """The time (epoch ms) after which training reads rows: None, all fit its memory setting."""
    max_rows = train.train_memory_mb * 2**20 // BYTES_PER_ROW
    since = store.cutoff_for(max_rows, train.data_version)
    if since is not None:
        logger.warning(
            "the table holds more rows than ROLLCAST_TRAIN_MEMORY_MB=%d allows: training reads "
            "the newest, after %s",
            train.train_memory_mb,
            format_timestamp(since),
        )
    return since


def read_rows(store: SeriesStore, train: TrainSettings, since: int | None = None) -> StoredRows:
    """The stored rows training reads at its version: those after ``since``, or all."""
    started = time.monotonic()
    rows = store.rows(since, train.data_version)
    logger.info(
        "read %d rows of %d series at table version %s in %.1f s",
        len(rows),
        len(rows.series),
        rows.version,
        time.monotonic() - started,
    )
    return rows


def challenger_config(settings: TrainingSettings, data: TrainingData) -> ForecasterConfig:
    """The model settings on the data's contract, sized to the longest series' training part."""
    if not data.channels:
        raise TrainingError("the stored series share no channel: one model cannot serve them all")
    # The season is chosen from the data once the lookback is sized (plan_season), and only
    # a network that reads it carries it (seasoned); the targets are checked first.
    shape = settings.model.model_dump(exclude={"season", "targets"})
    missing = [name for name in settings.model.targets if name not in data.channels]
    if missing:
        raise TrainingError(
            f"ROLLCAST_TARGETS names {missing}, which the stored series do not share: "
            f"choose among {list(data.channels)}"
        )
    config = ForecasterConfig(
        channels=data.channels,
        freq=data.freq,
        max_gap=data.contract.max_gap,
        open_hours=data.contract.open_hours,
        targets=tuple(settings.model.targets),
        **shape,
    )
    longest = data.longest()
    fitted = config.fitted(split_point(longest, settings.train.val_fraction))
    if (fitted.lookback, fitted.segment_len) != (config.lookback, config.segment_len):
        logger.info(
            "lookback %d -> %d (segments of %d steps): the longest series has %d steps",
            config.lookback,
            fitted.lookback,
            fitted.segment_len,
            longest,
        )
    return fitted


def plan_training(settings: TrainingSettings, tracking: Tracking) -> TrainingPlan:
    """Load the data, size the model to it, check the registered contract, find a warm start."""
    require_device(settings.train.device, "ROLLCAST_DEVICE:")
    data, table = load_table(settings)
    config = challenger_config(settings, data)
    season = plan_season(settings, data, config)
    config = seasoned(config, season)
    registry.require_contract(tracking, config.contract)
    train_config = settings.train_config()
    warm = warm_start(tracking, config) if settings.train.warm_start else None
    if warm is not None:
        budget = min(train_config.max_steps, settings.train.warm_start_steps)
        train_config = replace(train_config, max_steps=budget)
    val_fraction = settings.train.val_fraction
    plan = TrainingPlan(data, config, train_config, val_fraction, season.period, warm, table)
    train = settings.train
    return replace(
        plan, season_name=season.name, val_folds=train.val_folds, ensemble=train.ensemble
    )


def plan_season(
    settings: TrainingSettings, data: TrainingData, config: ForecasterConfig
) -> SeasonChoice:
    """The seasonal-naive period of the gate: the setting's, else the one that forecasts the
    training part of the data best (:func:`pipeline.evaluate.series_season`)."""
    if settings.model.season:
        return SeasonChoice(settings.model.season, "given")
    channels, val_fraction = config.channels, settings.train.val_fraction
    step_ms = freq_to_ms(config.freq)
    choice = series_season(
        data.series, channels, step_ms, config.horizon, val_fraction, config.lookback
    )
    logger.info(
        "seasonal-naive period %d steps (%s): %s", choice.period, choice.name, choice.scores
    )
    return choice


def seasoned(config: ForecasterConfig, season: SeasonChoice) -> ForecasterConfig:
    """The model config carrying the gate's period where its network reads one (``norm``
    "season": the LSTM forecasts the residual over that seasonal-naive), so the checkpoint,
    serve and the pyfunc all use it.

    Raises :class:`ConfigurationError` for a given ``ROLLCAST_SEASON`` longer than the lookback
    sized to the data (a chosen period never is).
    """
    if config.reads_season and season.period > config.lookback:
        raise ConfigurationError(
            f"ROLLCAST_SEASON={season.period} is longer than the lookback {config.lookback} "
            "the stored series allow, and ROLLCAST_NORM=season repeats a whole season: "
            "shorten the season, unset it to choose one from the data, or use another norm"
        )
    return config.with_season(season.period)


def warm_start(tracking: Tracking, config: ForecasterConfig) -> WarmStart | None:
    """The champion's weights and version, if there is a champion with this exact config."""
    version = registry.champion_version(tracking)
    if version is None:
        logger.info("no champion to warm start from: training from scratch")
        return None
    try:
        champion = registry.load_version(tracking, version)
    except CheckpointError as err:
        logger.warning("cannot warm start from version %s: %s", version, err)
        return None
    model = warm_started(champion.model, config)
    if model is None:
        logger.info("version %s has another config: training from scratch", version)
        return None
    logger.info("warm start from version %s", version)
    return WarmStart(model, version)


def make_windows(plan: TrainingPlan, max_windows: int | None = None) -> tuple[WindowSet, WindowSet]:
    """The training and validation windows; at most ``max_windows`` training ones, drawn
    evenly (seeded) when there are more."""
    train, val = config_windows(plan.data, plan.config, plan.val_fraction, plan.val_folds)
    return sample_windows(plan, train, max_windows), val


def config_windows(
    data: TrainingData, config: ForecasterConfig, val_fraction: float, folds: int
) -> tuple[WindowSet, WindowSet]:
    """The training and validation windows of ``config``'s shape over the stored series,
    forecasting its targets (:func:`pipeline.windows.build_window_sets`)."""
    train, val = build_window_sets(
        data.series, config.channels, config.lookback, config.horizon, val_fraction, folds
    )
    return train.forecasting(config.forecast_columns), val.forecasting(config.forecast_columns)


def sample_windows(plan: TrainingPlan, train: WindowSet, max_windows: int | None) -> WindowSet:
    """At most ``max_windows`` of the training windows, drawn evenly (seeded) when there are
    more (the run logs how many it drew of how many: ``train.windows_sampled``)."""
    if max_windows is None or len(train) <= max_windows:
        return train
    logger.warning(
        "sampling %d of %d training windows (ROLLCAST_MAX_WINDOWS)", max_windows, len(train)
    )
    rng = np.random.default_rng(plan.train_config.seed)
    return train.subset(np.sort(rng.choice(len(train), max_windows, replace=False)))


def train_challenger(plan: TrainingPlan, train: WindowSet, val: WindowSet) -> TrainResult:
    """Train from the warm start's weights when there is one, else from a fresh model."""
    logger.info("training on %d windows, validating on %d", len(train), len(val))
    if plan.warm is not None:
        return fit_ensemble(plan.warm.model, train, val, plan.train_config, plan.ensemble)
    return fit_config(plan.config, train, val, plan.train_config, plan.ensemble)


def score_challenger(result: TrainResult, val: WindowSet, plan: TrainingPlan) -> Scorecard:
    """Calibrate the challenger's intervals on the validation windows, then score it there
    (from the same forecasts)."""
    outputs = calibrate_forecaster(result.model, val)
    return score_forecaster(result.model, val, plan.season, outputs)


@dataclass(frozen=True)
class Challenger:
    """A trained challenger and what its run logs beside it."""

    result: TrainResult
    card: Scorecard
    val: WindowSet
    train_windows: int
    windows_available: int | None = None  # training windows before sampling; None: not known

    def windows_sampled(self) -> str:
        """E.g. "2000000 of 3100000" when ``ROLLCAST_MAX_WINDOWS`` sampled them, else "none"."""
        available = self.windows_available
        if available is None or available <= self.train_windows:
            return "none"
        return f"{self.train_windows} of {available}"


def log_challenger(
    tracking: Tracking, plan: TrainingPlan, challenger: Challenger, started_ms: int
) -> registry.LoggedVersion:
    """The challenger's MLflow run and registered version, named after the data it saw, with
    the table version it read as the run's dataset input."""
    data = plan.data
    label = runs.RunLabel(started_ms, describe_data(data.series, plan.config))
    run = runs.TrainingRun(
        label,
        challenger.result,
        plan.train_config,
        challenger.card,
        challenger.val,
        input_example(data.series, plan.config),
        data_params(plan, challenger),
        table_input(plan),
        {
            "train.windows_sampled": challenger.windows_sampled(),
            "season": plan.season,
            "season_name": plan.season_name,
            **ensemble_params(challenger.result),
            **norm_params(challenger.result),
        },
    )
    logged = runs.log_training_run(tracking, run)
    if plan.warm is not None:
        registry.tag_version(tracking, logged.version, {"parent_version": plan.warm.version})
    return logged


def ensemble_params(result: TrainResult) -> dict[str, object]:
    """What the run records of a seed ensemble: the seeds kept and both validation MSEs."""
    if result.ensemble is None:
        return {"ensemble": 1}
    figures = result.ensemble.figures()
    figures["ensemble_seeds"] = ",".join(map(str, result.ensemble.seeds))
    return figures


def norm_params(result: TrainResult) -> dict[str, object]:
    """What the run records of a norm "auto" choice: each norm's validation MSE (the model
    config holds the norm kept); nothing for a single norm."""
    return {f"norm_val_mse.{norm}": mse for norm, mse in (result.norms or {}).items()}


def data_params(plan: TrainingPlan, challenger: Challenger) -> dict[str, object]:
    """The run's ``data.*`` params: what was read (the table version, the rows) and used."""
    data, since = plan.data, plan.table.sampled_since if plan.table else None
    return {
        "version": "unknown" if data.version is None else data.version,
        "rows_read": data.rows_read,
        "sampled_since": "none" if since is None else format_timestamp(since),
        "series": len(data.series),
        "skipped_series": len(data.skipped),
        "repaired_rows": data.repaired_rows,
        "train_windows": challenger.train_windows,
        "val_windows": len(challenger.val),
        "val_folds": plan.val_folds,
        "warm_start_from": plan.warm.version if plan.warm else "none",
    }


def table_input(plan: TrainingPlan) -> runs.TableInput | None:
    """The table version the plan's data was read at, as the run's dataset input."""
    data, table = plan.data, plan.table
    if table is None or data.version is None:
        return None
    return runs.TableInput(
        table.uri, data.version, data.channels, data.rows_read, table.sampled_since
    )


def score_champion(tracking: Tracking, val: WindowSet, plan: TrainingPlan) -> float | None:
    """The current champion's validation MSE on the challenger's windows, if comparable.

    Raises :class:`registry.RegistryUnavailableError` when the registry cannot say.
    """
    version = registry.champion_version(tracking)
    if version is None:
        return None
    try:
        champion = registry.load_version(tracking, version)
    except registry.RegistryUnavailableError:
        raise  # an outage says nothing about the champion: no promotion without a comparison
    except (registry.RegistryError, CheckpointError) as err:
        logger.warning("champion v%s cannot be loaded, so it is replaced: %s", version, err)
        return None
    if not champion.model.config.serves_like(plan.config):
        logger.warning("champion v%s has other inputs or outputs: not comparable", version)
        return None
    return score_forecaster(champion.model, val, plan.season).mse


def crown(
    settings: TrainingSettings,
    tracking: Tracking,
    logged: registry.LoggedVersion,
    card: Scorecard,
    champion_mse: float | None,
) -> Verdict:
    """Judge the challenger; move the champion alias to it if the gate passes; say why."""
    verdict = judge(card, champion_mse, settings.train.promotion_gate)
    registry.record_verdict(tracking, logged, verdict.as_metrics(), verdict.reason)
    if verdict.promoted:
        registry.promote(tracking, logged.version)
        logger.info("version %s is champion: %s", logged.version, verdict.reason)
    else:
        logger.warning("version %s is not promoted: %s", logged.version, verdict.reason)
    return verdict


def input_example(series: dict[str, pd.DataFrame], config: ForecasterConfig) -> pd.DataFrame:
    """The last ``lookback`` steps of a series that has them all, as the pyfunc expects them.

    A series whose newest steps lie across a long gap cannot be an example; when none can,
    the example is a flat history.
    """
    for series_id, frame in series.items():
        # float64, as users send values: the signature MLflow infers from it is what it accepts.
        recent = frame[list(config.channels)].tail(config.lookback).astype(np.float64)
        if len(recent) == config.lookback and not recent.isna().to_numpy().any():
            recent = recent.reset_index()
            stamps = recent[TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            return recent.assign(**{SERIES: series_id, TS: stamps})[[SERIES, TS, *config.channels]]
    return example_history(config)


def describe_data(series: dict[str, pd.DataFrame], config: ForecasterConfig) -> str:
    """A run name's data part, e.g. "8 series of 1h to 2016-07-11 13:00"."""
    last = max(frame.index.max() for frame in series.values())  # indexed by TS
    return f"{len(series)} series of {config.freq} to {last:%Y-%m-%d %H:%M}"

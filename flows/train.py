"""Train flow: series store → windows → challenger → MLflow run and version → champion if better.

Each stage is a task over :mod:`pipeline.training`, which decides what to train.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_log_level
from flows.retries import transient_only
from pipeline import registry, training
from pipeline.config import Settings
from pipeline.files import disk_full_is_resource_error
from pipeline.selection import budget_of, search_store
from pipeline.tracking import Tracking, connect, fail_abandoned_runs
from pipeline.training import Challenger, TrainingSettings

stage = task(cache_policy=NO_CACHE)
plan_training = stage(training.plan_training)
make_windows = stage(training.make_windows)
sample_windows = stage(training.sample_windows)
train_challenger = stage(training.train_challenger)
score_challenger = stage(training.score_challenger)
score_champion = stage(training.score_champion)
crown = stage(training.crown)
log_challenger = task(
    cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=transient_only
)(training.log_challenger)


@task(cache_policy=NO_CACHE)
def search_first(settings: TrainingSettings, tracking: Tracking) -> Path:
    """Run a search (``ROLLCAST_TUNE_TRIALS`` trials) and return its tuned config."""
    return search_store(settings, tracking, budget_of(settings)).tuned_config


@flow(name="rollcast-train")
def train_flow(
    max_steps: int | None = None,
    tuned_config: Path | None = None,
    settings: Settings | None = None,
) -> dict[str, object]:
    """Train a challenger on the whole store and promote it if it beats the champion.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    A tuned config (``tuned_config``, else ``ROLLCAST_TUNED_CONFIG``) overrides them, and with
    ``ROLLCAST_TUNE_TRIALS`` > 0 a search runs first and its best config is used;
    ``max_steps`` overrides them all. A full disk (a checkpoint, MLflow's artifacts) is a
    :class:`~pipeline.ResourceError` naming the file, and no task retries it.
    """
    require_log_level()
    started_ms = int(time.time() * 1000)
    training_settings = TrainingSettings.of(settings or Settings())
    with disk_full_is_resource_error(training_settings.mlflow.mlflow_tracking_uri):
        return train_with(training_settings, tuned_config, max_steps, started_ms)


def train_with(
    settings: TrainingSettings, tuned_config: Path | None, max_steps: int | None, started_ms: int
) -> dict[str, object]:
    """The train flow's stages, in order."""
    chosen = tuned_settings(settings, tuned_config).with_max_steps(max_steps)
    tracking = connect(chosen.mlflow, chosen.store)
    fail_abandoned_runs(tracking, "a rollcast-train flow")  # runs a killed one left open
    plan = plan_training(chosen, tracking)
    windows, val = make_windows(plan)
    train = sample_windows(plan, windows, chosen.train.max_windows)
    result = train_challenger(plan, train, val)
    card = score_challenger(result, val, plan)
    challenger = Challenger(result, card, val, len(train), windows_available=len(windows))
    logged = log_challenger(tracking, plan, challenger, started_ms)
    champion_mse = score_champion(tracking, val, plan)
    verdict = crown(chosen, tracking, logged, challenger.card, champion_mse)
    return {
        **summary(chosen, challenger, logged, verdict.promoted),
        "experiment_id": tracking.experiment(),
    }


def tuned_settings(settings: TrainingSettings, path: Path | None) -> TrainingSettings:
    """The settings with a tuned config applied: the one given, or a search's when asked for."""
    path = path or settings.train.tuned_config
    if settings.train.tune_trials and path is None:
        path = search_first(settings, connect(settings.mlflow, settings.store))
    return settings if path is None else settings.tuned(path)


def summary(
    settings: TrainingSettings,
    challenger: Challenger,
    logged: registry.LoggedVersion,
    promoted: bool,
) -> dict[str, object]:
    result = challenger.result
    return {
        "run_id": logged.run_id,
        "model_name": settings.mlflow.model_name,
        "version": logged.version,
        "promoted": promoted,
        "steps": result.steps,
        "best_step": result.best_step,
        "device": result.device,
        **challenger.card.as_metrics(),
    }

"""Tune flow: an Optuna search on the series store's validation windows, one MLflow run per trial.

The parent run holds the budget, the best candidate and ``tuned_config.json``; each trial is a
child run with its settings, its validation curve and whether it was pruned. The best config is
also written to ``DATA_DIR/tuned.json``, which ``rollcast train --tuned`` (or
``ROLLCAST_TUNED_CONFIG``) reads: the search is done once, and every later training reuses it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger

from flows.train import forecaster_config, load_series, sized_to_data, train_config_from
from pipeline import registry
from pipeline.config import (
    MlflowSettings,
    ModelSettings,
    RecordSettings,
    StoreSettings,
    TrainSettings,
)
from pipeline.evaluate import mse
from pipeline.forecast import predict
from pipeline.model import ForecasterConfig, build_forecaster
from pipeline.store import TrainingData
from pipeline.train import TrainConfig, fit
from pipeline.tuning import Budget, Candidate, Evaluate, SearchResult, search
from pipeline.windows import build_window_sets, channel_scale

TUNED_FILE = "tuned.json"


@flow(name="rollcast-tune")
def tune_flow(
    trials: int | None = None,
    timeout_s: float | None = None,
    trial_timeout_s: float | None = None,
    store: StoreSettings | None = None,
    mlflow_settings: MlflowSettings | None = None,
    model_settings: ModelSettings | None = None,
    train_settings: TrainSettings | None = None,
    records: RecordSettings | None = None,
) -> dict[str, Any]:
    """Search shapes and training settings on the stored series; write the best as JSON.

    ``trials`` and ``timeout_s`` default to ``ROLLCAST_TUNE_TRIALS`` (or 20) and
    ``ROLLCAST_TUNE_TIMEOUT_S``; the search stops at whichever comes first.
    ``trial_timeout_s`` (``ROLLCAST_TUNE_TRIAL_TIMEOUT_S``) stops one candidate as ``capped``.
    """
    store, mlflow_settings = store or StoreSettings(), mlflow_settings or MlflowSettings()
    model_settings, train_settings = (
        model_settings or ModelSettings(),
        train_settings or TrainSettings(),
    )
    budget = Budget(
        trials=trials or train_settings.tune_trials or Budget().trials,
        timeout_s=timeout_s or train_settings.tune_timeout_s,
        seed=train_settings.seed,
        trial_timeout_s=trial_timeout_s or train_settings.tune_trial_timeout_s,
    )
    registry.configure(mlflow_settings, store)
    policy = (records or RecordSettings()).policy()
    data = load_series(store, policy, model_settings.segment_len + model_settings.horizon)
    widest = sized_to_data(model_settings, data, train_settings.val_fraction)
    base = forecaster_config(widest, data, store)
    evaluate = store_objective(data, base, train_config_from(train_settings), train_settings)
    logger = get_run_logger()
    logger.info("searching %d trials on %d series (%s)", budget.trials, len(data.series), budget)
    with registry.search_run("tune", _search_params(budget, base, data)) as run_id:
        result = search(evaluate, base.lookback, budget, on_trial=registry.log_trial)
        tuned = tuned_config(result, base, run_id)
        registry.log_search_result(result, tuned)
    path = store.data_dir / TUNED_FILE
    path.write_text(json.dumps(tuned, indent=2, sort_keys=True))
    logger.info(
        "best of %d trials (%d pruned): val MSE %.4f with %s; written to %s",
        len(result.trials),
        result.pruned,
        result.best.val_mse,
        result.best.candidate.as_params(),
        path,
    )
    return {
        "run_id": run_id,
        "trials": len(result.trials),
        "pruned": result.pruned,
        "capped": result.capped,
        "best_val_mse": result.best.val_mse,
        "best": result.best.candidate.as_params(),
        "tuned_config": str(path),
    }


def store_objective(
    data: TrainingData, base: ForecasterConfig, training: TrainConfig, settings: TrainSettings
) -> Evaluate:
    """Train a candidate on the store's training windows; its MSE on the validation windows.

    The MSE is in units of each channel's spread over the stored series, the same for every
    candidate (a model's own scale depends on the windows it was fit on).
    """
    scale = channel_scale(data.series, base.channels)

    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        config = replace(base, **candidate.model)
        train, val = build_window_sets(
            data.series, config.channels, config.lookback, config.horizon, settings.val_fraction
        )
        model = build_forecaster(config, seed=training.seed)
        fit(model, train, val, replace(training, **candidate.train), on_eval=on_eval)
        return mse(predict(model, val.inputs), val.targets, scale), None

    return evaluate


def tuned_config(result: SearchResult, base: ForecasterConfig, run_id: str) -> dict[str, Any]:
    """The reusable form: settings overrides, what they were tuned on, and the search run."""
    return {
        "model_settings": result.best.candidate.model,
        "train_settings": result.best.candidate.train,
        "val_mse": result.best.val_mse,
        "tuned_on": {"channels": list(base.channels), "freq": base.freq, "horizon": base.horizon},
        "search_run_id": run_id,
    }


def _search_params(budget: Budget, base: ForecasterConfig, data: TrainingData) -> dict[str, Any]:
    return {
        "budget.trials": budget.trials,
        "budget.timeout_s": budget.timeout_s,
        "max_lookback": base.lookback,
        "horizon": base.horizon,
        "series": len(data.series),
        "channels": ",".join(base.channels),
        "freq": base.freq,
    }

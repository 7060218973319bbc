"""Model selection on the series store: an Optuna search over the training plan's data.

The search trains candidates on the store's training windows and scores them on its validation
windows, sized by the same rule as training (:meth:`ForecasterConfig.fitted`). The best config
is written as JSON (``DATA_DIR/tuned.json``), which ``rollcast train --tuned`` (or
``ROLLCAST_TUNED_CONFIG``) reads: the search is done once, and every later training reuses it.
The parent MLflow run holds the budget, the best candidate and ``tuned_config.json``; each trial
is a child run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from pipeline import runs
from pipeline.evaluate import mse
from pipeline.forecast import predict
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.tracking import Tracking
from pipeline.train import fit_config
from pipeline.training import (
    TrainingSettings,
    challenger_config,
    config_windows,
    load_data,
    plan_season,
    seasoned,
)
from pipeline.training_data import TrainingData
from pipeline.tuning import Budget, Candidate, Evaluate, SearchResult, search
from pipeline.windows import channel_scale

logger = logging.getLogger(__name__)

TUNED_FILE = "tuned.json"


def budget_of(
    settings: TrainingSettings,
    trials: int | None = None,
    timeout_s: float | None = None,
    trial_timeout_s: float | None = None,
) -> Budget:
    """The search budget: the values given, else ``ROLLCAST_TUNE_*`` settings, else Budget's."""
    train = settings.train
    return Budget(
        trials=trials or train.tune_trials or Budget().trials,
        timeout_s=timeout_s or train.tune_timeout_s,
        seed=train.seed,
        trial_timeout_s=trial_timeout_s or train.tune_trial_timeout_s,
    )


def search_store(settings: TrainingSettings, tracking: Tracking, budget: Budget) -> Selection:
    """Search shapes and training settings on the stored series; write the best as JSON."""
    data = load_data(settings)
    base = challenger_config(settings, data)
    base = seasoned(base, plan_season(settings, data, base))  # norm "season" reads the data's
    holdout = (settings.train.val_fraction, settings.train.val_folds)
    evaluate = store_objective(data, base, settings.train_config(), holdout)
    logger.info("searching %d trials on %d series (%s)", budget.trials, len(data.series), budget)
    with runs.search_run(tracking, "tune", search_params(budget, base, data)) as run_id:
        on_trial = partial(runs.log_trial, tracking, run_id)
        result = search(evaluate, base.lookback, budget, on_trial=on_trial)
        tuned = tuned_config(result, base, run_id)
        runs.log_search_result(tracking, run_id, result, tuned)
    path = settings.store.data_dir / TUNED_FILE
    path.write_text(json.dumps(tuned, indent=2, sort_keys=True))
    logger.info(
        "best of %d trials (%d pruned): val MSE %.4f with %s; written to %s",
        len(result.trials),
        result.pruned,
        result.best.val_mse,
        result.best.candidate.as_params(),
        path,
    )
    return Selection(run_id, result, path)


@dataclass(frozen=True)
class Selection:
    """A finished search: its MLflow run, result and the reusable config's file."""

    run_id: str
    result: SearchResult
    tuned_config: Path

    def summary(self) -> dict[str, Any]:
        result = self.result
        return {
            "run_id": self.run_id,
            "trials": len(result.trials),
            "pruned": result.pruned,
            "capped": result.capped,
            "best_val_mse": result.best.val_mse,
            "best": result.best.candidate.as_params(),
            "tuned_config": str(self.tuned_config),
        }


def store_objective(
    data: TrainingData,
    base: ForecasterConfig,
    training: TrainConfig,
    holdout: tuple[float, int],
) -> Evaluate:
    """Train a candidate on the store's training windows; its MSE on the validation windows
    (``holdout``: their share of each series and the blocks they lie in).

    The MSE is in units of each channel's spread over the stored series, the same for every
    candidate (a model's own scale depends on the windows it was fit on).
    """
    scale = channel_scale(data.series, base.target_names)

    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        config = replace(base, **candidate.model)
        train, val = config_windows(data, config, *holdout)
        trained = fit_config(config, train, val, replace(training, **candidate.train), 1, on_eval)
        model = trained.model
        return mse(predict(model, val.inputs, val.origins), val.targets, scale), None

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


def search_params(budget: Budget, base: ForecasterConfig, data: TrainingData) -> dict[str, Any]:
    return {
        "budget.trials": budget.trials,
        "budget.timeout_s": budget.timeout_s,
        "max_lookback": base.lookback,
        "horizon": base.horizon,
        "series": len(data.series),
        "channels": ",".join(base.channels),
        "freq": base.freq,
    }

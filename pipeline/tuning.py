"""Automatic selection: an Optuna search over a forecaster's shape and training, on validation.

The search knows nothing of where windows come from: the caller gives it an ``evaluate``
function that trains one :class:`Candidate` and returns its validation MSE (the train flow
builds windows from the series store, the generalization benchmark from an LTSF split). The
test split is never seen here.

* **Space:** lookback (up to what the data allows), hidden size, layers, segment length, loss
  and learning rate; everything else keeps :class:`~pipeline.model.ForecasterConfig`'s and
  :class:`~pipeline.train.TrainConfig`'s defaults.
* **First trial:** the defaults themselves, so a search never ends with a candidate that
  validates worse than training without one.
* **Pruning:** every validation during training is reported; Optuna's median rule stops a
  trial that is behind the median of earlier trials at the same step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from pipeline.recipe import ForecasterConfig, TrainConfig, cut_lookback
from pipeline.train import EvalStats, TrainingError

logger = logging.getLogger(__name__)

LOOKBACKS = (96, 192, 336, 720)
HIDDEN_SIZES = (64, 128, 256, 512)
SEGMENT_LENS = (12, 24, 48)  # each divides every lookback above
LAYERS = (1, 2)
LOSSES = ("mse", "l1")
LEARNING_RATES = (3e-4, 1e-2)  # log-uniform bounds
# Trials that always run to the end before the median rule may stop one, and the optimizer
# steps every trial gets before it may be stopped (4 validations at the default 25 steps: at
# the first one, slow starters were pruned in a third of the trials of an early search).
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 100


@dataclass(frozen=True)
class Candidate:
    """One point of the search: overrides of the model's and the training's defaults."""

    model: dict[str, Any]
    train: dict[str, Any]

    def as_params(self) -> dict[str, Any]:
        return {**self.model, **self.train}


@dataclass
class TrialRecord:
    """What one trial did, for the caller to log (an MLflow child run)."""

    number: int
    candidate: Candidate
    state: str  # "complete", "pruned", "capped" (past Budget.trial_timeout_s) or "failed"
    val_mse: float
    history: list[EvalStats]
    seconds: float
    result: Any = None  # whatever ``evaluate`` returned beside the score (a trained model)


@dataclass(frozen=True)
class Budget:
    """When the search stops: after ``trials``, or ``timeout_s``, whichever comes first.

    ``trial_timeout_s`` caps one trial: a candidate still training after it is validated and
    stopped there, and recorded as ``capped`` (a candidate too costly for this machine), so
    one huge candidate cannot eat the search. The first trial, the defaults, is never capped.
    """

    trials: int = 20
    timeout_s: float | None = None
    seed: int = 0
    trial_timeout_s: float | None = None


@dataclass
class SearchResult:
    best: TrialRecord
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def pruned(self) -> int:
        return sum(trial.state == "pruned" for trial in self.trials)

    @property
    def capped(self) -> int:
        return sum(trial.state == "capped" for trial in self.trials)


# evaluate(candidate, on_eval) -> (validation MSE, anything to keep for the best trial)
Evaluate = Callable[[Candidate, Callable[[EvalStats], None]], tuple[float, Any]]


def default_params(max_lookback: int) -> dict[str, Any]:
    """Rollcast's defaults as a point of the space: the first trial of every search."""
    shape, training = ForecasterConfig(channels=()), TrainConfig()
    return {
        "segment_len": shape.segment_len,
        "lookback": min(shape.lookback, max_lookback),
        "hidden_size": shape.hidden_size,
        "num_layers": shape.num_layers,
        "loss": shape.loss,
        "learning_rate": training.learning_rate,
    }


def lookback_choices(max_lookback: int) -> list[int]:
    """
    >>> lookback_choices(720), lookback_choices(607), lookback_choices(50)
    ([96, 192, 336, 720], [96, 192, 336, 607], [50])
    """
    shorter = [n for n in LOOKBACKS if n < max_lookback]
    return [*shorter, min(max_lookback, max(LOOKBACKS))]


def suggest(trial: optuna.Trial, max_lookback: int) -> Candidate:
    """Draw a candidate; lookbacks longer than ``max_lookback`` are not offered."""
    segment = trial.suggest_categorical("segment_len", SEGMENT_LENS)
    lookback = trial.suggest_categorical("lookback", lookback_choices(max_lookback))
    lookback, segment = cut_lookback(lookback, segment)  # the data's room is max_lookback
    model = {
        "lookback": lookback,
        "hidden_size": trial.suggest_categorical("hidden_size", HIDDEN_SIZES),
        "num_layers": trial.suggest_categorical("num_layers", LAYERS),
        "segment_len": segment,
        "loss": trial.suggest_categorical("loss", LOSSES),
    }
    train = {"learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATES, log=True)}
    return Candidate(model, train)


def search(
    evaluate: Evaluate,
    max_lookback: int,
    budget: Budget,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> SearchResult:
    """Run the study; return the best trial (lowest validation MSE) and all trials.

    ``on_trial`` sees each trial as it ends, pruned and failed ones included.

    Raises :class:`TrainingError` when no trial completed.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=budget.seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS
        ),
    )
    study.enqueue_trial(default_params(max_lookback))
    records: list[TrialRecord] = []

    def objective(trial: optuna.Trial) -> float:
        cap = budget.trial_timeout_s if trial.number > 0 else None
        record = _run_trial(trial, evaluate, max_lookback, cap)
        records.append(record)
        if on_trial is not None:
            on_trial(record)
        logger.info(
            "trial %d/%d %s: val MSE %.4f  %s (%.0fs)",
            trial.number + 1,
            budget.trials,
            record.state,
            record.val_mse,
            record.candidate.as_params(),
            record.seconds,
        )
        if record.state in ("pruned", "capped"):
            raise optuna.TrialPruned()
        if record.state == "failed":
            raise TrainingError(f"trial {trial.number} failed")
        return record.val_mse

    study.optimize(
        objective, n_trials=budget.trials, timeout=budget.timeout_s, catch=(TrainingError,)
    )
    complete = [r for r in records if r.state == "complete" and math.isfinite(r.val_mse)]
    if not complete:
        raise TrainingError(f"none of {len(records)} trials completed")
    return SearchResult(best=min(complete, key=lambda r: r.val_mse), trials=records)


class _OverCapError(Exception):
    """A trial ran past ``Budget.trial_timeout_s``."""


def _run_trial(
    trial: optuna.Trial, evaluate: Evaluate, max_lookback: int, cap_s: float | None
) -> TrialRecord:
    candidate = suggest(trial, max_lookback)
    history: list[EvalStats] = []
    started = time.perf_counter()

    # The trainer validates and stops at the cap, so a trial ends within one optimizer step
    # of it; the recorded candidate does not carry the limit.
    run_as = candidate
    if cap_s is not None:
        run_as = Candidate(candidate.model, {**candidate.train, "time_limit_s": cap_s})

    def on_eval(stats: EvalStats) -> None:
        history.append(stats)
        trial.report(stats.val_mse, stats.step)
        if trial.should_prune():
            raise optuna.TrialPruned()
        if cap_s is not None and time.perf_counter() - started > cap_s:
            raise _OverCapError()

    record = TrialRecord(trial.number, candidate, "complete", math.inf, history, 0.0)
    try:
        record.val_mse, record.result = evaluate(run_as, on_eval)
    except (optuna.TrialPruned, _OverCapError) as stopped:
        record.state = "pruned" if isinstance(stopped, optuna.TrialPruned) else "capped"
        record.val_mse = history[-1].val_mse if history else math.inf
    except TrainingError as err:
        logger.warning("trial %d failed: %s", trial.number, err)
        record.state = "failed"
    record.seconds = time.perf_counter() - started
    return record

"""The search on its own: defaults first, the budget, pruning, failures. No training here:
``evaluate`` is a function of the candidate, so what the search does with it is what is tested."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import EvalStats, TrainingError
from pipeline.tuning import PRUNER_WARMUP_STEPS, Budget, Candidate, search


def curve(values: list[float], every: int) -> list[EvalStats]:
    return [EvalStats(every * (i + 1), i, v, v, v, 0.0, 1e-3) for i, v in enumerate(values)]


def scored_by(score: Callable[[Candidate], float], every: int = PRUNER_WARMUP_STEPS) -> Any:
    """An evaluate function whose training curve falls to ``score(candidate)``, reported every
    ``every`` steps (by default from the first step the pruner may act on)."""

    def evaluate(candidate: Candidate, on_eval: Callable[[EvalStats], None]) -> tuple[float, str]:
        final = score(candidate)
        for stats in curve([final * 3, final * 2, final], every):
            on_eval(stats)
        return final, f"model of {candidate.as_params()}"

    return evaluate


def test_the_first_trial_is_rollcasts_defaults() -> None:
    result = search(scored_by(lambda c: 1.0), max_lookback=720, budget=Budget(trials=1))

    shape, training = ForecasterConfig(channels=()), TrainConfig()
    first = result.trials[0].candidate
    assert first.model == {
        "lookback": shape.lookback,
        "hidden_size": shape.hidden_size,
        "num_layers": shape.num_layers,
        "segment_len": shape.segment_len,
        "loss": shape.loss,
    }
    assert first.train == {"learning_rate": training.learning_rate}


def test_the_best_trial_is_the_lowest_validation_mse_and_keeps_its_result() -> None:
    result = search(
        scored_by(lambda c: c.model["hidden_size"] / 100), max_lookback=720, budget=Budget(trials=6)
    )

    complete = [t for t in result.trials if t.state == "complete"]
    assert len(result.trials) == 6
    assert result.best.val_mse == min(t.val_mse for t in complete)
    assert result.best.result == f"model of {result.best.candidate.as_params()}"


def test_lookbacks_stay_within_what_the_data_allows_and_fit_the_segments() -> None:
    result = search(scored_by(lambda c: 1.0), max_lookback=200, budget=Budget(trials=8))

    for trial in result.trials:
        lookback, segment = trial.candidate.model["lookback"], trial.candidate.model["segment_len"]
        assert lookback <= 200
        assert lookback % segment == 0


def test_a_trial_behind_the_median_is_pruned_and_logged() -> None:
    seen: list[str] = []
    scores = iter([1.0, 1.0, 100.0, 100.0])

    result = search(
        scored_by(lambda c: next(scores)),
        max_lookback=720,
        budget=Budget(trials=4),
        on_trial=lambda record: seen.append(record.state),
    )

    assert seen == ["complete", "complete", "pruned", "pruned"]
    assert result.pruned == 2
    assert len(result.trials[2].history) == 1  # stopped at its first report
    assert result.best.val_mse == 1.0


def test_no_trial_is_pruned_before_the_warmup() -> None:
    scores = iter([1.0, 1.0, 100.0])
    before_warmup = PRUNER_WARMUP_STEPS // 4  # reports at 1/4, 2/4 and 3/4 of the warmup

    result = search(
        scored_by(lambda c: next(scores), every=before_warmup),
        max_lookback=720,
        budget=Budget(trials=3),
    )

    assert [t.state for t in result.trials] == ["complete"] * 3


def test_the_time_budget_stops_the_search() -> None:
    result = search(
        scored_by(lambda c: 1.0), max_lookback=720, budget=Budget(trials=1000, timeout_s=0.5)
    )

    assert 1 <= len(result.trials) < 1000


def test_failed_trials_are_recorded_and_the_search_goes_on() -> None:
    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        if candidate.model["hidden_size"] == ForecasterConfig(channels=()).hidden_size:
            raise TrainingError("loss became nan: lower the learning rate")
        return 2.0, None

    result = search(evaluate, max_lookback=720, budget=Budget(trials=6))

    assert result.trials[0].state == "failed"
    assert result.best.val_mse == 2.0


def test_a_search_where_nothing_completes_says_so() -> None:
    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        raise TrainingError("need training and validation windows")

    with pytest.raises(TrainingError, match="none of 2 trials completed"):
        search(evaluate, max_lookback=720, budget=Budget(trials=2))


def test_a_trial_past_its_time_cap_is_stopped_but_the_defaults_run_to_the_end() -> None:
    def slow(candidate: Candidate, on_eval: Callable[[EvalStats], None]) -> tuple[float, None]:
        for stats in curve([3.0, 2.0, 1.0], PRUNER_WARMUP_STEPS):
            time.sleep(0.05)
            on_eval(stats)
        return 1.0, None

    result = search(slow, max_lookback=720, budget=Budget(trials=3, trial_timeout_s=0.01))

    assert [trial.state for trial in result.trials] == ["complete", "capped", "capped"]
    assert result.best is result.trials[0] and result.capped == 2
    assert len(result.trials[1].history) == 1  # stopped at its first validation past the cap


def test_a_capped_trial_trains_under_the_cap_but_the_chosen_config_does_not_keep_it() -> None:
    limits: list[float | None] = []

    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        limits.append(candidate.train.get("time_limit_s"))
        return 1.0 + len(limits), None

    result = search(evaluate, max_lookback=720, budget=Budget(trials=3, trial_timeout_s=60))

    assert limits == [None, 60, 60]  # the trainer stops at the cap, not only at validations
    assert all("time_limit_s" not in trial.candidate.train for trial in result.trials)

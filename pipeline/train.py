"""The training engine: device, precision, clipping, a step budget, early stopping. No MLflow here.

Training is measured in optimizer steps, not epochs, so a short series and a long one both get
a trained model: a 4,000-step series passes over its windows dozens of times within the budget,
ETTh1's 8,500 windows a few times. Validation runs every ``eval_every`` steps; the weights
of the best validation are kept, and training stops after ``patience`` validations without a
better one.

The series values are moved to the device once and every mini-batch is gathered from them by
index (``starts[:, None] + arange(L + H)``): no per-sample DataLoader, and no copy of each
window, which matters at lookback 720.
Progress is reported through ``on_eval`` (the train flow logs it to MLflow, the tuner prunes
with it) and the logger.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch

from pipeline import RollcastError
from pipeline.covariates import rows_calendar
from pipeline.model import Forecaster, SeedEnsemble, build_forecaster
from pipeline.progress import pace
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.windows import WindowSet

logger = logging.getLogger(__name__)


class TrainingError(RollcastError):
    """Training cannot start or cannot go on (no data, a diverged loss)."""


@dataclass(frozen=True)
class EvalStats:
    """One validation: after ``step`` optimizer steps (``epoch`` passes over the windows)."""

    step: int
    epoch: float
    train_loss: float  # the mean over the steps since the last validation
    val_loss: float  # in the model's training loss (its head's), which early stopping watches
    val_mse: float  # the same windows' MSE, comparable between runs of either loss
    seconds: float  # since the last validation
    learning_rate: float  # the rate at this validation


@dataclass
class TrainResult:
    model: Forecaster
    history: list[EvalStats] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float = float("inf")
    steps: int = 0
    device: str = "cpu"
    samples_per_s: float = 0.0
    ensemble: EnsembleChoice | None = None  # what validation chose of a seed ensemble
    # norm "auto": each norm tried and its validation MSE (the model has the lower one's)
    norms: dict[str, float] | None = None


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run may take and when it validates, for a number of windows."""

    total: int
    per_epoch: int
    eval_every: int

    @classmethod
    def of(cls, n_windows: int, config: TrainConfig) -> StepPlan:
        """
        >>> StepPlan.of(1000, TrainConfig(batch_size=100, max_steps=250, eval_every=None))
        StepPlan(total=250, per_epoch=10, eval_every=10)
        >>> StepPlan.of(1000, TrainConfig(batch_size=100, max_steps=250, max_epochs=3))
        StepPlan(total=30, per_epoch=10, eval_every=25)
        """
        per_epoch = math.ceil(n_windows / config.batch_size)
        total = config.max_steps
        if config.max_epochs is not None:
            total = min(total, max(1, round(config.max_epochs * per_epoch)))
        every = config.eval_every or per_epoch
        return cls(total=max(total, 1), per_epoch=per_epoch, eval_every=max(every, 1))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Training windows sampled to set the model's per-channel scale.
SCALE_SAMPLE = 4096
# Seeds an ``ensemble="auto"`` run trains: enough for the mean to differ from one seed, few
# enough that the validation check costs three trainings, not more.
AUTO_MEMBERS = 3


def fit(
    model: Forecaster,
    train: WindowSet,
    val: WindowSet,
    config: TrainConfig,
    on_eval: Callable[[EvalStats], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train`` with early stopping on ``val``; return the best model.

    ``on_eval`` sees every validation and may raise to end the run (a tuner's pruning).
    """
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(
            f"need training and validation windows, got {len(train)} and {len(val)}: "
            "ingest more history or shorten lookback/horizon"
        )
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    train_on = OnDevice(train, device, model.config)
    val_on = OnDevice(val, device, model.config)
    model.to(device).fit_scale(train_on.batch(train_on.sample(SCALE_SAMPLE))[0])
    return _train(model, train_on, val_on, config, on_eval)


@dataclass(frozen=True)
class EnsembleChoice:
    """What a seed ensemble's validation decided: the mean of every seed, or the first alone."""

    members: int  # the seeds whose mean forecasts (1: the first seed's model alone)
    requested: int | str  # a number of seeds, or "auto"
    val_mse_single: float  # the first seed's model, on the validation windows
    val_mse_ensemble: float  # the mean of every seed's
    seeds: tuple[int, ...]

    def figures(self) -> dict[str, object]:
        """What a run records of it."""
        return {
            "ensemble": self.members,
            "ensemble_requested": self.requested,
            "val_mse_single": self.val_mse_single,
            "val_mse_ensemble": self.val_mse_ensemble,
            "ensemble_seeds": list(self.seeds),
        }


def requested_members(ensemble: int | str) -> int:
    """Seeds to train: ``ensemble`` itself, :data:`AUTO_MEMBERS` for ``"auto"``.

    >>> requested_members(1), requested_members(5), requested_members("auto")
    (1, 5, 3)
    """
    return AUTO_MEMBERS if ensemble == "auto" else int(ensemble)


def fit_ensemble(
    model: Forecaster,
    train: WindowSet,
    val: WindowSet,
    config: TrainConfig,
    ensemble: int | str = 1,
    on_eval: Callable[[EvalStats], None] | None = None,
) -> TrainResult:
    """:func:`fit` ``model`` (seed ``config.seed``) and, for an ensemble, fresh models of its
    config from the next seeds; the result's model is the mean of them all, or for ``"auto"``
    the first alone unless the mean validates better (``ensemble`` says which). The history
    is the first seed's; ``on_eval`` sees it alone."""
    first = fit(model, train, val, config, on_eval)
    extra = range(config.seed + 1, config.seed + requested_members(ensemble))
    if not extra:
        return first
    others = [
        fit(build_forecaster(model.config, seed), train, val, replace(config, seed=seed))
        for seed in extra
    ]
    chosen, choice = choose_ensemble(
        [first.model] + [o.model for o in others], val, config, ensemble
    )
    return replace(first, model=chosen, ensemble=choice)


def fit_config(
    config: ForecasterConfig,
    train: WindowSet,
    val: WindowSet,
    training: TrainConfig,
    ensemble: int | str = 1,
    on_eval: Callable[[EvalStats], None] | None = None,
) -> TrainResult:
    """:func:`fit_ensemble` a fresh model of ``config`` (seed ``training.seed``); for norm
    ``"auto"``, one of each of its :attr:`~ForecasterConfig.norms`, keeping the lower
    validation MSE (the result's ``norms`` says what each scored). ``on_eval`` sees the first
    norm's run alone."""
    norms = config.norms
    results = {
        norm: fit_ensemble(
            build_forecaster(replace(config, norm=norm), training.seed),
            train,
            val,
            training,
            ensemble,
            on_eval if i == 0 else None,
        )
        for i, norm in enumerate(norms)
    }
    if len(results) == 1:
        return results[config.norm]
    scores = {norm: chosen_val_mse(result) for norm, result in results.items()}
    best = min(scores, key=lambda norm: scores[norm])
    logger.info("norm auto: %s (validation MSE %s)", best, scores)
    return replace(results[best], norms=scores)


def chosen_val_mse(result: TrainResult) -> float:
    """The validation MSE of the model a result keeps: its seed ensemble's choice, else the
    first seed's best validation."""
    if result.ensemble is not None:
        choice = result.ensemble
        return choice.val_mse_ensemble if choice.members > 1 else choice.val_mse_single
    return best_val_mse(result)


def best_val_mse(result: TrainResult) -> float:
    """The validation MSE of the first seed's kept weights (the best validation's)."""
    kept = [stats.val_mse for stats in result.history if stats.step == result.best_step]
    return kept[0] if kept else float("nan")


def choose_ensemble(
    models: list[Forecaster], val: WindowSet, config: TrainConfig, ensemble: int | str
) -> tuple[Forecaster, EnsembleChoice]:
    """The mean of ``models`` (seeds ``config.seed`` on), or for ``"auto"`` the first alone
    unless the mean has the lower validation MSE."""
    mean = SeedEnsemble.of(models)
    windows = OnDevice(val, models[0].scale.device, models[0].config)
    single_mse = evaluate_loss(models[0], windows, config.batch_size)[1]
    mean_mse = evaluate_loss(mean, windows, config.batch_size)[1]
    keep = ensemble != "auto" or mean_mse < single_mse
    seeds = tuple(range(config.seed, config.seed + len(models)))
    choice = EnsembleChoice(len(models) if keep else 1, ensemble, single_mse, mean_mse, seeds)
    logger.info(
        "seed ensemble of %d: validation MSE %.5f against %.5f for seed %d alone: %s",
        len(models),
        mean_mse,
        single_mse,
        config.seed,
        "the mean forecasts" if keep else "the first seed forecasts alone",
    )
    return (mean if keep else models[0]), choice


def _train(
    model: Forecaster,
    train_on: OnDevice,
    val_on: OnDevice,
    config: TrainConfig,
    on_eval: Callable[[EvalStats], None] | None,
) -> TrainResult:
    """The step loop: validate the starting weights and then every ``eval_every`` steps, keep
    the best, stop when stale."""
    device = train_on.starts.device
    plan = StepPlan.of(len(train_on), config)
    result, best = TrainResult(model=model, device=str(device)), BestWeights(model)
    started, tic, losses = time.perf_counter(), time.perf_counter(), []
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    start = _validate(model, val_on, config, (0, 0.0, config.learning_rate), [], tic)
    result.history.append(start)
    best.stale_after(start)  # a start training never beats is kept: a warm start's, seasonal-naive
    logger.info("validation of the starting weights: %.4f", start.val_loss)
    if on_eval is not None:
        on_eval(start)
    for step, loss in _optimizer_steps(model, optimizer, train_on, config, plan):
        losses.append(loss)
        out_of_time = _past(started, config.time_limit_s)
        if step % plan.eval_every and step != plan.total and not out_of_time:
            continue
        rate = optimizer.param_groups[0]["lr"]
        stats = _validate(model, val_on, config, (step, step / plan.per_epoch, rate), losses, tic)
        result.history.append(stats)
        result.steps, losses, tic = step, [], time.perf_counter()
        _report(stats, plan.total, _pace(step, plan.total, started, config.time_limit_s), on_eval)
        stale = best.stale_after(stats)
        if stale >= config.patience:
            logger.info("early stop at step %d: best validation at step %d", step, best.step)
            break
        if out_of_time:
            logger.info("time limit (%.0fs) reached at step %d", config.time_limit_s, step)
            break
    best.restore()
    result.best_step, result.best_val_loss = best.step, best.val_loss
    seen = result.steps * min(config.batch_size, len(train_on))
    result.samples_per_s = seen / (time.perf_counter() - started)
    return result


def _pace(step: int, total: int, started: float, limit_s: float | None) -> str:
    """Steps per second so far, and the time left: to ``total`` steps or the time limit,
    whichever comes first (early stopping may end the run sooner)."""
    elapsed = time.perf_counter() - started
    left = None if limit_s is None else limit_s - elapsed
    return pace(step, elapsed, total, left, unit="steps")


def _past(started: float, limit_s: float | None) -> bool:
    return limit_s is not None and time.perf_counter() - started > limit_s


def _validate(
    model: Forecaster,
    val: OnDevice,
    config: TrainConfig,
    at: tuple[int, float, float],
    train_losses: list[float],
    since: float,
) -> EvalStats:
    """The validation after ``at`` = (steps, passes, learning rate) of training."""
    val_loss, val_mse = evaluate_loss(model, val, config.batch_size)
    step, epoch, rate = at
    seconds = time.perf_counter() - since
    train_loss = float(np.mean(train_losses)) if train_losses else math.nan  # nan: no step yet
    return EvalStats(step, epoch, train_loss, val_loss, val_mse, seconds, rate)


def _optimizer_steps(
    model: Forecaster,
    optimizer: torch.optim.Optimizer,
    train: OnDevice,
    config: TrainConfig,
    plan: StepPlan,
) -> Iterator[tuple[int, float]]:
    """Take up to ``plan.total`` optimizer steps over shuffled passes; yield (step, loss)."""
    schedule = _schedule(optimizer, config, plan)
    step = 0
    while True:
        order = train.sample(len(train))
        for start in range(0, len(train), config.batch_size):
            loss = _step(
                model, optimizer, train.batch(order[start : start + config.batch_size]), config
            )
            schedule.step()
            step += 1
            yield step, loss
            if step >= plan.total:
                return


def _schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, plan: StepPlan
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "halving":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=plan.per_epoch, gamma=0.5)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.total)


class BestWeights:
    """Keeps a copy of the weights of the validation with the lowest loss."""

    def __init__(self, model: Forecaster) -> None:
        self.model, self.step, self.val_loss = model, 0, float("inf")
        self._state = copy.deepcopy(model.state_dict())
        self._since = 0

    def stale_after(self, stats: EvalStats) -> int:
        """Record a validation; return how many have passed without improvement."""
        if stats.val_loss < self.val_loss:
            self.step, self.val_loss, self._since = stats.step, stats.val_loss, 0
            self._state = copy.deepcopy(self.model.state_dict())
        else:
            self._since += 1
        return self._since

    def restore(self) -> None:
        self.model.load_state_dict(self._state)


class Batch(NamedTuple):
    inputs: torch.Tensor  # (B, L, C)
    targets: torch.Tensor  # (B, H, C)
    calendar: torch.Tensor | None  # (B, L + H, F) when the model reads a calendar


class OnDevice:
    """A :class:`WindowSet` whose values (and the calendar features ``model`` reads) live on
    the device; batches are gathered by index."""

    def __init__(
        self, windows: WindowSet, device: torch.device, model: ForecasterConfig | None = None
    ) -> None:
        self.values = torch.from_numpy(np.ascontiguousarray(windows.values)).to(device)
        self.starts = torch.from_numpy(windows.starts).to(device)
        self.offsets = torch.arange(windows.lookback + windows.horizon, device=device)
        self.lookback = windows.lookback
        self.target_columns = (
            None if windows.target_columns is None else list(windows.target_columns)
        )
        calendar = None if model is None else rows_calendar(model, windows.times)
        self.calendar = None if calendar is None else torch.from_numpy(calendar).to(device)

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, count: int) -> torch.Tensor:
        return torch.randperm(len(self), device=self.starts.device)[:count]

    def batch(self, index: torch.Tensor) -> Batch:
        """Inputs, targets and calendar of the windows at ``index``."""
        rows = self.starts[index, None] + self.offsets  # (B, L+H)
        windows = self.values[rows]  # (B, L+H, C)
        calendar = None if self.calendar is None else self.calendar[rows]
        targets = windows[:, self.lookback :]
        if self.target_columns is not None:
            targets = targets[..., self.target_columns]
        return Batch(windows[:, : self.lookback], targets, calendar)


def _step(
    model: Forecaster,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: TrainConfig,
) -> float:
    model.train()
    x, y, calendar = batch
    with _autocast(x.device):
        loss = model.loss(model(x, calendar), y)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()}: lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate_loss(model: Forecaster, windows: OnDevice, batch_size: int) -> tuple[float, float]:
    """The model's mean training loss and the MSE of its point forecasts, both in units of
    each channel's training scale: (loss, mse)."""
    model.eval()
    loss_total, mse_total = 0.0, 0.0
    for start in range(0, len(windows), batch_size):
        index = torch.arange(
            start, min(start + batch_size, len(windows)), device=windows.starts.device
        )
        x, y, calendar = windows.batch(index)
        with _autocast(x.device):
            output = model(x, calendar)
        loss_total += model.loss(output, y).item() * len(x)
        mse_total += scaled_mse(model, model.point(output), y).item() * len(x)
    return loss_total / len(windows), mse_total / len(windows)


def scaled_mse(model: Forecaster, points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of point forecasts after dividing by the channel scale: every channel weighs the same."""
    error = (points.float() - target) / model.scale
    return torch.mean(error**2)


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 needs no loss scaling and halves LSTM time on recent GPUs; CPU stays in fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _report(
    stats: EvalStats, total: int, pace_now: str, on_eval: Callable[[EvalStats], None] | None
) -> None:
    logger.info(
        "step %d/%d (epoch %.1f)  train %.4f  val %.4f  (%.1fs)  %s",
        stats.step,
        total,
        stats.epoch,
        stats.train_loss,
        stats.val_loss,
        stats.seconds,
        pace_now,
    )
    if on_eval is not None:
        on_eval(stats)

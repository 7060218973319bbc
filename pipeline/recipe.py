"""What a forecaster is and how it trains: :class:`ForecasterConfig` and :class:`TrainConfig`.

Plain dataclasses, without torch: the settings (``pipeline.config``) read their defaults, and a
command can check its configuration, without loading the network code (``pipeline.model``,
``pipeline.train``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline.contract import DEFAULT_FREQ, DEFAULT_MAX_GAP, DataContract
from pipeline.intervals import DEFAULT_LEVELS

# Seeds a seed ensemble may average: past this the mean no longer moves, the cost still does.
MAX_MEMBERS = 16
# What norm "auto" tries, keeping the one with the lower validation MSE: the window's last value,
# and the residual over seasonal-naive (which wins on strongly seasonal series, loses on ETT).
AUTO_NORMS = ("last", "season")
# The norm training runs and backtests use when none is set ("auto": both of AUTO_NORMS, twice
# the training). ForecasterConfig's own default stays "last", a norm a network is built with.
TRAINING_NORM = "auto"


@dataclass(frozen=True)
class ForecasterConfig:
    """Everything needed to rebuild a network, and what it expects of its input.

    The defaults are the shape Rollcast stands behind, and the one place it is defined: the
    train flow's settings, the backtest, the tuner's starting point and the benchmarks read
    them. They follow SegRNN's published scripts (lss-1138/SegRNN: lookback 720, 48-step
    segments, dropout 0.5, one recurrent layer), with hidden 256 chosen on ETTh1's validation
    split (BENCHMARKS.md). :meth:`fitted` shortens the lookback for short series.

    ``channels``, ``freq``, ``max_gap`` and ``open_hours`` are the model's :class:`DataContract`.
    """

    channels: tuple[str, ...]  # every channel read, targets and inputs-only covariates
    lookback: int = 720
    horizon: int = 24
    freq: str = DEFAULT_FREQ
    # "lstm": StackedLSTMForecaster; "dlinear": DLinear; "repeat_last"; "seasonal_naive"
    architecture: str = "lstm"
    cell: str = "lstm"  # or "gru", or "peephole" (pipeline.cells.PeepholeLSTM)
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.5
    bidirectional: bool = False
    # "last": subtract the window's last value and add it back; "mean": its mean; "none";
    # "season": subtract the last value, add back the seasonal-naive forecast of ``season``
    # (the network forecasts the residual over seasonal-naive; StackedLSTMForecaster only);
    # "auto", before training only: "last" and "season" each trained, the better on
    # validation kept (pipeline.train.fit_config).
    norm: str = "last"
    channel_independent: bool = True
    segment_len: int = 48  # steps per input/output segment; 1 = step by step
    decoder: str = "pmf"  # "pmf": parallel multi-step decoding; "linear": one head on the state
    # The seasonal-naive period in steps: the seasonal_naive architecture's, and the baseline of
    # norm "season" (training and backtests set it to the period they choose: with_season).
    season: int = 24
    # The gap policy the training windows were built with; inference fills gaps the same way.
    max_gap: int = DEFAULT_MAX_GAP
    # The weekly open hours the series live on (pipeline.open_steps.OpenHours.to_text, e.g.
    # "mon-fri 08:00-22:00", UTC): windows hold open steps only. None: every step exists.
    open_hours: str | None = None
    # The output head and its training loss: "mse" or "l1" (point forecasts; l1 is less
    # swayed by spikes), or "pinball" (quantiles at the interval levels' tails; lstm only).
    # See pipeline.model.HEADS.
    loss: str = "mse"
    # Future-known calendar features (pipeline.covariates: time of day, day of week, day of
    # year) of the lookback and of the horizon, fed to the encoder and the decoder.
    calendar: bool = False
    holidays: str | None = None  # a region, e.g. "AU-VIC": a public-holiday feature as well
    timezone: str = "UTC"  # the IANA time zone the calendar is read in
    # The channels forecast (LTSF's MS: every channel in, the target out); the others are read
    # as past covariates only. Empty: every channel is forecast.
    targets: tuple[str, ...] = ()
    # Seeds whose forecasts are averaged (pipeline.model.SeedEnsemble); 1: one network.
    members: int = 1
    # The coverage levels of the prediction intervals around each forecast (pipeline.intervals;
    # the model holds their calibrated radii).
    interval_levels: tuple[float, ...] = DEFAULT_LEVELS

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The channels forecast, in output order."""
        return self.targets or self.channels

    @property
    def target_index(self) -> tuple[int, ...]:
        """Where each target is among ``channels``.

        >>> ForecasterConfig(channels=("temp", "load"), targets=("load",)).target_index
        (1,)
        """
        return tuple(self.channels.index(name) for name in self.target_names)

    @property
    def forecast_columns(self) -> tuple[int, ...] | None:
        """The columns of the inputs a window set forecasts (:meth:`WindowSet.forecasting`);
        None when every channel is a target."""
        return self.target_index if self.targets else None

    @property
    def covariate_index(self) -> tuple[int, ...]:
        """Where each inputs-only channel is among ``channels``."""
        return tuple(i for i, name in enumerate(self.channels) if name not in self.target_names)

    @property
    def contract(self) -> DataContract:
        return DataContract(self.channels, self.freq, self.max_gap, self.open_hours)

    @property
    def segmented(self) -> bool:
        """Whether the lookback is read in segments (and must be a multiple of one)."""
        return self.architecture == "lstm"

    @property
    def reads_season(self) -> bool:
        """Whether the network forecasts from ``season``: the seasonal naive, or an LSTM
        forecasting the residual over it (``norm="season"``). Elsewhere the season is the
        promotion gate's baseline only."""
        return self.architecture == "seasonal_naive" or (
            self.architecture == "lstm" and self.norm in ("season", "auto")
        )

    @property
    def norms(self) -> tuple[str, ...]:
        """The norms training tries for this config: :data:`AUTO_NORMS` for an LSTM of norm
        ``"auto"``, else its own (the other architectures read none)."""
        return AUTO_NORMS if self.norm == "auto" and self.architecture == "lstm" else (self.norm,)

    def admits(self, trained: ForecasterConfig) -> bool:
        """Whether a model ``trained`` with a config can stand for this one: the same config,
        or, for norm ``"auto"``, the same with one of the norms it tries (what that model's
        validation chose). A warm start keeps the champion's choice.

        >>> auto = ForecasterConfig(channels=("x",), norm="auto")
        >>> auto.admits(replace(auto, norm="season")), auto.admits(replace(auto, norm="mean"))
        (True, False)
        """
        return trained.norm in self.norms and replace(self, norm=trained.norm) == trained

    def with_season(self, season: int) -> ForecasterConfig:
        """This config with ``season`` when its network reads one (:attr:`reads_season`),
        else unchanged, so a shape that ignores the season keeps one config for any period.

        >>> base = ForecasterConfig(channels=("x",), lookback=336)
        >>> base.with_season(168).season, replace(base, norm="season").with_season(168).season
        (24, 168)
        """
        return replace(self, season=season) if self.reads_season else self

    def fitted(self, train_steps: int) -> ForecasterConfig:
        """This config with the lookback (and segment) cut so that a window (lookback plus
        horizon) takes at most half of ``train_steps`` training steps: a short series still
        gives training windows. The one sizing rule of training, tuning and backtests.

        >>> ForecasterConfig(channels=(), horizon=96).fitted(8640).lookback
        720
        >>> short = ForecasterConfig(channels=(), horizon=192).fitted(1598)
        >>> short.lookback, short.segment_len
        (576, 48)
        >>> tiny = ForecasterConfig(channels=(), horizon=24).fitted(100)
        >>> tiny.lookback, tiny.segment_len
        (26, 26)
        """
        room = max(min(self.lookback, train_steps // 2 - self.horizon), 1)
        if not self.segmented:
            return replace(self, lookback=room)
        lookback, segment = cut_lookback(room, self.segment_len)
        return replace(self, lookback=lookback, segment_len=segment)

    def serves_like(self, other: ForecasterConfig) -> bool:
        """Whether a model of ``other`` can replace this one: same inputs, outputs, step, gaps."""
        return not self.serving_differences(other)

    def serving_differences(self, other: ForecasterConfig) -> list[str]:
        """What stops ``other`` from replacing this one, e.g. ``["lookback 96 -> 192"]``."""
        shape = [
            f"{name} {getattr(self, name)!r} -> {getattr(other, name)!r}"
            for name in ("lookback", "horizon", "targets")
            if getattr(self, name) != getattr(other, name)
        ]
        return shape + self.contract.differences(other.contract)

    def to_dict(self) -> dict[str, Any]:
        lists = {
            name: list(getattr(self, name)) for name in ("channels", "targets", "interval_levels")
        }
        return {**asdict(self), **lists}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecasterConfig:
        names = ("channels", "targets", "interval_levels")
        tuples: dict[str, tuple[Any, ...]] = {n: tuple(data[n]) for n in names if n in data}
        return cls(**{**data, **tuples})


def cut_lookback(lookback: int, segment_len: int) -> tuple[int, int]:
    """A lookback cut to a multiple of a segment no longer than itself: (lookback, segment).

    >>> cut_lookback(720, 48), cut_lookback(30, 48), cut_lookback(100, 24)
    ((720, 48), (30, 30), (96, 24))
    """
    segment = max(1, min(segment_len, lookback))
    return max(lookback // segment * segment, segment), segment


@dataclass(frozen=True)
class TrainConfig:
    """How a forecaster is trained. These defaults are the ones Rollcast stands behind.

    The rate stays at 3e-3 and training stops after ``patience`` validations without a better
    loss, so the data decides how long a run is: on the validation splits measured
    (BENCHMARKS.md) ETTh1 stopped after about 200 steps, a 4,032-step half-hourly series after
    about 450. A cosine schedule over a fixed 250 steps left that series at 4.6 times the
    validation MSE (0.110 against 0.024).
    """

    max_steps: int = 1000  # optimizer steps at most
    # Also stop after this many seconds of training, validating at once (None: no limit).
    time_limit_s: float | None = None
    max_epochs: float | None = None  # also stop after this many passes over the windows
    eval_every: int | None = 25  # steps between validations; None: once per pass
    patience: int = 4  # validations without a better loss before stopping
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # max global L2 norm of the gradients
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    # "constant"; "cosine": annealed to 0 over the budget; "halving": halved every pass (DLinear's)
    schedule: str = "constant"

"""The forecaster networks; their config is :class:`pipeline.recipe.ForecasterConfig`.

:class:`StackedLSTMForecaster` is a stacked LSTM built the way recurrent forecasters became
competitive on long horizons (SegRNN, Lin et al. 2023, arXiv:2308.11200), every technique an option:

* instance normalization: the window's last value (or mean) is removed and restored, or
  (``norm="season"``) the last value is removed and the seasonal-naive forecast added, so
  the network forecasts the residual over seasonal-naive;
* channel independence: each channel is its own sequence through shared weights, told
  apart by a learned channel embedding;
* segment-wise input: the lookback is cut into segments of ``segment_len`` steps, each embedded,
  so the LSTM runs ``lookback / segment_len`` steps instead of ``lookback``;
* parallel multi-step decoding: every output segment is decoded in one LSTM step from the
  encoder's final state, told apart by a positional embedding;
* layers, hidden size, dropout, a bidirectional encoder, and GRU or a peephole LSTM
  (:class:`pipeline.cells.PeepholeLSTM`) as alternative cells.

:class:`DLinear` is the linear baseline (Zeng et al. 2023, arXiv:2205.13504), and
:class:`RepeatLast` and :class:`SeasonalNaive` are the naive baselines, without parameters.

Every forecaster maps ``(B, L, C)`` recent values (and, when its config asks for a calendar,
the calendar features ``(B, L + H, F)`` of :mod:`pipeline.covariates`) to its output head's
output, in the data's own units, and has a per-channel ``scale`` buffer and a ``fit_scale``
method. The head, named by ``ForecasterConfig.loss``, owns the training loss, turns an output
into point forecasts ``(B, H, C)`` and gives the intervals' units: :class:`PointHead`
(``"mse"``, ``"l1"``) outputs the points, :class:`QuantileHead` (``"pinball"``, the LSTM only)
quantiles ``(B, H, C, Q)`` at the interval levels' tails around the median, which never cross.
The trainer asks the model for its loss, and :func:`pipeline.forecast.predict` for its points.
A checkpoint holds the config beside the weights, so a model can be rebuilt from the file alone,
and it is loaded with ``weights_only=True``: no arbitrary code is unpickled.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.functional import softplus

from pipeline import InvalidFileError
from pipeline.cells import PeepholeLSTM
from pipeline.covariates import feature_names
from pipeline.files import MAX_CHECKPOINT_BYTES, one_line, open_regular
from pipeline.intervals import Calibration
from pipeline.recipe import MAX_MEMBERS, ForecasterConfig

# Keeps division safe for a channel that never moved in training.
MIN_SCALE = 1e-6
# DLinear's moving-average window (the paper's setting for every dataset).
DLINEAR_KERNEL = 25

# What torch.load and the rebuild raise for a file that is not a valid checkpoint.
UNREADABLE_CHECKPOINT = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    RuntimeError,
    TypeError,
    ValueError,
    ZeroDivisionError,  # a config with a zero-length shape
    AttributeError,
)


class CheckpointError(InvalidFileError):
    """A checkpoint that cannot be turned back into a model: retrying cannot help."""


class PointHead:
    """Point forecasts ``(B, H, C)``, trained on errors divided by each channel's scale, so every
    channel weighs the same: their mean square (``"mse"``) or mean absolute value (``"l1"``).
    It ignores the interval levels: the intervals are the conformal radii alone."""

    n_outputs = 1

    def __init__(self, loss: str, levels: tuple[float, ...] = ()) -> None:
        self.name = loss

    def loss(self, output: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        error = (output.float() - target) / scale
        return torch.mean(error.abs() if self.name == "l1" else error**2)

    def point(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def order(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def units(self, output: np.ndarray, spreads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far below and above the point each interval reaches per unit of radius: the
        window spreads ``(N, 1, C)`` of :func:`pipeline.intervals.spread`, as ``(1, N, 1, C)``."""
        unit = spreads[None]
        return unit, unit


def quantile_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """The quantiles (ascending) bounding the central intervals of ``levels`` (ascending),
    around the median.

    >>> quantile_levels((0.8, 0.95))
    (0.025, 0.1, 0.5, 0.9, 0.975)
    """
    # Rounded so that 0.95 gives 0.025, not 0.025000000000000022.
    lower = tuple(round((1 - level) / 2, 12) for level in reversed(levels))
    upper = tuple(round((1 + level) / 2, 12) for level in levels)
    return (*lower, 0.5, *upper)


# A quantile interval's unit is at least this share of the window's spread: a radius then
# always widens it, even where the quantiles have collapsed onto the median.
MIN_UNIT = 1e-3


class QuantileHead:
    """Quantiles ``(B, H, C, Q)`` of :func:`quantile_levels` of the interval levels (ascending
    along the last axis, the median at index ``L``, ``Q = 2L + 1``), trained with the mean
    pinball loss of errors divided by each channel's scale (``"pinball"``). They never cross:
    :meth:`order` builds them as the median plus or minus sums of positive gaps."""

    def __init__(self, loss: str, levels: tuple[float, ...]) -> None:
        self.name = loss
        self.taus = quantile_levels(levels)
        self.median = len(levels)
        self.n_outputs = len(self.taus)

    def loss(self, output: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The mean pinball loss of quantiles ``(B, H, C, Q)`` against targets ``(B, H, C)``."""
        error = (target[..., None] - output.float()) / scale[:, None]  # (B, H, C, Q)
        taus = torch.tensor(self.taus, device=error.device)
        return torch.mean(torch.maximum(taus * error, (taus - 1) * error))

    def point(self, output: torch.Tensor) -> torch.Tensor:
        """The medians ``(B, H, C)`` of quantiles ``(B, H, C, Q)``."""
        return output[..., self.median]

    def order(self, raw: torch.Tensor) -> torch.Tensor:
        """Ascending quantiles ``(..., Q)`` of raw outputs ``(..., Q)``: ``raw[..., L]`` is the
        median, and the softplus of each other output the gap to its neighbour nearer it."""
        median = raw[..., self.median : self.median + 1]
        above = torch.cumsum(softplus(raw[..., self.median + 1 :]), dim=-1)
        below = torch.cumsum(softplus(raw[..., : self.median].flip(-1)), dim=-1).flip(-1)
        return torch.cat([median - below, median, median + above], dim=-1)

    def units(self, output: np.ndarray, spreads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far below and above the median each level's interval reaches per unit of
        radius, ``(L, N, H, C)`` each, for an output of quantiles ``(N, H, C, Q)``: the level's
        quantiles' distances from the median, at least :data:`MIN_UNIT` of the window spreads
        ``(N, 1, C)``."""
        median = output[..., self.median]  # (N, H, C)
        below = median - np.moveaxis(output[..., : self.median][..., ::-1], -1, 0)
        above = np.moveaxis(output[..., self.median + 1 :], -1, 0) - median
        floor = spreads[None] * MIN_UNIT
        return np.maximum(below, floor), np.maximum(above, floor)


Head = PointHead | QuantileHead

# Every head a config's ``loss`` may name.
HEADS: dict[str, type[Head]] = {"mse": PointHead, "l1": PointHead, "pinball": QuantileHead}


def output_head(loss: str, levels: tuple[float, ...]) -> Head:
    """The head ``loss`` names, for intervals of ``levels`` (ascending); ``ValueError`` for a
    name not in :data:`HEADS`."""
    if loss not in HEADS:
        raise ValueError(f"loss must be one of {', '.join(HEADS)}, not {loss!r}")
    return HEADS[loss](loss, levels)


class ForecasterModule(nn.Module):
    """What every forecaster has: its config, the output head it names, and the channel scale
    (an :class:`InstanceNorm` in ``norm`` mode).

    Raises ``ValueError`` for a quantile head on a forecaster that gives points only."""

    # Whether the network can give a quantile head's output.
    quantiles = False

    def __init__(self, config: ForecasterConfig, norm: str) -> None:
        super().__init__()
        self.config = config
        self.output_head = output_head(config.loss, config.interval_levels)
        if isinstance(self.output_head, QuantileHead) and not self.quantiles:
            raise ValueError(
                f"the {config.loss} loss (a quantile head) needs the lstm architecture, not "
                f"{type(self).__name__}: use loss mse or l1"
            )
        self.norm = InstanceNorm(config.n_channels, norm, config.horizon, config.season)
        # Where the forecast channels are among the inputs; None: every channel is forecast.
        self.target_columns = list(config.target_index) if config.targets else None
        # The intervals' split-conformal radii per level, horizon step and forecast channel, in
        # window spreads (pipeline.intervals); negative (UNCALIBRATED) until training sets them.
        radii = (len(config.interval_levels), config.horizon, len(config.target_names))
        self.register_buffer(RADIUS, torch.full(radii, UNCALIBRATED))

    @property
    def calibration(self) -> Calibration | None:
        """The intervals' calibration (None before :meth:`calibrate_intervals`)."""
        radius = getattr(self, RADIUS).detach().cpu().double().numpy()
        return None if (radius < 0).any() else Calibration(self.config.interval_levels, radius)

    def calibrate_intervals(self, calibration: Calibration) -> None:
        """Keep ``calibration``'s radii: the checkpoint, serve and the pyfunc read them."""
        getattr(self, RADIUS).copy_(torch.from_numpy(calibration.radius))

    @property
    def scale(self) -> torch.Tensor:
        """The training scale of each forecast channel ``(C_out,)``."""
        scale = self.norm.scale
        return scale if self.target_columns is None else scale[self.target_columns]

    def forecast_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The forecast channels ``(..., C_out)`` of values ``(..., C)``."""
        return x if self.target_columns is None else x[..., self.target_columns]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The head's training loss of an output against targets ``(B, H, C)``."""
        return self.output_head.loss(output, target, self.scale)

    def point(self, output: torch.Tensor) -> torch.Tensor:
        """The point forecasts ``(B, H, C)`` of an output."""
        return self.output_head.point(output)

    def units(self, output: np.ndarray, spreads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head's interval units (below, above) of an output, for windows of ``spreads``
        ``(N, 1, C)``: :meth:`PointHead.units`, :meth:`QuantileHead.units`."""
        return self.output_head.units(output, spreads)

    def fit_scale(self, inputs: torch.Tensor) -> None:
        """Set the per-channel scale from training values ``(..., C)`` (a no-op by default)."""


# What InstanceNorm removes from each window and adds back to the network's output.
NORMS = ("last", "mean", "none", "season")


class InstanceNorm(nn.Module):
    """Removes each window's level and a per-channel training scale; restores both on output.

    ``mode`` "last" removes the window's last value, "mean" its mean, "none" nothing; each adds
    it back. "season" removes the last value too, but adds back the seasonal-naive forecast of
    the window (:func:`seasonal_repeat` of ``season`` steps to ``horizon``), so the network
    forecasts the residual over seasonal-naive. Raises ``ValueError`` for another mode.
    """

    def __init__(self, n_channels: int, mode: str, horizon: int = 1, season: int = 1) -> None:
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, not {mode!r}")
        self.mode, self.horizon, self.season = mode, horizon, season
        # Per-channel spread of the training data; set by `fit_scale`, saved with the weights.
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.ones(n_channels))

    def level(self, x: torch.Tensor) -> torch.Tensor:
        """The per-window level removed from the input: ``(B, 1, C)``."""
        if self.mode in ("last", "season"):
            return x[:, -1:, :]
        if self.mode == "mean":
            return x.mean(dim=1, keepdim=True)
        return torch.zeros_like(x[:, -1:, :])

    def baseline(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """What :meth:`restore` adds back: the level ``(B, 1, C)``, or in "season" mode the
        seasonal-naive forecast ``(B, H, C)``."""
        if self.mode == "season":
            return seasonal_repeat(x, self.horizon, self.season)
        return level

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized windows ``(B, L, C)`` and the baseline :meth:`restore` adds back."""
        level = self.level(x)
        return (x - level) / self.scale, self.baseline(x, level)

    def restore(
        self, z: torch.Tensor, baseline: torch.Tensor, columns: list[int] | None = None
    ) -> torch.Tensor:
        """``z`` ``(B, H, C_out)`` back in the data's units; ``columns``: the channels it holds."""
        scale = self.scale if columns is None else self.scale[columns]
        return z.float() * scale + (baseline if columns is None else baseline[..., columns])


def seasonal_repeat(x: torch.Tensor, horizon: int, season: int) -> torch.Tensor:
    """The seasonal-naive forecast ``(B, H, C)`` of windows ``(B, L, C)``: their last ``season``
    steps, repeated to ``horizon`` steps. The caller checks ``season <= L``
    (:func:`check_season`).

    >>> seasonal_repeat(torch.tensor([[[1.0], [2.0], [3.0]]]), 5, 2)[0, :, 0].tolist()
    [2.0, 3.0, 2.0, 3.0, 2.0]
    """
    last_season = x[:, -season:, :]  # (B, S, C)
    return last_season.repeat(1, math.ceil(horizon / season), 1)[:, :horizon, :]


def check_season(config: ForecasterConfig, forecaster: str) -> None:
    """``ValueError`` when ``config.season`` is longer than its lookback: ``forecaster`` (what
    repeats the last season) would have no whole season to repeat."""
    if config.lookback < config.season:
        raise ValueError(
            f"{forecaster} needs lookback >= season, got lookback {config.lookback} "
            f"and season {config.season}: lengthen the lookback or shorten the season"
        )


# The buffer holding a forecaster's interval radii (ForecasterModule.calibration), and its
# value until they are calibrated (a radius is never negative).
RADIUS = "interval_radius"
UNCALIBRATED = -1.0

# The recurrent cells ForecasterConfig.cell may name; each is called as nn.LSTM is.
CELLS: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "peephole": PeepholeLSTM}


class StackedLSTMForecaster(ForecasterModule):
    """Segment-wise, channel-independent stacked LSTM with parallel multi-step decoding."""

    quantiles = True

    def __init__(self, config: ForecasterConfig) -> None:
        _check_shape(config)
        super().__init__(config, config.norm)
        n_targets = len(config.target_names)
        width = config.segment_len * (1 if config.channel_independent else n_targets)
        hidden = config.hidden_size
        self.n_in = config.lookback // config.segment_len
        self.n_out = math.ceil(config.horizon / config.segment_len)
        # Each segment's inputs-only channels and calendar features, every step's, read beside
        # the forecast channel's values.
        self.calendar_width = config.segment_len * n_calendar(config)
        side = config.segment_len * len(config.covariate_index) + self.calendar_width
        self.embed = nn.Sequential(nn.Linear(width + side, hidden), nn.ReLU())
        # The horizon's calendar, one segment per decoder query.
        self.future = nn.Linear(self.calendar_width, hidden) if self.calendar_width else None
        rnn = CELLS[config.cell]
        layers: dict[str, Any] = {"num_layers": config.num_layers, "batch_first": True}
        layers["dropout"] = config.dropout if config.num_layers > 1 else 0.0
        self.encoder = rnn(hidden, hidden, bidirectional=config.bidirectional, **layers)
        # SegRNN shares one RNN for both; a bidirectional encoder needs a forward-only decoder.
        self.decoder = rnn(hidden, hidden, **layers) if config.bidirectional else self.encoder
        self.position = nn.Parameter(torch.randn(self.n_out, hidden // 2) * 0.02)
        # One learned tag per channel when channels are separate sequences; one shared otherwise.
        n_tags = n_targets if config.channel_independent else 1
        self.channel = nn.Parameter(torch.randn(n_tags, hidden - hidden // 2) * 0.02)
        self.dropout = nn.Dropout(config.dropout)
        # pmf: one segment per decoder step; linear: the whole horizon from the final state.
        per_step = width // config.segment_len  # 1, or C when channels are mixed
        out_width = width if config.decoder == "pmf" else config.horizon * per_step
        self.head = nn.Linear(hidden, out_width * self.output_head.n_outputs)
        # A zero residual: the untrained model's median is seasonal-naive.
        if config.norm == "season":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def fit_scale(self, inputs: torch.Tensor) -> None:
        """Set the per-channel scale from training values ``(..., C)``."""
        spread = inputs.reshape(-1, inputs.shape[-1]).float().std(dim=0)
        self.norm.scale.copy_(spread.clamp_min(MIN_SCALE))

    def forward(self, x: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        """Forecasts ``(B, H, C)`` of windows ``x`` ``(B, L, C)``, or with a quantile head
        their quantiles ``(B, H, C, Q)``; with a calendar config, ``calendar`` ``(B, L + H, F)``
        holds the lookback's and the horizon's features."""
        z, baseline = self.norm(x)  # (B, L, C); (B, 1, C), or (B, H, C) for norm "season"
        sequences = self._to_sequences(self.forecast_channels(z))  # (B*C', L, 1) or (B, L, C')
        segments = sequences.reshape(len(sequences), self.n_in, -1)  # (N, n_in, width)
        per_window = len(sequences) // len(x)
        past, future = self._calendar_segments(calendar, per_window)
        covariates = self._covariate_segments(z, per_window)
        side = [part.to(segments.dtype) for part in (covariates, past) if part is not None]
        segments = torch.cat([segments, *side], dim=-1) if side else segments
        _, state = self.encoder(self.embed(segments))
        state = self._merge_directions(state)
        if self.config.decoder == "pmf":
            out = self._decode_parallel(state, len(sequences), future)  # (N, n_out*width*Q)
        else:
            out = self.head(self.dropout(_last_layer(state)))  # (N, H*width/w*Q)
        raw = self._from_sequences(out, x.shape[0])  # (B, H, C_out, Q)
        quantiles = self.output_head.order(raw.float()).movedim(-1, 0)  # (Q, B, H, C_out)
        out = self.norm.restore(quantiles, baseline, self.target_columns)
        return out[0] if self.output_head.n_outputs == 1 else out.movedim(0, -1)

    def _covariate_segments(self, z: torch.Tensor, per_window: int) -> torch.Tensor | None:
        """The inputs-only channels per segment, ``(N, n_in, seg*K)``, for each sequence."""
        columns = self.config.covariate_index
        if not columns:
            return None
        segments = z[..., list(columns)].reshape(len(z), self.n_in, -1)  # (B, n_in, seg*K)
        return segments.repeat_interleave(per_window, 0)

    def _calendar_segments(
        self, calendar: torch.Tensor | None, per_window: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The lookback's and the horizon's calendar, per segment: ``(N, n_in, seg*F)`` and
        ``(N, n_out, seg*F)``, repeated for each of a window's ``per_window`` sequences."""
        if not self.calendar_width:
            return None, None
        if calendar is None:
            raise ValueError("this model reads calendar features: pass the windows' calendar")
        lookback, segment = self.config.lookback, self.config.segment_len
        ahead = calendar[:, lookback:]  # (B, H, F); padded with its last step to whole segments
        pad = self.n_out * segment - ahead.shape[1]
        ahead = torch.cat([ahead, ahead[:, -1:].expand(-1, pad, -1)], dim=1) if pad else ahead
        past = calendar[:, :lookback].reshape(len(calendar), self.n_in, -1)  # (B, n_in, seg*F)
        future = ahead.reshape(len(calendar), self.n_out, -1)  # (B, n_out, seg*F)
        return past.repeat_interleave(per_window, 0), future.repeat_interleave(per_window, 0)

    def _to_sequences(self, z: torch.Tensor) -> torch.Tensor:
        if not self.config.channel_independent:
            return z  # (B, L, C)
        batch, lookback, channels = z.shape
        return z.permute(0, 2, 1).reshape(batch * channels, lookback, 1)  # (B*C, L, 1)

    def _from_sequences(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B, H, C_out, Q)`` of the head's outputs for each sequence, each step's ``Q``
        outputs side by side."""
        horizon, channels = self.config.horizon, len(self.config.target_names)
        n_outputs = self.output_head.n_outputs
        if self.config.channel_independent:
            out = out.reshape(batch, channels, -1, n_outputs)[:, :, :horizon]  # (B, C, H, Q)
            return out.permute(0, 2, 1, 3)  # (B, H, C, Q)
        return out.reshape(batch, -1, channels, n_outputs)[:, :horizon]  # (B, H, C, Q)

    def _merge_directions(self, state: Any) -> Any:
        if not self.config.bidirectional:
            return state

        def merge(s: torch.Tensor) -> torch.Tensor:  # (layers*2, N, d) -> (layers, N, d)
            return s.view(self.config.num_layers, 2, *s.shape[1:]).sum(dim=1)

        return tuple(merge(s) for s in state) if isinstance(state, tuple) else merge(state)

    def _decode_parallel(
        self, state: Any, n_sequences: int, future: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One decoder step per output segment, all at once, from the encoder's final state;
        each query also reads its segment's calendar (``future``, ``(N, n_out, seg*F)``)."""
        hidden, channel = self.config.hidden_size, self.channel
        n_groups = n_sequences // len(channel)  # batch size
        position = self.position.unsqueeze(0).expand(len(channel), -1, -1)  # (C', n_out, d/2)
        tagged = channel.unsqueeze(1).expand(-1, self.n_out, -1)  # (C', n_out, d - d/2)
        queries = torch.cat([position, tagged], dim=-1)  # (C', n_out, d)
        queries = queries.repeat(n_groups, 1, 1)  # (N, n_out, d)
        if self.future is not None and future is not None:
            queries = queries + self.future(future.to(queries.dtype))
        queries = queries.reshape(-1, 1, hidden)  # (N*n_out, 1, d)
        start = _repeat_state(state, self.n_out)  # (layers, N*n_out, d)
        decoded, _ = self.decoder(queries, start)  # (N*n_out, 1, d)
        out = self.head(self.dropout(decoded))  # (N*n_out, 1, width*Q)
        return out.reshape(n_sequences, -1)  # (N, n_out*width*Q)


def n_calendar(config: ForecasterConfig) -> int:
    """How many calendar features a config's model reads (0 without a calendar)."""
    return len(feature_names(config.holidays)) if config.calendar else 0


def _check_shape(config: ForecasterConfig) -> None:
    unknown = [name for name in config.targets if name not in config.channels]
    if unknown or len(set(config.targets)) < len(config.targets):
        raise ValueError(
            f"targets {list(config.targets)} must be distinct channels of {list(config.channels)}"
        )
    if config.lookback % config.segment_len:
        raise ValueError(
            f"lookback {config.lookback} must be a multiple of segment_len {config.segment_len}"
        )
    if config.cell not in CELLS or config.decoder not in ("pmf", "linear"):
        raise ValueError(f"unknown cell {config.cell!r} or decoder {config.decoder!r}")
    if config.norm == "season":
        check_season(config, 'norm "season"')


def _last_layer(state: Any) -> torch.Tensor:
    hidden = state[0] if isinstance(state, tuple) else state
    return hidden[-1]  # (N, d)


def _repeat_state(state: Any, times: int) -> Any:
    if isinstance(state, tuple):
        return tuple(s.repeat_interleave(times, dim=1) for s in state)
    return state.repeat_interleave(times, dim=1)


class DLinear(ForecasterModule):
    """Moving-average trend plus seasonal remainder, each mapped ``L → H`` by one linear layer
    shared by every channel. It works on the data as given (the LTSF protocol standardizes it
    first), so its scale stays 1."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__(config, "none")
        self.trend = nn.Linear(config.lookback, config.horizon)
        self.seasonal = nn.Linear(config.lookback, config.horizon)

    def forward(self, x: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        trend = moving_average(x, DLINEAR_KERNEL)  # (B, L, C)
        seasonal = x - trend
        out = self.trend(trend.transpose(1, 2)) + self.seasonal(seasonal.transpose(1, 2))
        return self.forecast_channels(out.transpose(1, 2).float())  # (B, H, C_out)


def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred moving average along time of ``(B, L, C)``, ends padded with the edge values."""
    front = x[:, :1, :].expand(-1, (kernel - 1) // 2, -1)
    back = x[:, -1:, :].expand(-1, kernel // 2, -1)
    padded = torch.cat([front, x, back], dim=1).transpose(1, 2)  # (B, C, L + kernel - 1)
    return nn.functional.avg_pool1d(padded, kernel, stride=1).transpose(1, 2)


class NaiveForecaster(ForecasterModule):
    """A forecaster without parameters: it repeats what it has seen, in the data's own units
    (its scale stays 1: a naive forecast does not depend on the training data)."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__(config, "none")


class RepeatLast(NaiveForecaster):
    """Every future step equals the last observed one.

    >>> model = RepeatLast(ForecasterConfig(channels=("x",), lookback=4, horizon=2))
    >>> model(torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]))[0, :, 0].tolist()
    [4.0, 4.0]
    """

    def forward(self, x: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        last = self.forecast_channels(x[:, -1:, :].float())  # (B, 1, C_out)
        return last.repeat(1, self.config.horizon, 1)  # (B, H, C)


class SeasonalNaive(NaiveForecaster):
    """Every future step equals the value one season earlier, repeating the last season.

    Raises ``ValueError`` at construction when ``config.lookback`` is shorter than
    ``config.season``.

    >>> config = ForecasterConfig(channels=("x",), lookback=4, horizon=3, season=2)
    >>> SeasonalNaive(config)(torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]))[0, :, 0].tolist()
    [3.0, 4.0, 3.0]
    """

    def __init__(self, config: ForecasterConfig) -> None:
        check_season(config, "seasonal naive")
        super().__init__(config)

    def forward(self, x: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        last_seasons = seasonal_repeat(x, self.config.horizon, self.config.season)  # (B, H, C)
        return self.forecast_channels(last_seasons.float())  # (B, H, C_out)


class SeedEnsemble(ForecasterModule):
    """The mean of the outputs (point forecasts, or ascending quantiles, whose mean stays
    ascending) of ``config.members`` networks of one config, each trained from its own seed:
    a seed ensemble. Its scale is its first member's, so its validation MSE compares with that
    member's alone.
    """

    quantiles = True

    def __init__(self, config: ForecasterConfig, members: Sequence[Network]) -> None:
        super().__init__(config, "none")
        self.members = nn.ModuleList(members)

    @property
    def networks(self) -> list[Network]:
        return cast("list[Network]", list(self.members))

    @classmethod
    def of(cls, models: Sequence[Forecaster]) -> SeedEnsemble:
        """The ensemble of trained ``models`` of one config (an ensemble among them gives
        each of its networks)."""
        networks = [n for m in models for n in (m.networks if isinstance(m, cls) else [m])]
        config = replace(networks[0].config, members=len(networks))
        return cls(config, cast("list[Network]", networks))

    @property
    def scale(self) -> torch.Tensor:
        return self.networks[0].scale

    def fit_scale(self, inputs: torch.Tensor) -> None:
        for member in self.networks:
            member.fit_scale(inputs)

    def forward(self, x: torch.Tensor, calendar: torch.Tensor | None = None) -> torch.Tensor:
        outputs = [member(x, calendar) for member in self.networks]
        return torch.stack(outputs).mean(dim=0)


# One network; a forecaster is one network or a seed ensemble of them.
Network = StackedLSTMForecaster | DLinear | RepeatLast | SeasonalNaive
Forecaster = Network | SeedEnsemble

# Every architecture a config may name, and the forecaster class it builds.
ARCHITECTURES: dict[str, type[Network]] = {
    "lstm": StackedLSTMForecaster,
    "dlinear": DLinear,
    "repeat_last": RepeatLast,
    "seasonal_naive": SeasonalNaive,
}


def build_forecaster(config: ForecasterConfig, seed: int | None = None) -> Forecaster:
    """The forecaster ``config.architecture`` names, with freshly initialized weights.

    With a ``seed``, the initial weights depend on it alone (the global RNG is left as it was),
    so one seed gives one model. Raises ``ValueError`` for an unknown architecture or options
    the network cannot take.
    """
    if config.architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.architecture!r}: use one of {', '.join(ARCHITECTURES)}"
        )
    if not 1 <= config.members <= MAX_MEMBERS:
        raise ValueError(f"members must be from 1 to {MAX_MEMBERS}, not {config.members!r}")
    if config.members > 1:
        one = replace(config, members=1)
        seeds = [None if seed is None else seed + k for k in range(config.members)]
        return SeedEnsemble(config, [_network(one, s) for s in seeds])
    return _network(config, seed)


def _network(config: ForecasterConfig, seed: int | None) -> Network:
    if seed is None:
        return ARCHITECTURES[config.architecture](config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[config.architecture](config)


def warm_started(champion: Forecaster, config: ForecasterConfig) -> Forecaster | None:
    """A trainable copy of ``champion`` to start a challenger from; None unless ``config``
    admits its config (:meth:`ForecasterConfig.admits`: the same channels, step, shape and
    options, the norm "auto" resolved as the champion's was)."""
    if not config.admits(champion.config):
        return None
    model = build_forecaster(champion.config)
    model.load_state_dict(champion.state_dict())
    return model


def save_checkpoint(model: Forecaster, path: Path) -> Path:
    """Write config and weights to one file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state}, path)
    return path


def load_checkpoint(
    path: Path, device: str | torch.device = "cpu", max_bytes: int = MAX_CHECKPOINT_BYTES
) -> Forecaster:
    """Rebuild a model from :func:`save_checkpoint`'s file, in eval mode.

    The file must be a regular file of at most ``max_bytes``, hold a config and a state dict,
    and the state dict must have exactly the tensors (names and shapes) the config's network
    has; the config is checked on the ``meta`` device first, so a config claiming a huge
    shape allocates nothing. Raises :class:`CheckpointError`, one line naming the path.
    """
    with open_regular(path, max_bytes, "forecaster checkpoint", CheckpointError) as file:
        try:
            with warnings.catch_warnings():
                # torch hints that a file pickled with another protocol may not load: it is
                # checked below either way, and a hint is not the operator's to act on.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                blob = torch.load(file, map_location="cpu", weights_only=True)
            config, state = _checkpoint_parts(blob)
            state = _with_radii(config, state)
            _check_state(config, state)
            model = build_forecaster(config)
            model.load_state_dict(state)
        except UNREADABLE_CHECKPOINT as err:
            raise CheckpointError(
                f"{path}: cannot load the forecaster checkpoint: {one_line(err)}"
            ) from err
    return model.to(device).eval()


def _checkpoint_parts(blob: Any) -> tuple[ForecasterConfig, dict[str, torch.Tensor]]:
    """The config and the state dict of a loaded checkpoint; ValueError if it has none."""
    if not isinstance(blob, dict) or not {"config", "state_dict"} <= blob.keys():
        raise ValueError("it holds no 'config' and 'state_dict': was it written by Rollcast?")
    config, state = blob["config"], blob["state_dict"]
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError("its 'config' and 'state_dict' must both be dictionaries")
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError("its 'state_dict' holds something other than tensors")
    return ForecasterConfig.from_dict(config), state


def _with_radii(
    config: ForecasterConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with uncalibrated interval radii where it has none (a checkpoint written
    before intervals existed loads, with no intervals)."""
    with torch.device("meta"):
        names = [name for name in build_forecaster(config).state_dict() if name.endswith(RADIUS)]
    radii = (len(config.interval_levels), config.horizon, len(config.target_names))
    missing = {name: torch.full(radii, UNCALIBRATED) for name in names if name not in state}
    return {**state, **missing}


def _check_state(config: ForecasterConfig, state: dict[str, torch.Tensor]) -> None:
    """ValueError unless ``state`` has the names and shapes of ``config``'s network."""
    with torch.device("meta"):
        network = build_forecaster(config)
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or [
            name for name in expected if found[name] != expected[name]
        ]
        raise ValueError(f"its weights do not fit its config (first mismatch: {wrong[0]})")

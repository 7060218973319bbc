"""What the serve loop counts: each counter declared once, with its meaning. numpy only.

:class:`ServeStats` is the one declaration of every counter and gauge. The loop adds to its plain
fields; the Prometheus collector (:mod:`pipeline.metrics`) and the JSON summary (:meth:`as_dict`)
both read the declarations, so a new counter is one line here and nothing anywhere else.

Online scoring is here too: :class:`OnlineScorer` is what the loop tells of the forecasts it
made, the steps it observed and the models it swapped in, and :class:`OnlineError` the running
error it keeps.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.intervals import DEFAULT_GAIN, Calibration, OnlineRadius
from pipeline.open_steps import OpenHours, steps_ahead

if TYPE_CHECKING:
    from pipeline.windows import Step

logger = logging.getLogger(__name__)

# Upper bounds of the latency buckets, in seconds: 1 ms to 10 s.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

COUNTER, GAUGE, LABELLED, HISTOGRAM = "counter", "gauge", "labelled", "histogram"


def _declare(
    kind: str, doc: str, metric: str | None, summary: bool, label: str = "", **default: Any
) -> Any:
    meta = {"kind": kind, "doc": doc, "metric": metric, "summary": summary, "label": label}
    return field(metadata=meta, **default)


def counter(doc: str, metric: str | None = None, summary: bool = True) -> Any:
    """A running total; exported as ``rollcast_<metric or field name>_total``."""
    return _declare(COUNTER, doc, metric, summary, default=0)


def gauge(doc: str, metric: str | None = None) -> Any:
    """A value of now; exported as ``rollcast_<metric or field name>``."""
    return _declare(GAUGE, doc, metric, summary=False, default=0)


def labelled(doc: str, label: str, metric: str | None = None) -> Any:
    """Totals by one label (a reason, say); exported as a labelled counter."""
    return _declare(LABELLED, doc, metric, True, label, default_factory=Counter)


def histogram(doc: str, metric: str | None = None) -> Any:
    """Latencies in fixed buckets; exported as a histogram."""
    return _declare(HISTOGRAM, doc, metric, False, default_factory=LatencyRecorder)


class LatencyRecorder:
    """Counts latencies into fixed buckets and keeps the newest ``keep`` exactly, for quantiles.

    Memory is fixed at construction, however many values are recorded.

    >>> r = LatencyRecorder(keep=4)
    >>> r.record(np.array([0.002, 0.004, 0.020]))
    >>> r.count, r.max_s, r.bucket_counts()[:4]
    (3, 0.02, [0, 1, 2, 2])
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._bounds = np.array(LATENCY_BUCKETS_S)
        self._counts = np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64)  # last: +Inf
        self._recent = np.zeros(keep, dtype=np.float64)
        self.count, self.sum_s, self.max_s = 0, 0.0, 0.0

    def record(self, seconds: np.ndarray) -> None:
        if not len(seconds):
            return
        np.add.at(self._counts, np.searchsorted(self._bounds, seconds), 1)
        keep = len(self._recent)
        slots = (self.count + np.arange(len(seconds))) % keep
        self._recent[slots[-keep:]] = seconds[-keep:]
        self.count += len(seconds)
        self.sum_s += float(seconds.sum())
        self.max_s = max(self.max_s, float(seconds.max()))

    def bucket_counts(self) -> list[int]:
        """Cumulative counts per upper bound, Prometheus style (the last one is +Inf)."""
        return np.cumsum(self._counts).tolist()

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the newest ``keep`` values (0.0 before any)."""
        held = self._recent[: min(self.count, len(self._recent))]
        return float(np.quantile(held, q)) if len(held) else 0.0


# A forecast being scored against actuals as they arrive: when it was issued, its values
# (H, C), the intervals published with it, lower and upper (2, L, H, C), None without, and
# the group its series' intervals are adapted in.
Scoring = tuple[int, np.ndarray, np.ndarray | None, str]

# Interval groups held apart at most; the series of any further group share the group "".
MAX_GROUPS = 1000


class SeriesGroups:
    """The group a series' intervals are adapted in: the first ``fields`` fields of its key
    split at ``separator`` (``"eu/site-4/meter-2"`` is in ``"eu/site-4"`` with 2 fields of
    ``"/"``); with 0 fields every series is in the one group ``""``. A key with fewer fields is
    its own group's name; past :data:`MAX_GROUPS` groups, new ones are counted in ``""``.

    >>> SeriesGroups(2, "/").of("eu/site-4/meter-2"), SeriesGroups(0).of("eu/site-4")
    ('eu/site-4', '')
    """

    def __init__(self, fields: int = 0, separator: str = "/") -> None:
        self.fields, self.separator = fields, separator
        self.seen: set[str] = {""}

    def of(self, series: str) -> str:
        if not self.fields:
            return ""
        group = self.separator.join(series.split(self.separator, self.fields)[: self.fields])
        if group in self.seen:
            return group
        if len(self.seen) >= MAX_GROUPS:
            return ""
        self.seen.add(group)
        return group


class OnlineError:
    """Prequential error of published forecasts, by steps ahead, averaged over channels.

    Each series has at most one forecast being scored (the caller keeps it); every actual that
    arrives is scored against it with :meth:`score`, and :meth:`settle` adds a batch's errors in
    one vectorised step.

    >>> online = OnlineError(horizon=2, step_ms=10)
    >>> scoring = (0, np.array([[1.0], [2.0]]), None, "")  # at t=0: 1.0 at t=10, 2.0 at t=20
    >>> online.score(scoring, 10, np.array([1.5])), online.score(scoring, 20, np.array([2.0]))
    (True, False)
    >>> online.settle(); online.mae()
    [0.5, 0.0]
    """

    def __init__(
        self,
        horizon: int,
        step_ms: int,
        scale: np.ndarray | None = None,
        version: str = "",
        targets: list[int] | None = None,
        hours: OpenHours | None = None,
        calibration: Calibration | None = None,
        gain: float = DEFAULT_GAIN,
        groups: SeriesGroups | None = None,
    ) -> None:
        self.step_ms = step_ms
        self.groups = groups or SeriesGroups()
        self.hours = hours  # set: a forecast's steps are open steps
        # Where the forecast channels are in an observed step's values (None: all of them).
        self.targets = targets
        self.abs_error_sum = np.zeros(horizon)
        self.abs_error_count = np.zeros(horizon, np.int64)
        # Per model version: (sum of squared errors divided by the model's channel scale, the
        # values scored). The units of the version's validation MSE.
        self.by_version: dict[str, tuple[float, int]] = {}
        self.version, self.scale = version, scale
        self.gain = gain
        self._start_intervals(calibration)
        # (ahead, predicted, actual, the published intervals (2, L, C) or None, the group)
        self._scored: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None, str]] = []

    def _start_intervals(self, calibration: Calibration | None) -> None:
        """Radii to publish from now on, adapted online (:class:`OnlineRadius`) per group of
        series (:class:`SeriesGroups`), and the coverage of the intervals scored, per level
        and steps ahead, and per group and level."""
        self.calibration = calibration
        self.radii: dict[str, OnlineRadius] = {}
        levels, horizon = (calibration.levels if calibration else ()), len(self.abs_error_sum)
        self.levels = levels
        self.covered = np.zeros((len(levels), horizon))  # values inside, averaged over channels
        self.interval_scored = np.zeros(horizon, np.int64)
        # Per group: values inside per level (L,), and values scored.
        self.group_covered: dict[str, np.ndarray] = {}
        self.group_scored: Counter[str] = Counter()

    @property
    def adapts(self) -> bool:
        """Whether there are intervals to publish and adapt."""
        return self.calibration is not None

    def radius_of(self, group: str) -> OnlineRadius:
        """The radii of ``group``'s intervals (from the calibration, at its first forecast)."""
        radius = self.radii.get(group)
        if radius is None:
            assert self.calibration is not None, "no intervals without a calibration"
            radius = self.radii[group] = OnlineRadius(self.calibration, self.gain)
        return radius

    def radii_for(self, groups: Sequence[str]) -> np.ndarray:
        """``(L, B, H, C)``: the radii now of each of a batch's forecasts, by its group."""
        return np.stack([self.radius_of(group).radius for group in groups], axis=1)

    def switch(
        self, version: str, scale: np.ndarray, calibration: Calibration | None = None
    ) -> None:
        """Score the forecasts of another model version from now on (after a swap); its
        intervals start from its own calibration."""
        self.settle()
        self.version, self.scale = version, scale
        self._start_intervals(calibration)

    def score(self, scoring: Scoring, ts_ms: int, actual: np.ndarray) -> bool:
        """Score the actual of step ``ts_ms``; return whether the forecast has steps left."""
        issued_at_ms, predicted, bounds, group = scoring
        if self.hours is None:  # the hot path: one division
            ahead = (ts_ms - issued_at_ms) // self.step_ms - 1
        else:
            ahead = steps_ahead(issued_at_ms, ts_ms, self.step_ms, self.hours) - 1
        if ahead < len(predicted):
            observed = actual if self.targets is None else actual[self.targets]
            published = None if bounds is None else bounds[:, :, ahead]
            self._scored.append((ahead, predicted[ahead], observed, published, group))
        return ahead < len(predicted) - 1  # else fully scored (or overtaken)

    def settle(self) -> None:
        if not self._scored:
            return
        ahead = np.fromiter((s[0] for s in self._scored), np.int64, len(self._scored))
        predicted = np.stack([s[1] for s in self._scored])
        actual = np.stack([s[2] for s in self._scored])
        self._score_intervals(ahead, predicted, actual)
        np.add.at(self.abs_error_sum, ahead, np.abs(predicted - actual).mean(axis=1))
        np.add.at(self.abs_error_count, ahead, 1)
        scaled = (predicted - actual) / (self.scale if self.scale is not None else 1.0)
        squared, count = self.by_version.get(self.version, (0.0, 0))
        self.by_version[self.version] = (
            squared + float(np.square(scaled).mean(axis=1).sum()),
            count + len(self._scored),
        )
        self._scored.clear()

    def _score_intervals(
        self, ahead: np.ndarray, predicted: np.ndarray, actual: np.ndarray
    ) -> None:
        """Count which published intervals held their actual, and move each group's radii by
        its own."""
        kept = [(i, s[3], s[4]) for i, s in enumerate(self._scored) if s[3] is not None]
        if not kept or not self.adapts:
            return
        index = np.array([i for i, _, _ in kept])
        bounds = np.stack([b for _, b, _ in kept])  # (K, 2, L, C)
        groups = np.array([g for _, _, g in kept])
        steps = ahead[index]
        observed = actual[index][:, None, :]  # (K, 1, C)
        missed = (observed < bounds[:, 0]) | (observed > bounds[:, 1])  # (K, L, C)
        inside = 1 - missed.mean(axis=2)  # (K, L)
        for group in np.unique(groups).tolist():
            mine = groups == group
            self.radius_of(group).observe(steps[mine], missed[mine].transpose(1, 0, 2))
            covered = self.group_covered.get(group, np.zeros(len(self.levels)))
            self.group_covered[group] = covered + inside[mine].sum(axis=0)
            self.group_scored[group] += int(mine.sum())
        np.add.at(self.covered.T, steps, inside)
        np.add.at(self.interval_scored, steps, 1)

    def coverage(self) -> dict[float, float | None]:
        """The share of actuals inside their published interval so far, per level."""
        scored = int(self.interval_scored.sum())
        return {
            level: float(self.covered[k].sum() / scored) if scored else None
            for k, level in enumerate(self.levels)
        }

    def mae(self) -> list[float | None]:
        """Mean absolute error by steps ahead; None where none was scored."""
        return [
            float(total / count) if count else None
            for total, count in zip(self.abs_error_sum, self.abs_error_count, strict=True)
        ]


class ScoredSeries(Protocol):
    """What the scorer keeps with a live series (the serve loop's per-series state), so that it
    goes when the series is evicted."""

    forecast_before: bool
    scoring: Scoring | None


class IssuedForecast(Protocol):
    """A forecast made in this batch: whose, and at which step."""

    @property
    def series(self) -> str: ...
    @property
    def issued_at_ms(self) -> int: ...


class LiveSeries(Protocol):
    """The series a forecaster holds, as the scorer looks them up."""

    def series_state(self, series_id: str) -> ScoredSeries | None: ...
    def states(self) -> Iterable[ScoredSeries]: ...


class OnlineScorer:
    """Prequential scoring of a serve loop's forecasts, in ``stats.online_error``.

    Forecast first, score as the actuals come: the loop tells the scorer the steps each record
    placed (:meth:`placed`, as ``RollingForecaster.on_placed``; :meth:`settle` once a batch),
    what it forecast (:meth:`forecasts_issued`), and which version it swapped in
    (:meth:`model_swapped`). Each series has at most one forecast being scored: a
    batch's newest forecast of it, taken when the one before is fully scored. That forecast is
    kept with the series' state in ``series``, so it goes when the series does; the scorer holds
    nothing of its own, and any scorer over the same ``stats`` and ``series`` scores the same.
    """

    def __init__(self, stats: ServeStats, series: LiveSeries) -> None:
        self._stats, self._series = stats, series

    def placed(self, state: ScoredSeries, steps: Sequence[Step]) -> None:
        """Score the steps one record placed against its series' forecast, as they arrive.

        Cost: a few Python operations per placed step of a series being scored; nothing is kept
        (holding a batch's steps until its end doubled the garbage collector's work).
        """
        scoring = state.scoring
        if scoring is None:
            return
        online = self._stats.online_error
        for step in steps:
            if not online.score(scoring, step.ts_ms, step.values):
                state.scoring = None  # fully scored: the series' next forecast is scored
                return

    def settle(self) -> None:
        """Add up what a batch scored: one vectorised sum (after its records are placed)."""
        self._stats.online_error.settle()

    def forecasts_issued(
        self,
        requests: Sequence[IssuedForecast],
        preds: np.ndarray,
        bounds: np.ndarray | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        """Score from now on the forecasts ``preds`` ``(B, H, C)`` made for ``requests`` (and
        the intervals ``bounds`` ``(2, L, B, H, C)`` published with them, each adapted in its
        series' group of ``groups``), where
        their series has none being scored; count the series given their first forecast.

        Newest first: a batch may hold several steps of a series, and only the newest
        forecast's actuals are all still to come. A series evicted in the batch is skipped.
        """
        stats, series = self._stats, self._series
        for i, (request, pred) in enumerate(zip(reversed(requests), preds[::-1], strict=True)):
            state = series.series_state(request.series)
            if state is None:
                continue
            if not state.forecast_before:
                state.forecast_before = True
                stats.series_forecast += 1
            if state.scoring is None:
                j = len(requests) - 1 - i
                published = None if bounds is None else bounds[:, :, j].copy()  # free the batch
                group = "" if groups is None else groups[j]
                state.scoring = (request.issued_at_ms, pred.copy(), published, group)

    def model_swapped(
        self, version: str, scale: np.ndarray, calibration: Calibration | None = None
    ) -> None:
        """Score the forecasts of ``version`` (channel scale ``scale``) from now on.

        Forecasts of the old version still being scored are dropped: the online error of the
        new version counts its own forecasts only.
        """
        self._stats.online_error.switch(version, scale, calibration)
        for state in self._series.states():
            state.scoring = None


@dataclass
class ServeStats:
    """Running totals of one serve loop; the Prometheus endpoint reads them when scraped."""

    online_error: OnlineError
    model_name: str = ""
    model_version: str = field(default="", metadata={"summary": True})
    records_in: int = counter("Input records consumed (not counting rewound ones)")
    records_rewound: int = counter("Records re-read to rebuild windows")
    forecasts_out: int = counter("Forecasts acknowledged by the broker")
    duplicates: int = counter("Duplicate (series, ts) observations dropped")
    gaps_filled: int = counter("Short gaps filled by interpolation")
    restarts: int = counter("Windows emptied by a gap over max_gap", "window_restarts")
    evicted_series: int = counter("Established series dropped by max_series", "series_evicted")
    evicted_new_series: int = counter(
        "New series dropped by max_new_series before their window filled", "new_series_evicted"
    )
    series_forecast: int = counter("Series given their first forecast")
    swaps: int = counter("Champion versions swapped in", "model_swaps")
    dead_letters: Counter[str] = labelled("Records dead-lettered", "reason")
    refused: Counter[str] = labelled("Versions refused", "reason", "model_refused")
    live_series: int = gauge("Series with a window held, established or new")
    consumer_lag: int = gauge("Records behind the high watermark")
    assigned_partitions: int = gauge("Input partitions this member reads")
    batch_latency: LatencyRecorder = histogram("Wall time of one poll's batch", "batch_seconds")
    record_latency: LatencyRecorder = histogram(
        "Input produce time to the broker's ack of its forecast", "record_latency_seconds"
    )
    # Seconds to make and publish one forecast, a moving average (serve.BatchCap reads it).
    forecast_cost_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """The summary a finished serve run prints: every counter, by field name."""
        summary: dict[str, object] = {
            f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata.get("summary")
        }
        return {**summary, "online_mae": self.online_error.mae()}

    def online_mae(self) -> list[float | None]:
        return self.online_error.mae()


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Counter) else value


@dataclass(frozen=True)
class Declared:
    """One exported counter, gauge or histogram of a :class:`ServeStats`, with its value now."""

    kind: str
    name: str  # without the rollcast_ prefix and the _total suffix
    doc: str
    label: str
    value: Any


def declared(stats: ServeStats) -> list[Declared]:
    """Every exported counter, gauge and histogram, in declaration order."""
    return [
        Declared(
            f.metadata["kind"],
            f.metadata["metric"] or f.name,
            f.metadata["doc"],
            f.metadata["label"],
            getattr(stats, f.name),
        )
        for f in fields(stats)
        if "kind" in f.metadata
    ]


class OnlineErrorReporter(threading.Thread):
    """Every ``interval_s``, for each model version, the MSE (in validation units) of its
    forecast values scored since the last report: ``report(version, mse, values, scored)``,
    ``scored`` counting every value of the version so far. Serve logs it to the version's
    MLflow run, where the drift flow reads it. A daemon thread; a failed report is logged,
    and the next one covers its values too."""

    def __init__(
        self,
        stats: ServeStats,
        report: Callable[[str, float, int, int, dict[float, float]], None],
        interval_s: float,
    ) -> None:
        super().__init__(name="online-error-reporter", daemon=True)
        self._stats, self._report, self._interval_s = stats, report, interval_s
        self._stopped = threading.Event()
        self._reported: dict[str, tuple[float, int]] = {}  # totals at the last good report
        # The interval totals (values inside per level, values) of a version at its last report.
        self._covered: dict[str, tuple[np.ndarray, int]] = {}

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.report_once()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=30)
        self.report_once()

    def report_once(self) -> None:
        for version, (squared, count) in list(self._stats.online_error.by_version.items()):
            done_squared, done_count = self._reported.get(version, (0.0, 0))
            if count <= done_count:
                continue
            new = count - done_count
            coverage, totals = self._coverage_since(version)
            try:
                self._report(version, (squared - done_squared) / new, new, count, coverage)
            except Exception as err:  # the registry being down must not stop serving
                logger.warning("cannot report the online error of version %s: %s", version, err)
                continue
            self._reported[version] = (squared, count)
            if totals is not None:
                self._covered[version] = totals

    def _coverage_since(
        self, version: str
    ) -> tuple[dict[float, float], tuple[np.ndarray, int] | None]:
        """Per level, the share of the actuals scored since ``version``'s last report that
        were inside their published interval (empty unless it is the version serving, with
        intervals), and the totals to count the next report from."""
        online = self._stats.online_error
        if version != online.version or not online.levels:
            return {}, None
        covered, scored = online.covered.sum(axis=1), int(online.interval_scored.sum())
        done_covered, done_scored = self._covered.get(version, (np.zeros_like(covered), 0))
        if scored <= done_scored:
            return {}, None
        share = (covered - done_covered) / (scored - done_scored)
        return dict(zip(online.levels, share.tolist(), strict=True)), (covered, scored)

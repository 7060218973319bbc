"""Serve metrics: latency recorders (numpy, no per-record locks) and the Prometheus endpoint.

The serve loop only adds to plain counters in :class:`~pipeline.serve.ServeStats`. The Prometheus
collector reads them when the endpoint is scraped, so the hot path pays nothing for metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from pipeline import RollcastError

if TYPE_CHECKING:
    from pipeline.serve import ServeStats


class MetricsPortError(RollcastError):
    """The metrics endpoint cannot listen where it was told to."""


# Upper bounds of the latency buckets, in seconds: 1 ms to 10 s.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


class ServeCollector(Collector):
    """Exposes one serve loop's :class:`ServeStats` under ``rollcast_*`` names."""

    def __init__(self, stats: ServeStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield _counter(
            "records_in", "Input records consumed (not counting rewound ones)", s.records_in
        )
        yield _counter("records_rewound", "Records re-read to rebuild windows", s.records_rewound)
        yield _counter("forecasts_out", "Forecasts acknowledged by the broker", s.forecasts_out)
        yield _counter("duplicates", "Duplicate (series, ts) observations dropped", s.duplicates)
        yield _counter("gaps_filled", "Short gaps filled by interpolation", s.gaps_filled)
        yield _counter("window_restarts", "Windows emptied by a gap over max_gap", s.restarts)
        yield _counter("series_evicted", "Series dropped by the live-series cap", s.evicted_series)
        yield _counter("model_swaps", "Champion versions swapped in", s.swaps)
        yield _labelled_counter("dead_letters", "Records dead-lettered", "reason", s.dead_letters)
        yield _labelled_counter("model_refused", "Versions refused", "reason", s.refused)
        yield _gauge("live_series", "Series with a window held", s.live_series)
        yield _gauge("consumer_lag", "Records behind the high watermark", s.consumer_lag)
        yield _gauge("assigned_partitions", "Input partitions this member reads", s.partitions)
        info = GaugeMetricFamily(
            "rollcast_model", "The model version serving", labels=["name", "version"]
        )
        info.add_metric([s.model_name, s.model_version], 1.0)
        yield info
        yield _histogram("batch_seconds", "Wall time of one poll's batch", s.batch_latency)
        yield _histogram(
            "record_latency_seconds",
            "Input produce time to the broker's ack of its forecast",
            s.record_latency,
        )
        yield _online_error(s)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(f"rollcast_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(f"rollcast_{name}", doc, value=value)


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(f"rollcast_{name}", doc, labels=[label])
    for key, value in dict(values).items():
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, recorder: LatencyRecorder) -> Metric:
    bounds = [*(str(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    buckets = list(zip(bounds, recorder.bucket_counts(), strict=True))
    return HistogramMetricFamily(f"rollcast_{name}", doc, buckets=buckets, sum_value=recorder.sum_s)


def _online_error(s: ServeStats) -> Metric:
    family = SummaryMetricFamily(
        "rollcast_forecast_abs_error",
        "Absolute error of published forecasts once the actual arrives, by steps ahead",
        labels=["steps_ahead"],
    )
    counts, sums = s.abs_error_count.copy(), s.abs_error_sum.copy()
    for step, (count, total) in enumerate(zip(counts, sums, strict=True), start=1):
        family.add_metric([str(step)], count_value=int(count), sum_value=float(total))
    return family


def serve_metrics(stats: ServeStats, port: int | None) -> CollectorRegistry:
    """A registry exposing ``stats``; served over HTTP on ``port`` unless it is None."""
    registry = CollectorRegistry()
    registry.register(ServeCollector(stats))
    if port is not None:
        try:
            start_http_server(port, registry=registry)
        except OSError as err:
            raise MetricsPortError(
                f"cannot serve metrics on port {port}: {err.strerror}. Set ROLLCAST_METRICS_PORT "
                "to a free port, or to 0 to turn the endpoint off"
            ) from err
    return registry

"""The Prometheus endpoint of a serve loop: its :class:`~pipeline.stats.ServeStats`, on scrape.

The serve loop only adds to plain counters. The collector reads them at scrape time from the
declarations in :mod:`pipeline.stats`, so the hot path pays nothing for metrics and a new counter
needs no change here.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

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
from pipeline.stats import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    LATENCY_BUCKETS_S,
    Declared,
    LatencyRecorder,
    OnlineError,
    ServeStats,
    declared,
)

PREFIX = "rollcast_"


class MetricsPortError(RollcastError):
    """The metrics endpoint cannot listen where it was told to."""


class ServeCollector(Collector):
    """Exposes one serve loop's :class:`ServeStats` under ``rollcast_*`` names."""

    def __init__(self, stats: ServeStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for item in declared(self._stats):
            yield _family(item)
        info = GaugeMetricFamily(
            PREFIX + "model", "The model version serving", labels=["name", "version"]
        )
        info.add_metric([self._stats.model_name, self._stats.model_version], 1.0)
        yield info
        yield _online_error(self._stats.online_error)
        yield _online_coverage(self._stats.online_error)
        if self._stats.online_error.groups.fields:
            yield _group_coverage(self._stats.online_error)


def _family(item: Declared) -> Metric:
    name = PREFIX + item.name
    if item.kind == COUNTER:
        return CounterMetricFamily(name, item.doc, value=item.value)
    if item.kind == GAUGE:
        return GaugeMetricFamily(name, item.doc, value=item.value)
    if item.kind == HISTOGRAM:
        return _histogram(name, item.doc, item.value)
    family = CounterMetricFamily(name, item.doc, labels=[item.label])
    for key, value in dict(item.value).items():
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, recorder: LatencyRecorder) -> Metric:
    bounds = [*(str(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    buckets = list(zip(bounds, recorder.bucket_counts(), strict=True))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=recorder.sum_s)


def _online_error(online: OnlineError) -> Metric:
    family = SummaryMetricFamily(
        PREFIX + "forecast_abs_error",
        "Absolute error of published forecasts once the actual arrives, by steps ahead",
        labels=["steps_ahead"],
    )
    counts, sums = online.abs_error_count.copy(), online.abs_error_sum.copy()
    for step, (count, total) in enumerate(zip(counts, sums, strict=True), start=1):
        family.add_metric([str(step)], count_value=int(count), sum_value=float(total))
    return family


def serve_metrics(
    stats: ServeStats, port: int | None, host: str = "127.0.0.1"
) -> CollectorRegistry:
    """A registry exposing ``stats``; served over HTTP on ``host:port`` unless port is None."""
    registry = CollectorRegistry()
    registry.register(ServeCollector(stats))
    if port is not None:
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise _port_error(host, port, err) from err
    return registry


def require_free_port(host: str, port: int) -> None:
    """Fail now, with the settings to change, if the endpoint could not listen later."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise _port_error(host, port, err) from err


def _port_error(host: str, port: int, err: OSError) -> MetricsPortError:
    return MetricsPortError(
        f"cannot serve metrics on {host}:{port}: {err.strerror}. Set "
        "ROLLCAST_METRICS_PORT to a free port (0 turns the endpoint off), or "
        "ROLLCAST_METRICS_HOST to an address of this machine"
    )


def _online_coverage(online: OnlineError) -> Metric:
    family = GaugeMetricFamily(
        PREFIX + "interval_coverage",
        "Share of actuals inside the interval published with their forecast, by level and "
        "steps ahead (version-2 messages of a calibrated model)",
        labels=["level", "steps_ahead"],
    )
    covered, scored = online.covered.copy(), online.interval_scored.copy()
    for k, level in enumerate(online.levels):
        for step, count in enumerate(scored, start=1):
            if count:
                family.add_metric([f"{level:g}", str(step)], float(covered[k, step - 1] / count))
    return family


def _group_coverage(online: OnlineError) -> Metric:
    family = GaugeMetricFamily(
        PREFIX + "interval_group_coverage",
        "Share of actuals inside the interval published with their forecast, by group of "
        "series (ROLLCAST_INTERVAL_GROUP_FIELDS) and level, every step ahead together",
        labels=["group", "level"],
    )
    for group, scored in list(online.group_scored.items()):
        covered = online.group_covered[group]
        for k, level in enumerate(online.levels):
            family.add_metric([group, f"{level:g}"], float(covered[k] / scored))
    return family

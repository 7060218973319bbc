"""The rolling forecast loop: observations in, one forecast per series per new step out.

Each poll is one micro-batch::

    triage → dead letters → update rolling windows → one batched model call
           → publish forecasts → wait for the broker's acks → commit input offsets

Offsets are committed only after every forecast and dead letter they caused is acknowledged,
so delivery is at-least-once: after a crash, the uncommitted polls are read and forecast again
(at most one poll, ``max_poll_records`` records per member, is repeated).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.config import KafkaSettings, MlflowSettings, ServeSettings, StoreSettings
from pipeline.kafka_io import Publisher, StreamSource
from pipeline.model import Forecaster
from pipeline.progress import Progress
from pipeline.records import (
    DEFAULT_MAX_RECORD_BYTES,
    LATE,
    MISSING_CHANNEL,
    DeadLetter,
    Forecast,
    Observation,
    RawRecord,
    triage,
)
from pipeline.train import predict
from pipeline.windows import Append, RollingWindow, freq_to_ms

if TYPE_CHECKING:
    from pipeline.registry import RegisteredForecaster

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
FORECASTING = (Append.ACCEPTED, Append.FILLED_GAP, Append.RESTARTED)


class Source(Protocol):
    def poll(self, timeout_s: float = ...) -> list[RawRecord]: ...
    def commit(self, records: list[RawRecord]) -> None: ...


class Sink(Protocol):
    def send_forecast(self, forecast: Forecast) -> None: ...
    def send_dead_letter(self, dead: DeadLetter) -> None: ...
    def flush(self, timeout_s: float = ...) -> int: ...


@dataclass
class ServeStats:
    records_in: int = 0
    forecasts_out: int = 0
    duplicates: int = 0
    evicted_series: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    series_forecast: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "forecasts_out": self.forecasts_out,
            "duplicates": self.duplicates,
            "evicted_series": self.evicted_series,
            "dead_letters": dict(self.dead_letters),
            "series_forecast": len(self.series_forecast),
        }


@dataclass(frozen=True)
class ForecastRequest:
    series: str
    issued_at_ms: int
    window: np.ndarray  # (L, C)


class RollingForecaster:
    """Per-series rolling windows and the batched forecast step; no I/O of its own."""

    def __init__(self, forecaster: RegisteredForecaster, max_gap: int, max_series: int) -> None:
        self.forecaster = forecaster
        self.max_gap, self.max_series = max_gap, max_series
        self.windows: OrderedDict[str, RollingWindow] = OrderedDict()
        self.step_ms = freq_to_ms(self.model.config.freq)

    @property
    def model(self) -> Forecaster:
        return self.forecaster.model

    def observe(
        self, record: RawRecord, obs: Observation, stats: ServeStats
    ) -> ForecastRequest | DeadLetter | None:
        """Add one observation to its series' window; say what it asks for."""
        channels = self.model.config.channels
        missing = [c for c in channels if c not in obs.values]
        if missing:
            return DeadLetter(record, MISSING_CHANNEL, f"the model needs channels {missing}")
        window = self._window(obs.series, stats)
        outcome = window.append(obs.ts_ms, np.array([obs.values[c] for c in channels], np.float32))
        if outcome is Append.LATE:
            return DeadLetter(
                record, LATE, f"older than the newest step held ({window.last_ts_ms} ms)"
            )
        if outcome is Append.DUPLICATE:
            stats.duplicates += 1
        if outcome in FORECASTING and window.is_whole:
            return ForecastRequest(obs.series, window.last_ts_ms or obs.ts_ms, window.window())
        return None

    def _window(self, series_id: str, stats: ServeStats) -> RollingWindow:
        window = self.windows.get(series_id)
        if window is not None:
            self.windows.move_to_end(series_id)
            return window
        if len(self.windows) >= self.max_series:
            self.windows.popitem(last=False)  # least recently seen
            stats.evicted_series += 1
        config = self.model.config
        window = RollingWindow(config.lookback, config.n_channels, self.step_ms, self.max_gap)
        self.windows[series_id] = window
        return window

    def forecast(self, requests: list[ForecastRequest]) -> list[Forecast]:
        """One batched model call for every request."""
        if not requests:
            return []
        preds = predict(self.model, np.stack([r.window for r in requests]))  # (B, H, C)
        config = self.model.config
        return [
            Forecast(
                series=r.series,
                issued_at_ms=r.issued_at_ms,
                model_name=self.forecaster.name,
                model_version=self.forecaster.version,
                freq=config.freq,
                step_ms=self.step_ms,
                channels=config.channels,
                values=pred.tolist(),
            )
            for r, pred in zip(requests, preds, strict=True)
        ]


def serve_batch(
    records: list[RawRecord],
    rolling: RollingForecaster,
    sink: Sink,
    stats: ServeStats,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> None:
    """Handle one poll; on return every output it caused is acknowledged by the broker."""
    accepted, dead = triage(records, max_record_bytes)
    requests: list[ForecastRequest] = []
    for record, obs in accepted:
        outcome = rolling.observe(record, obs, stats)
        if isinstance(outcome, DeadLetter):
            dead.append(outcome)
        elif outcome is not None:
            requests.append(outcome)
    for letter in dead:
        sink.send_dead_letter(letter)
        stats.dead_letters[letter.reason] += 1
    for forecast in rolling.forecast(requests):
        sink.send_forecast(forecast)
        stats.series_forecast.add(forecast.series)
    sink.flush()
    stats.records_in += len(records)
    stats.forecasts_out += len(requests)


def run_serve(
    source: Source,
    sink: Sink,
    rolling: RollingForecaster,
    should_stop: Callable[[ServeStats, bool], bool],
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> ServeStats:
    """Serve until ``should_stop(stats, last_poll_was_empty)`` says so."""
    stats, progress = ServeStats(), Progress("serve", logger=logger)
    while True:
        records = source.poll(POLL_TIMEOUT_S)
        if records:
            serve_batch(records, rolling, sink, stats, max_record_bytes)
            source.commit(records)
            progress.advance(len(records), f"{stats.forecasts_out} forecasts")
        if should_stop(stats, not records):
            break
    progress.finish(
        f"{stats.forecasts_out} forecasts, {sum(stats.dead_letters.values())} dead letters"
    )
    return stats


def serve_from_settings(
    kafka: KafkaSettings,
    store: StoreSettings,
    mlflow_settings: MlflowSettings,
    serve: ServeSettings,
    max_records: int | None = None,
) -> tuple[ServeStats, RegisteredForecaster]:
    """The serve stage wired to Kafka and the registry's champion.

    Runs until ``max_records`` are served, ``serve.serve_idle_s`` pass without a record,
    or forever when both are None.
    """
    from pipeline import registry  # MLflow stays out of the loop's import path

    registry.configure(mlflow_settings, store)
    champion = registry.load_champion(mlflow_settings)
    logger.info("serving %s version %s", champion.name, champion.version)
    rolling = RollingForecaster(champion, store.max_gap, serve.max_series)
    source = StreamSource(
        kafka, kafka.topic_observations, serve.serve_group, serve.max_poll_records
    )
    publisher = Publisher(kafka)
    try:
        stats = run_serve(source, publisher, rolling, _stop_rule(max_records, serve.serve_idle_s))
    finally:
        source.close()
        publisher.close()
    return stats, champion


def _stop_rule(max_records: int | None, idle_s: float | None) -> Callable[[ServeStats, bool], bool]:
    idle_since = time.monotonic()

    def should_stop(stats: ServeStats, idle: bool) -> bool:
        nonlocal idle_since
        now = time.monotonic()
        if not idle:
            idle_since = now
        if max_records is not None and stats.records_in >= max_records:
            return True
        return idle_s is not None and now - idle_since >= idle_s

    return should_stop

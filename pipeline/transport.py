"""The transport port: what the ingest and serve loops need of a stream, and nothing more.

The loops and the wiring depend on these protocols only. :mod:`pipeline.kafka_io` is the Kafka
adapter; :mod:`pipeline.inmemory` is an in-memory one for unit tests. Another transport is one
new module with a class like theirs.

Delivery contract, whatever the adapter: a :class:`Source` never commits on its own (callers
commit after their output is durable), and :meth:`Sink.flush` returns only once every record
sent so far is acknowledged, raising if one was not.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.progress import Progress
from pipeline.records import (
    DeadLetter,
    Forecast,
    ForecastBatch,
    Observation,
    RawRecord,
    forecast_to_bytes,
    observation_to_bytes,
)

logger = logging.getLogger(__name__)

# Replay flushes this often, bounding the records in flight and pacing the progress lines.
REPLAY_FLUSH_EVERY = 5000


@dataclass(frozen=True)
class Topics:
    """The three topics of the data path."""

    observations: str = "observations"
    forecasts: str = "forecasts"
    deadletter: str = "deadletter"

    def all(self) -> list[str]:
        return [self.observations, self.forecasts, self.deadletter]


# Record headers as Kafka carries them: (name, bytes), in order, names may repeat.
Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Rebalance:
    """What a member that keeps state per partition needs when its group rebalances.

    ``rewind``: how many records before the committed offset of each partition it gains are read
    again, marked ``rewound``, to rebuild that state. ``on_lost``: told which partitions went to
    another member, so their state can be dropped.
    """

    rewind: int = 0
    on_lost: Callable[[set[int]], None] | None = None


# A member that keeps nothing per partition (ingest): no rewind, nothing to drop.
STATELESS = Rebalance()


class Source(Protocol):
    """One consumer-group member reading one topic from its earliest uncommitted record."""

    def poll(self, timeout_s: float = ...) -> list[RawRecord]: ...
    def commit(self, records: Sequence[RawRecord]) -> None: ...
    def assigned(self) -> bool: ...
    def partitions(self) -> int: ...
    def lag(self) -> int: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """Sends forecasts, dead letters and observations to their topics."""

    def send_forecast(self, forecast: Forecast) -> None: ...
    def send_forecasts(self, batch: ForecastBatch) -> None: ...
    def send_dead_letter(self, dead: DeadLetter) -> None: ...
    def send_observation(self, obs: Observation) -> None: ...
    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = ...
    ) -> None: ...
    def flush(self, timeout_s: float = ...) -> int: ...
    def close(self) -> None: ...


class TopicSink(ABC):
    """The typed sends of a :class:`Sink`, each one :meth:`send_raw` of its wire format.

    An adapter subclasses it, sets ``topics`` (and ``forecast_headers``, sent with every
    forecast) and implements ``send_raw``, ``flush`` and ``close``; what key and bytes each kind of
    record goes out with is then the same whatever the transport.
    """

    topics: Topics
    forecast_headers: Headers | None = None

    def send_forecast(self, forecast: Forecast) -> None:
        key, value = forecast.series.encode(), forecast_to_bytes(forecast)
        self.send_raw(self.topics.forecasts, key, value, self.forecast_headers)

    def send_forecasts(self, batch: ForecastBatch) -> None:
        for key, value in batch.messages():
            self.send_raw(self.topics.forecasts, key, value, self.forecast_headers)

    def send_dead_letter(self, dead: DeadLetter) -> None:
        self.send_raw(self.topics.deadletter, dead.key(), dead.value(), dead.headers())

    def send_observation(self, obs: Observation) -> None:
        key, value = obs.series.encode(), observation_to_bytes(obs)
        self.send_raw(self.topics.observations, key, value)

    @abstractmethod
    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Send exact bytes; acknowledged by the next :meth:`Sink.flush`."""


class Transport(Protocol):
    """Makes sources and sinks on one cluster, and administers its topics."""

    topics: Topics

    def source(
        self, topic: str, group: str, max_poll_records: int = ..., rebalance: Rebalance = ...
    ) -> Source: ...
    def sink(self) -> Sink: ...
    def create_topics(self, names: Iterable[str], partitions: int) -> list[str]: ...


def replay(sink: Sink, observations: Iterable[Observation], total: int | None = None) -> int:
    """Produce observations in order, showing progress; return how many were acknowledged."""
    progress = Progress("replay", total, logger)
    sent = 0
    for obs in observations:
        sink.send_observation(obs)
        sent += 1
        if sent % REPLAY_FLUSH_EVERY == 0:
            progress.advance(sink.flush())
    progress.advance(sink.flush())
    progress.finish()
    return sent

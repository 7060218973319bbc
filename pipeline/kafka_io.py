"""The only module that imports kafka: clients, topic admin, commits, publishing.

Consumers never auto-commit. Callers commit explicitly with :meth:`StreamSource.commit`
after their output is durable (ingest: the Parquet write; serve: the broker's acknowledgement
of the forecasts), which gives at-least-once delivery.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from pipeline import RollcastError
from pipeline.config import KafkaSettings
from pipeline.progress import Progress
from pipeline.records import (
    DeadLetter,
    Forecast,
    Observation,
    RawRecord,
    forecast_to_bytes,
    observation_to_bytes,
)

logger = logging.getLogger(__name__)

# Batching a few milliseconds of sends multiplies producer throughput for a negligible delay.
PRODUCER_LINGER_MS = 5
# Replay flushes this often, bounding the records in flight and pacing the progress lines.
REPLAY_FLUSH_EVERY = 5000
# How long to try each bootstrap address before saying no broker answers.
CONNECT_TIMEOUT_S = 3.0
# Long enough for a slow train step between polls, short enough to notice a dead consumer.
SESSION_TIMEOUT_MS = 10_000


class BrokerUnavailableError(RollcastError):
    """No Kafka bootstrap servers are configured, or none answer."""


def bootstrap_servers(settings: KafkaSettings) -> str:
    """The configured servers, or an error saying how to start a broker."""
    if not settings.bootstrap_servers:
        raise BrokerUnavailableError(
            "no Kafka broker configured: set ROLLCAST_BOOTSTRAP_SERVERS=host:port, "
            "or start the embedded one with `rollcast broker` and use the address it prints"
        )
    return settings.bootstrap_servers


def _check_reachable(servers: str) -> None:
    """Fail fast: kafka-python itself waits 30 s before reporting an unreachable bootstrap."""
    for address in servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            socket.create_connection(
                (host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S
            ).close()
            return
        except (OSError, ValueError):
            continue
    raise BrokerUnavailableError(
        f"no Kafka broker answers at {servers}: is it running? (`rollcast broker` starts one)"
    )


def _client_options(settings: KafkaSettings) -> dict[str, Any]:
    servers = bootstrap_servers(settings)
    _check_reachable(servers)
    return {
        "bootstrap_servers": servers,
        "client_id": settings.client_id,
        **settings.security_options(),
    }


def create_topics(settings: KafkaSettings, names: Iterable[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = KafkaAdminClient(**_client_options(settings))
    created = []
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
                created.append(name)
            except TopicAlreadyExistsError:
                logger.debug("topic %s already exists", name)
    finally:
        admin.close()
    return created


def make_producer(settings: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(acks="all", linger_ms=PRODUCER_LINGER_MS, **_client_options(settings))


def _to_raw(message: Any) -> RawRecord:
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=message.timestamp,
        headers=tuple(message.headers or ()),
    )


class StreamSource:
    """A consumer-group member reading one topic from the earliest uncommitted offset."""

    def __init__(
        self, settings: KafkaSettings, topic: str, group_id: str, max_poll_records: int = 2000
    ) -> None:
        self._consumer = KafkaConsumer(
            topic,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            **_client_options(settings),
        )

    def poll(self, timeout_s: float = 1.0) -> list[RawRecord]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        # Partition order is the only order Kafka promises, and a series lives in one partition:
        # keep it (producer timestamps may run backwards).
        return [_to_raw(m) for messages in batches.values() for m in messages]

    def assigned(self) -> bool:
        """Whether the group has given this member its partitions yet."""
        return bool(self._consumer.assignment())

    def commit(self, records: Sequence[RawRecord]) -> None:
        """Commit past the newest of ``records`` in each partition."""
        newest: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            newest[tp] = max(newest.get(tp, -1), record.offset)
        if newest:
            self._consumer.commit(
                {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in newest.items()}
            )

    def close(self) -> None:
        # A consumer that leaves without closing makes the next group join wait out its session.
        self._consumer.close(autocommit=False)


class Publisher:
    """Sends forecasts, dead letters and observations; :meth:`flush` waits for every ack."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer = make_producer(settings)
        self._pending: list[Any] = []

    def send_forecast(self, forecast: Forecast) -> None:
        self.send_raw(
            self._settings.topic_forecasts, forecast.series.encode(), forecast_to_bytes(forecast)
        )

    def send_dead_letter(self, dead: DeadLetter) -> None:
        self.send_raw(
            self._settings.topic_deadletter, dead.record.key, dead.record.value, dead.headers()
        )

    def send_observation(self, obs: Observation) -> None:
        self.send_raw(
            self._settings.topic_observations, obs.series.encode(), observation_to_bytes(obs)
        )

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send exact bytes (a replayed dead letter, say); acknowledged by the next flush."""
        self._pending.append(self._producer.send(topic, key=key, value=value, headers=headers))

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for the broker to acknowledge every send; raise if one failed; return the count."""
        self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.get(timeout=timeout_s)
            except KafkaError as err:
                raise BrokerUnavailableError(
                    f"the broker did not acknowledge a record: {err}"
                ) from err
        return len(pending)

    def close(self) -> None:
        self._producer.close()


def read_topic(
    settings: KafkaSettings, topic: str, expected: int, timeout_s: float = 30.0
) -> list[RawRecord]:
    """Read a topic from its start, without a group, until ``expected`` records or the timeout.

    Counting records, rather than comparing with end offsets, is deliberate: some brokers
    (the embedded one) report the last batch's base offset as the end.
    """
    consumer = KafkaConsumer(enable_auto_commit=False, **_client_options(settings))
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500)
            records += [_to_raw(m) for messages in batches.values() for m in messages]
        return records
    finally:
        consumer.close(autocommit=False)


def replay(
    publisher: Publisher, observations: Iterable[Observation], total: int | None = None
) -> int:
    """Produce observations in order, showing progress; return how many the broker acknowledged."""
    progress = Progress("replay", total, logger)
    sent = 0
    for obs in observations:
        publisher.send_observation(obs)
        sent += 1
        if sent % REPLAY_FLUSH_EVERY == 0:
            progress.advance(publisher.flush())
    progress.advance(publisher.flush())
    progress.finish()
    return sent

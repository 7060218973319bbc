"""The Kafka adapter of the transport port (:mod:`pipeline.transport`); the only module that
imports kafka.

:class:`KafkaTransport` is the one entry point: it makes the consumers (:class:`StreamSource`),
the producer (:class:`Publisher`) and the admin client. Consumers never auto-commit. Callers
commit explicitly with :meth:`StreamSource.commit` after their output is durable (ingest: the
Parquet write; serve: the broker's acknowledgement of the forecasts): at-least-once delivery.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.admin import NewTopic
from kafka.errors import (
    IllegalStateError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    TopicAlreadyExistsError,
    UnknownProducerIdError,
)
from kafka.partitioner import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

from pipeline import ConfigurationError, OutageError, shutdown
from pipeline.config import KafkaSettings
from pipeline.records import RawRecord
from pipeline.transport import STATELESS, Headers, Rebalance, Topics, TopicSink

logger = logging.getLogger(__name__)

# Batching a few milliseconds of sends multiplies producer throughput for a negligible delay.
PRODUCER_LINGER_MS = 5
# Bigger batches than kafka-python's 16 KiB default: a forecast is about 1 KB, and per-batch work
# in the client dominated. 256 KiB measured 2.7x the send rate of 1 KB records (BENCHMARKS.md).
PRODUCER_BATCH_BYTES = 256 * 1024
# How long to try each bootstrap address before saying no broker answers.
CONNECT_TIMEOUT_S = 3.0
# Long enough for a slow train step between polls, short enough to notice a dead consumer.
SESSION_TIMEOUT_MS = 10_000
SERVED_BY_HEADER = "served-by"
# A broker outage is waited out, sending again with backoff up to this long between tries...
MAX_BACKOFF_S = 30.0
# ...for this long in all, after which the process gives up (a supervisor restarts it).
MAX_OUTAGE_S = 3600.0
# A stop request ends a wait for acknowledgements within this long: well inside the 10 s
# between SIGTERM and SIGKILL of `docker stop`.
STOP_CHECK_S = 0.5
# How long a send may block for a topic's metadata or buffer space (kafka-python's default is
# 60 s, longer than a stop may take); a send that times out is sent again by the next flush.
PRODUCER_MAX_BLOCK_MS = 5_000
# Bounds on leaving: a commit, a clean producer close, a consumer's leaving its group. Each must
# end within a stop's grace period even when the broker is gone.
COMMIT_TIMEOUT_MS = 5_000
CLOSE_TIMEOUT_S = 5.0
CONSUMER_CLOSE_TIMEOUT_MS = 2_000
# A producer's sender thread, stopped without sending, is gone within this long.
SENDER_STOP_S = 2.0
# Errors after which a producer's id is unknown to the broker (one that came back empty, say):
# its sends fail until a new producer, with a new id, sends them.
PRODUCER_ID_ERRORS = (
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
    InvalidProducerEpochError,
)


class BrokerUnavailableError(OutageError):
    """No Kafka bootstrap servers are configured, or none answer."""


class BrokerNotConfiguredError(BrokerUnavailableError, ConfigurationError):
    """No bootstrap servers are set at all: a configuration error, not an outage."""


def bootstrap_servers(settings: KafkaSettings) -> str:
    """The configured servers, or an error saying how to start a broker."""
    if not settings.bootstrap_servers:
        raise BrokerNotConfiguredError(
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


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """What every client of the cluster ``settings`` names is made with, once a broker answers."""
    servers = bootstrap_servers(settings)
    _check_reachable(servers)
    return {
        "bootstrap_servers": servers,
        "client_id": settings.client_id,
        **settings.security_options(),
    }


class KafkaTransport:
    """Sources, sinks and topic admin on the cluster ``settings`` names.

    Fails at once, with the way out, when no bootstrap servers are configured; every client it
    makes checks that one of them answers before kafka-python would wait 30 s to say so.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        bootstrap_servers(settings)
        self.settings = settings
        self.topics = topics_of(settings)

    def source(
        self, topic: str, group: str, max_poll_records: int = 2000, rebalance: Rebalance = STATELESS
    ) -> StreamSource:
        consumer = make_consumer(self.settings, group, max_poll_records)
        return StreamSource(consumer, topic, rebalance)

    def sink(self) -> Publisher:
        return Publisher(self.settings)

    def create_topics(self, names: Iterable[str], partitions: int) -> list[str]:
        return _create_topics(self.settings, names, partitions)


def topics_of(settings: KafkaSettings) -> Topics:
    """The topics of the data path, as ``settings`` names them."""
    return Topics(settings.topic_observations, settings.topic_forecasts, settings.topic_deadletter)


def _create_topics(settings: KafkaSettings, names: Iterable[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    admin = KafkaAdminClient(**client_options(settings))
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


class KeyCachingPartitioner(DefaultPartitioner):
    """The Java client's murmur2 partitioning, remembered per key and partition count.

    Serve sends one record per series per step: hashing each key once, not on every send,
    saves about a sixth of kafka-python's cost per record.
    """

    def __init__(self, max_keys: int = 200_000) -> None:
        self._max_keys = max_keys
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: Any,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return int(
                super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            )
        cache_key = (topic, serialized_key, len(partitions))
        found = self._cache.get(cache_key)
        if found is None:
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            self._cache[cache_key] = found
        return found


def make_producer(settings: KafkaSettings) -> KafkaProducer:
    """An idempotent producer (kafka-python's default): a retried send is not stored twice, and
    sends to a partition keep their order. Delivery stays at-least-once: a producer that can no
    longer send is replaced, and the replacement sends again what was not acknowledged."""
    return KafkaProducer(
        acks="all",
        max_block_ms=PRODUCER_MAX_BLOCK_MS,
        linger_ms=PRODUCER_LINGER_MS,
        batch_size=PRODUCER_BATCH_BYTES,
        partitioner=KeyCachingPartitioner(),
        **client_options(settings),
    )


def make_consumer(settings: KafkaSettings, group_id: str, max_poll_records: int) -> KafkaConsumer:
    """A group member that never commits on its own and starts a new group at the earliest."""
    return KafkaConsumer(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **client_options(settings),
    )


def to_raw_record(message: Any, rewound: bool = False) -> RawRecord:
    """A consumed kafka-python message as the loops take it."""
    topic, partition, offset = message.topic, message.partition, message.offset
    headers = tuple(message.headers or ())
    return RawRecord(
        topic, partition, offset, message.key, message.value, message.timestamp, headers, rewound
    )


class StreamSource:
    """A consumer-group member (``consumer``) reading one topic from the earliest uncommitted
    offset.

    With ``rebalance.rewind > 0``, each partition this member gains is first re-read from up to
    ``rewind`` records before its committed offset. Those records come back marked ``rewound``:
    the caller rebuilds state from them and publishes nothing. ``rebalance.on_lost`` is told which
    partitions went to another member after a rebalance.
    """

    def __init__(
        self, consumer: KafkaConsumer, topic: str, rebalance: Rebalance = STATELESS
    ) -> None:
        self._consumer = consumer
        self._rewind, self._on_lost = rebalance.rewind, rebalance.on_lost
        self._owned: set[TopicPartition] = set()
        self._resume: dict[int, int] = {}  # partition -> first offset not rewound
        self._next: dict[TopicPartition, int] = {}  # partition -> next offset to read
        self._new_assignment: set[TopicPartition] | None = None  # set by the rebalance listener
        self._lapsed: set[TopicPartition] = set()  # lost with the membership, maybe back soon
        self._outage_since: float | None = None  # when polls began to fail, while they do
        self._consumer.subscribe([topic], listener=_AssignmentListener(self))

    def poll(self, timeout_s: float = 1.0) -> list[RawRecord]:
        """The records fetched within ``timeout_s``; none while the broker cannot be reached."""
        batches = self._fetch(timeout_s)
        assignment, self._new_assignment = self._new_assignment, None
        if assignment is not None:
            rewound = self._take_assignment(assignment)
            # Fetched before the seek back: they are read again, in order, after the rewind.
            batches = {tp: ms for tp, ms in batches.items() if tp not in rewound}
        # Partition order is the only order Kafka promises, and a series lives in one partition:
        # keep it (producer timestamps may run backwards).
        records: list[RawRecord] = []
        for tp, messages in batches.items():
            resume = self._resume.get(tp.partition, -1)
            if messages[0].offset >= resume:
                records += [to_raw_record(m) for m in messages]
            else:
                records += [to_raw_record(m, m.offset < resume) for m in messages]
            self._next[tp] = messages[-1].offset + 1
        return records

    def _fetch(self, timeout_s: float) -> dict[TopicPartition, list[Any]]:
        """One consumer poll. A retriable error (the broker or the group's coordinator gone) is
        an outage: said once, then polls come back empty, a second apart, until it answers."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as err:
            if not err.retriable:
                raise
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                logger.warning("broker unreachable (%s): retrying until it answers", err)
            shutdown.wait(min(timeout_s, 1.0))
            return {}
        if self._outage_since is not None:
            gone_s, self._outage_since = time.monotonic() - self._outage_since, None
            logger.info("broker answering again after %.0f s", gone_s)
        return batches

    def assigned(self) -> bool:
        """Whether the group has given this member its partitions yet."""
        return bool(self._consumer.assignment())

    def partitions(self) -> int:
        """How many partitions this member owns now."""
        return len(self._owned & self._consumer.assignment())  # none while the member rejoins

    def lag(self) -> int:
        """Records between what was read and each partition's high watermark, as last fetched."""
        behind, assigned = 0, self._consumer.assignment()  # none while the member rejoins
        for tp, next_offset in self._next.items():
            highwater = self._consumer.highwater(tp) if tp in assigned else None
            if highwater is not None and tp in self._owned:
                behind += max(highwater - next_offset, 0)
        return behind

    def commit(self, records: Sequence[RawRecord]) -> None:
        """Commit past the newest of ``records`` in each partition (rewound ones are already)."""
        newest: dict[TopicPartition, int] = {}
        for record in records:
            if record.rewound:
                continue
            tp = TopicPartition(record.topic, record.partition)
            newest[tp] = max(newest.get(tp, -1), record.offset)
        if not newest:
            return
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in newest.items()},
                timeout_ms=COMMIT_TIMEOUT_MS,
            )
        except KafkaError as err:
            # The outputs are acknowledged: a record whose commit is lost is read again, and
            # handled again, by whoever reads its partition next (at-least-once).
            logger.warning("offset commit failed, records may be read twice: %r", err)

    def close(self) -> None:
        # A consumer that leaves without closing makes the next group join wait out its session.
        self._consumer.close(autocommit=False, timeout_ms=CONSUMER_CLOSE_TIMEOUT_MS)

    def _take_assignment(self, assigned: set[TopicPartition]) -> set[TopicPartition]:
        """Act on a new assignment in the polling thread; return the partitions rewound.

        A partition lost with this member's membership (a broker restart, a session that
        expired) and assigned to it again keeps its state, unless another member read it
        meanwhile (committed past what this one read): then it is lost and gained again.
        """
        moved = {tp for tp in self._lapsed & assigned if self._read_elsewhere(tp)}
        self._lapsed = set()
        lost, gained = (self._owned - assigned) | moved, (assigned - self._owned) | moved
        self._owned = set(assigned)
        for tp in lost:
            self._resume.pop(tp.partition, None)
            self._next.pop(tp, None)
        if lost and self._on_lost is not None:
            self._on_lost({tp.partition for tp in lost})
        logger.info(
            "partitions now %s (gained %s, lost %s)",
            sorted(tp.partition for tp in assigned),
            sorted(tp.partition for tp in gained),
            sorted(tp.partition for tp in lost),
        )
        return {tp for tp in gained if self._rewind_partition(tp)}

    def _read_elsewhere(self, tp: TopicPartition) -> bool:
        """Whether the group committed ``tp`` past what this member read of it."""
        try:
            committed = self._consumer.committed(tp, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as err:
            logger.warning("cannot read the committed offset of %s (%r): rebuilding it", tp, err)
            return True
        return committed is not None and committed > self._next.get(tp, 0)

    def _rewind_partition(self, tp: TopicPartition) -> bool:
        if not self._rewind:
            return False
        try:
            committed = self._consumer.committed(tp, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as err:
            logger.warning("cannot read the committed offset of %s (%r): not rewound", tp, err)
            return False
        if committed is None or committed == 0:
            return False
        self._resume[tp.partition] = committed
        self._consumer.seek(tp, max(committed - self._rewind, 0))
        return True


class _AssignmentListener(ConsumerRebalanceListener):
    """Hands each new assignment to the polling thread.

    kafka-python calls this from its network thread, where blocking calls (such as reading the
    committed offsets) are not allowed and the serve loop's state must not be touched. Offsets
    are committed after every batch, so a revocation has nothing to save.
    """

    def __init__(self, source: StreamSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._source._new_assignment = set(assigned)

    def on_partitions_lost(self, lost: Any) -> None:
        # The member rejoins at once (the next assignment says what it owns): its state is kept
        # until then, and for what comes back to it (see StreamSource._take_assignment).
        self._source._lapsed |= set(lost)


# One send as it was made: what is sent again when the broker fails it.
Sent = tuple[str, bytes | None, bytes | None, Headers | None]


class Publisher(TopicSink):
    """Sends forecasts, dead letters and observations; :meth:`flush` waits for every ack.

    A broker outage is waited out and what it failed sent again; a producer that can never send
    again (one a broker that came back empty does not know) is replaced. A stop request
    (:mod:`pipeline.shutdown`) ends any wait: :meth:`flush` raises
    :class:`~pipeline.shutdown.StopRequestedError`, and :meth:`close` abandons what is
    unacknowledged.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.topics = topics_of(settings)
        self._settings = settings
        self._producer: KafkaProducer | None = make_producer(settings)
        # Each send's future (None: not handed to a producer yet) and what was sent.
        self._pending: list[tuple[Any | None, Sent]] = []
        self._unsent = 0  # of the pending, how many have no future: later sends queue behind
        self.max_outage_s = MAX_OUTAGE_S
        # Names this process on every forecast, so a consumer can tell which member made it.
        self.forecast_headers = [
            (SERVED_BY_HEADER, f"{socket.gethostname()}:{os.getpid()}".encode())
        ]

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Send exact bytes (a replayed dead letter, say); acknowledged by the next flush."""
        sent = (topic, key, value, headers)
        future = self._send(sent)
        self._unsent += future is None
        self._pending.append((future, sent))

    def _send(self, sent: Sent) -> Any | None:
        """The send's future; None when no producer takes it now (the next flush sends it)."""
        if self._producer is None or self._unsent:
            return None
        topic, key, value, headers = sent
        try:
            return self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaTimeoutError:  # no metadata, or a full buffer, in PRODUCER_MAX_BLOCK_MS
            return None
        except IllegalStateError as err:  # the producer was closed under us
            self._discard_producer(err)
            return None

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait until the broker has acknowledged every send; return the count.

        A broker that stalls or is gone is waited for, with backoff and a log line per try,
        and what it failed to take is sent again (by a new producer if the old one can no
        longer send): the caller commits nothing until this returns, so an outage delays the
        stream but loses nothing. Raises :class:`BrokerUnavailableError` after
        ``max_outage_s``, and :class:`~pipeline.shutdown.StopRequestedError` as soon as a stop is
        requested while sends are unacknowledged.
        """
        count, outage, replaced = len(self._pending), OutageClock(self.max_outage_s), 0
        while True:
            self._await_acks(timeout_s)
            unacknowledged, errors = self._unacknowledged()
            if not unacknowledged:
                self._pending, self._unsent = [], 0
                return count
            shutdown.abandon_if_requested(f"{len(unacknowledged)} unacknowledged sends")
            if self._replace_if_broken(errors):
                self._send_again(unacknowledged)
                replaced += 1
                if replaced == 1:  # a new producer sends at once; a second waits its turn
                    continue
            if shutdown.wait(outage.next_wait(len(unacknowledged), count, errors)):
                shutdown.abandon_if_requested(f"{len(unacknowledged)} unacknowledged sends")
            self._send_again([sent for future, sent in self._pending if _failed(future)])

    def _await_acks(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the producer's acks, in slices, ending on a stop."""
        deadline = time.monotonic() + timeout_s
        while self._producer is not None and not shutdown.requested():
            try:
                self._producer.flush(timeout=min(STOP_CHECK_S, max(deadline - time.monotonic(), 0)))
                return
            except KafkaTimeoutError:
                if time.monotonic() >= deadline:
                    return
            except KafkaError as err:
                logger.warning("waiting for the broker's acknowledgements failed: %r", err)
                return

    def _unacknowledged(self) -> tuple[list[Sent], list[BaseException]]:
        """What the broker has not acknowledged yet, and the errors of the sends it failed."""
        unacknowledged, errors = [], []
        for future, sent in self._pending:
            if future is None or not future.is_done:
                unacknowledged.append(sent)
            elif future.failed():
                unacknowledged.append(sent)
                errors.append(future.exception)
        return unacknowledged, errors

    def _send_again(self, sends: list[Sent]) -> None:
        """Send ``sends`` anew; the pending sends not among them are still awaited."""
        again = {id(sent) for sent in sends}
        self._pending = [(f, s) for f, s in self._pending if id(s) not in again]
        self._unsent = sum(f is None for f, _ in self._pending)
        for topic, key, value, headers in sends:
            self.send_raw(topic, key, value, headers)

    def _replace_if_broken(self, errors: list[BaseException]) -> bool:
        """Replace a producer that can never send again; whether it was replaced."""
        fault = producer_fault(self._producer, errors)
        if fault is None:
            return False
        if self._producer is not None:
            self._discard_producer(fault)
        try:
            self._producer = make_producer(self._settings)
        except BrokerUnavailableError as err:
            logger.warning("no producer to send with: %s", err)
            return False
        logger.warning("producer reset after %r; rebuilt", fault)
        return True

    def _discard_producer(self, fault: BaseException) -> None:
        logger.debug("closing a producer that cannot send again: %r", fault)
        if self._producer is not None:
            close_producer(self._producer, 0.0)
        self._producer = None

    def close(self) -> None:
        """Close the producer; after a stop request, abandoning what is unacknowledged."""
        if self._producer is not None:
            close_producer(self._producer, 0.0 if shutdown.requested() else CLOSE_TIMEOUT_S)
            self._producer = None


def _failed(future: Any | None) -> bool:
    return future is None or (future.is_done and future.failed())


def producer_fault(
    producer: KafkaProducer | None, errors: list[BaseException]
) -> BaseException | None:
    """Why ``producer`` can never send again, or None if it can (or may, after an outage).

    kafka-python's idempotent producer stops sending for good once its transaction manager is
    in a fatal state (here: the embedded broker, restarted empty, refuses the epoch bump that
    recovers from an unknown producer id), and its sends fail with the producer-id errors.
    """
    if producer is None:
        return BrokerUnavailableError("no producer")
    manager = getattr(producer, "_transaction_manager", None)
    if manager is not None and manager.has_fatal_error():
        return manager.last_error or KafkaError("the producer is in a fatal state")
    return next((err for err in errors if isinstance(err, PRODUCER_ID_ERRORS)), None)


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close ``producer``, abandoning what it has not sent within ``timeout_s``.

    kafka-python's ``close(timeout)`` flushes first and raises when that times out, leaving its
    sender thread running: then the sender is stopped without sending (its pending sends fail),
    and the producer closed.
    """
    try:
        producer.close(timeout=timeout_s)
        return
    except KafkaError:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(SENDER_STOP_S)
    try:
        producer.close(timeout=0)
    except KafkaError as err:
        logger.warning("the producer did not close cleanly: %r", err)


class OutageClock:
    """How long a flush has waited for the broker, and how long to wait before the next try."""

    def __init__(self, max_outage_s: float) -> None:
        self.max_outage_s = max_outage_s
        self._started, self._tries = time.monotonic(), 0

    def next_wait(self, unacknowledged: int, sent: int, errors: list[BaseException]) -> float:
        """Seconds to wait before sending again, logged with what is wrong; raises
        :class:`BrokerUnavailableError` once the outage has lasted ``max_outage_s``."""
        self._tries += 1
        waited = time.monotonic() - self._started
        cause = f"{len(errors)} failed, the last with {errors[-1]!r}" if errors else "no answer"
        if waited > self.max_outage_s:
            raise BrokerUnavailableError(
                f"the broker acknowledged none of {unacknowledged} records in {waited:.0f} s "
                f"({cause})"
            )
        delay = min(2.0**self._tries, MAX_BACKOFF_S)
        logger.error(
            "the broker has not acknowledged %d of %d records for %.0f s (%s): trying again "
            "in %.0f s",
            unacknowledged,
            sent,
            waited,
            cause,
            delay,
        )
        return delay

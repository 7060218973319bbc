"""An in-memory transport: the port of :mod:`pipeline.transport` over Python lists.

For unit tests of the loops, which then run without a broker. It keeps the delivery contract:
sent records reach their topic only at :meth:`MemorySink.flush` (the acknowledgement), and a
group resumes from its last commit, re-reading up to ``rewind`` records marked ``rewound``.
One member per group: there are no rebalances.

>>> transport = MemoryTransport()
>>> sink = transport.sink()
>>> sink.send_raw("observations", b"a", b"{}")
>>> before = len(transport.messages("observations"))
>>> before, sink.flush(), len(transport.messages("observations"))
(0, 1, 1)
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from pipeline.records import RawRecord
from pipeline.transport import STATELESS, Headers, Rebalance, Topics, TopicSink


class MemoryTransport:
    """Topics as lists of partitions; committed offsets per (group, topic, partition)."""

    def __init__(self, topics: Topics | None = None, partitions: int = 1) -> None:
        self.topics = topics or Topics()
        self._partitions = partitions
        self._logs: dict[str, list[list[RawRecord]]] = {}
        self.committed: dict[tuple[str, str, int], int] = defaultdict(int)
        self.create_topics(self.topics.all(), partitions)

    def create_topics(self, names: Iterable[str], partitions: int) -> list[str]:
        created = [name for name in names if name not in self._logs]
        for name in created:
            self._logs[name] = [[] for _ in range(partitions)]
        return created

    def log(self, topic: str) -> list[list[RawRecord]]:
        """Every partition of ``topic``, created on first use as a broker would."""
        self.create_topics([topic], self._partitions)
        return self._logs[topic]

    def append(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence = ()
    ) -> None:
        partitions = self.log(topic)
        index = zlib.crc32(key) % len(partitions) if key is not None else 0
        records = partitions[index]
        stamp = int(time.time() * 1000)
        record = RawRecord(topic, index, len(records), key, value, stamp, tuple(headers))
        records.append(record)

    def source(
        self, topic: str, group: str, max_poll_records: int = 2000, rebalance: Rebalance = STATELESS
    ) -> MemorySource:
        """A member of ``group``. There are no rebalances: ``rebalance.on_lost`` is never told."""
        return MemorySource(self, topic, group, max_poll_records, rebalance.rewind)

    def sink(self) -> MemorySink:
        return MemorySink(self)

    def messages(self, topic: str) -> list[RawRecord]:
        """Every record acknowledged to ``topic`` so far, partition by partition, oldest first."""
        return [record for partition in self.log(topic) for record in partition]


class MemorySource:
    """A group member reading every partition of one topic."""

    def __init__(
        self, transport: MemoryTransport, topic: str, group: str, max_poll_records: int, rewind: int
    ) -> None:
        self._transport, self._topic, self._group = transport, topic, group
        self._max_poll_records = max_poll_records
        committed = [transport.committed[(group, topic, p)] for p in self._partition_ids()]
        self._resume = committed
        self._next = [max(offset - rewind, 0) for offset in committed]

    def _partition_ids(self) -> range:
        return range(len(self._transport.log(self._topic)))

    def poll(self, timeout_s: float = 0.0) -> list[RawRecord]:
        records: list[RawRecord] = []
        for p, log in enumerate(self._transport.log(self._topic)):
            take = log[self._next[p] : self._next[p] + self._max_poll_records - len(records)]
            records += [_rewound(r) if r.offset < self._resume[p] else r for r in take]
            self._next[p] += len(take)
        return records

    def commit(self, records: Sequence[RawRecord]) -> None:
        for record in records:
            if not record.rewound:
                key = (self._group, self._topic, record.partition)
                self._transport.committed[key] = max(
                    self._transport.committed[key], record.offset + 1
                )

    def assigned(self) -> bool:
        return True

    def partitions(self) -> int:
        return len(self._partition_ids())

    def lag(self) -> int:
        logs = self._transport.log(self._topic)
        return sum(len(log) - self._next[p] for p, log in enumerate(logs))

    def close(self) -> None:
        pass


def _rewound(record: RawRecord) -> RawRecord:
    return replace(record, rewound=True)


class MemorySink(TopicSink):
    """Holds sends until :meth:`flush`, which is when they reach their topics."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.topics = transport.topics
        self._transport = transport
        self._pending: list[tuple[str, bytes | None, bytes | None, Sequence]] = []

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        self._pending.append((topic, key, value, headers or ()))

    def flush(self, timeout_s: float = 0.0) -> int:
        pending, self._pending = self._pending, []
        for topic, key, value, headers in pending:
            self._transport.append(topic, key, value, headers)
        return len(pending)

    def close(self) -> None:
        pass

"""Reading a whole topic back from the broker, as the integration tests check what was published.

Test support only: no stage of Rollcast reads a topic from its start without a group.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.kafka_io import client_options, to_raw_record
from pipeline.records import RawRecord

# How long one poll waits for the next records while the expected ones are not all read.
POLL_S = 0.5


def read_topic(
    kafka_settings: KafkaSettings,
    topic: str,
    expected: int = 0,
    timeout_s: float = 30.0,
    settle_s: float = 0.0,
) -> list[RawRecord]:
    """Every record of ``topic`` from its start, read without a consumer group.

    Reads until ``expected`` records or ``timeout_s``; with ``settle_s``, goes on until no record
    arrives for that long, so records beyond the expected count (duplicates, say) are read too.
    Counting records, rather than comparing with end offsets, is deliberate: some brokers (the
    embedded one) report the last batch's base offset as the end.
    """
    consumer = KafkaConsumer(enable_auto_commit=False, **client_options(kafka_settings))
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            records += _poll(consumer, POLL_S)
        while settle_s and (more := _poll(consumer, settle_s)):
            records += more
        return records
    finally:
        consumer.close(autocommit=False)


def _poll(consumer: KafkaConsumer, timeout_s: float) -> list[RawRecord]:
    batches = consumer.poll(timeout_ms=int(timeout_s * 1000))
    return [to_raw_record(m) for messages in batches.values() for m in messages]

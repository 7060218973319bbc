"""Reading a whole topic back from the broker, as the integration tests check what was published,
and reading a forecast message as a consumer does (:func:`forecast_values`, :func:`forecast_times`).

Test support only: no stage of Rollcast reads a topic from its start without a group.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from pandas.tseries.frequencies import to_offset

from pipeline.config import KafkaSettings
from pipeline.kafka_io import client_options, to_raw_record
from pipeline.open_steps import WEEK_MS, OpenHours
from pipeline.records import RawRecord, parse_timestamp

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


def forecast_values(message: dict[str, Any], channel: str) -> list[float]:
    """One channel's point forecast, step by step, of a version-2 forecast message (the
    default format; a version-1 one fails here)."""
    assert message.get("v") == 2, f"not a version-2 forecast message: {sorted(message)}"
    return message["values"][channel]


def forecast_times(message: dict[str, Any]) -> list[int]:
    """The time (epoch ms) of each step of a version-2 forecast message, as a consumer works
    them out: ``start`` and every ``step`` after it, or for a series with ``open_hours`` the
    open steps from ``start`` (itself open) on. One per value of each channel."""
    assert message.get("v") == 2, f"not a version-2 forecast message: {sorted(message)}"
    lengths = {len(values) for values in message["values"].values()}
    assert len(lengths) == 1, f"channels of different lengths: {message['values']}"
    (horizon,) = lengths
    start = parse_timestamp(message["start"])
    step_ms = int(pd.Timedelta(to_offset(message["step"])) / pd.Timedelta(milliseconds=1))
    if "open_hours" not in message:
        return [start + h * step_ms for h in range(horizon)]
    hours = OpenHours.from_text(message["open_hours"])
    assert hours.is_open_at(start), f"start {message['start']} is not an open step"
    week = start + step_ms * np.arange(WEEK_MS // step_ms)  # a week of steps from start on
    times: list[int] = []
    while len(times) < horizon:
        times += week[hours.is_open(week)].tolist()
        week += WEEK_MS
    return times[:horizon]

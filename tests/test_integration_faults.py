"""Faults of the whole process, on the embedded broker: a stalled broker is waited out."""

from __future__ import annotations

import threading

import pytest
from topics import read_topic

from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings
from pipeline.kafka_io import KafkaTransport

pytestmark = pytest.mark.integration


def test_a_flush_waits_out_a_stalled_broker_and_loses_nothing(
    rollcast_env: KafkaSettings, broker: EmbeddedBroker
) -> None:
    transport = KafkaTransport(rollcast_env)
    sink = transport.sink()
    topic = rollcast_env.topic_forecasts
    sink.send_raw(topic, b"k", b"before")
    sink.flush()
    resumed = threading.Timer(6.0, broker.resume)
    try:
        broker.stall()
        resumed.start()
        for i in range(50):
            sink.send_raw(topic, b"k", str(i).encode())
        acknowledged = sink.flush(timeout_s=1.0)  # times out several times before the resume
    finally:
        resumed.join()
        broker.resume()
        sink.close()

    values = {r.value for r in read_topic(rollcast_env, topic, expected=51, settle_s=1)}
    assert acknowledged == 50
    assert values == {b"before"} | {str(i).encode() for i in range(50)}

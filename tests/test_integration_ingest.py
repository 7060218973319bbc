"""Ingest flow on the real broker and a real Prefect API: records in, series table out."""

from __future__ import annotations

import json

import pytest
from topics import read_topic

from flows.ingest import ingest_flow
from pipeline.config import KafkaSettings, StoreSettings
from pipeline.kafka_io import KafkaTransport
from pipeline.records import Observation
from pipeline.wiring import open_store

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def _send_raw(kafka: KafkaSettings, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce exact bytes, as a misbehaving producer would."""
    sink = KafkaTransport(kafka).sink()
    try:
        for key, value in messages:
            sink.send_raw(kafka.topic_observations, key, value)
        sink.flush()
    finally:
        sink.close()


def _observations(series: list[str], steps: int) -> list[Observation]:
    return [
        Observation(s, t * HOUR_MS, {"load": float(t), "temp": 20.0 + i})
        for t in range(steps)
        for i, s in enumerate(series)
    ]


def test_ingest_stores_every_record_once(rollcast_env: KafkaSettings, prefect_api: None) -> None:
    observations = _observations(["a", "b", "c"], steps=50)
    replayed = observations[:30]  # a producer retry sends these twice
    messages = [(o.series.encode(), _encode(o)) for o in observations + replayed]
    _send_raw(rollcast_env, messages)

    report = ingest_flow(max_records=len(messages))

    store = open_store(StoreSettings())
    assert store.series_ids() == ["a", "b", "c"]
    for series_id in ("a", "b", "c"):
        frame = store.read(series_id)
        assert len(frame) == 50
        assert frame["ts"].is_unique and frame["ts"].is_monotonic_increasing
        assert frame["load"].tolist() == [float(t) for t in range(50)]
    assert report["rows_written"] == 150
    assert report["records_in"] == len(messages)
    assert store.info().rows == 150  # the table is append-only: the replays never reached it


def test_ingest_commits_offsets_so_a_rerun_reads_nothing_new(
    rollcast_env: KafkaSettings, prefect_api: None
) -> None:
    observations = _observations(["a"], steps=20)
    _send_raw(rollcast_env, [(o.series.encode(), _encode(o)) for o in observations])
    first = ingest_flow(max_records=len(observations))

    second = ingest_flow()  # runs until idle

    assert first["records_in"] == 20
    assert second["records_in"] == 0
    assert len(open_store(StoreSettings()).read("a")) == 20


def test_bad_records_go_to_deadletter_with_reasons_and_good_ones_are_kept(
    rollcast_env: KafkaSettings, prefect_api: None
) -> None:
    good = _observations(["s1"], steps=6)
    bad = {
        "malformed_json": b'{"series": "s1", "ts": ',
        "missing_field": json.dumps({"series": "s1", "values": {"load": 1.0}}).encode(),
        "non_numeric": json.dumps({"series": "s1", "ts": 0, "values": {"load": "high"}}).encode(),
        "non_finite": b'{"series": "s1", "ts": 0, "values": {"load": NaN}}',
    }
    # Interleave: good, bad, good, bad, ... so the good records surround each bad one.
    messages: list[tuple[bytes, bytes]] = []
    for obs, bad_value in zip(good, [*bad.values(), None, None], strict=True):
        messages.append((b"s1", _encode(obs)))
        if bad_value is not None:
            messages.append((b"s1", bad_value))
    _send_raw(rollcast_env, messages)

    report = ingest_flow(max_records=len(messages))

    letters = read_topic(rollcast_env, rollcast_env.topic_deadletter, expected=len(bad))
    assert sorted(r.header("reason") or "" for r in letters) == sorted(bad)
    by_reason = {r.header("reason"): r for r in letters}
    for reason, value in bad.items():
        letter = by_reason[reason]
        assert letter.value == value, "the original bytes are kept"
        assert letter.header("source_topic") == rollcast_env.topic_observations
        assert letter.header("source_offset") is not None
        assert letter.header("source_partition") is not None
    assert report["dead_letters"] == dict.fromkeys(bad, 1)
    stored = open_store(StoreSettings()).read("s1")
    assert stored["load"].tolist() == [o.values["load"] for o in good]


def _encode(obs: Observation) -> bytes:
    from pipeline.records import observation_to_bytes

    return observation_to_bytes(obs)

"""The serve process against the real embedded broker and a real MLflow store.

Serve runs as `rollcast serve` in its own process where the test needs to kill it or run two,
and is read through its Prometheus endpoint and the topics, as an operator would.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from serve_harness import (
    HORIZON,
    LOOKBACK,
    PacedProducer,
    ServeProcess,
    fleet_steps,
    observation,
    produce,
    read_forecasts,
    register,
    step_of,
    tiny_model,
    wait_for,
)
from topics import forecast_times, forecast_values, read_topic

from pipeline.config import (
    KafkaSettings,
    MlflowSettings,
    RecordSettings,
    ServeSettings,
    StoreSettings,
)
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import serve_from_settings

pytestmark = pytest.mark.integration

MAX_POLL_RECORDS = 100


def by_series(forecasts: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for forecast in forecasts:
        grouped[forecast["series"]].append(forecast)
    return grouped


def test_a_killed_server_resumes_and_every_record_gets_a_forecast(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    register(tiny_model())
    n_series, n_steps = 10, 200
    producer = PacedProducer(rollcast_env, n_series, n_steps, per_s=20)  # 10 s of stream
    # Each poll published in micro-batches of 10: acknowledged sooner, still committed per poll.
    env = {"ROLLCAST_MAX_POLL_RECORDS": str(MAX_POLL_RECORDS), "ROLLCAST_BATCH_FORECASTS": "10"}

    with ServeProcess(tmp_path / "first.log", env, idle_s=600) as first:
        wait_for(lambda: first.metric("assigned_partitions") == 2, "the first server to join")
        producer.start()
        wait_for(lambda: first.metric("forecasts_out_total") >= 300, "forecasts before the kill")
        before_kill = first.metric("forecasts_out_total")
        first.kill()
    forecast_at_kill = first.metric("forecasts_out_total")  # nan: the process is gone
    producer.join(timeout=120)
    assert producer.steps_sent == n_steps
    with ServeProcess(tmp_path / "second.log", env, idle_s=4) as second:
        assert second.wait() == 0, second.output()

    expected = {(f"s{i}", s) for i in range(n_series) for s in range(LOOKBACK - 1, n_steps)}
    forecasts = read_forecasts(rollcast_env, len(expected))
    issued = [(f["series"], step_of(f["issued_at"])) for f in forecasts]
    assert np.isnan(forecast_at_kill)
    assert before_kill < len(expected)  # it was killed mid-stream
    assert set(issued) == expected  # every record with a whole window, none invented
    duplicates = len(issued) - len(set(issued))
    assert duplicates <= MAX_POLL_RECORDS  # the documented bound: one poll per crash
    _assert_repeats_match(forecasts)


def _assert_repeats_match(forecasts: list[dict]) -> None:
    """A record forecast twice (before and after the crash) gets the same forecast."""
    first: dict[tuple[str, str], list[float]] = {}
    for forecast in forecasts:
        values = forecast_values(forecast, "load")
        seen = first.setdefault((forecast["series"], forecast["issued_at"]), values)
        np.testing.assert_allclose(values, seen, rtol=1e-5, atol=1e-5)


def test_a_new_champion_is_swapped_in_live_and_an_incompatible_one_refused(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    first_version = register(tiny_model(seed=0))
    producer = PacedProducer(rollcast_env, n_series=4, n_steps=100_000, per_s=40)
    env = {"ROLLCAST_CHAMPION_POLL_S": "0.3"}

    with ServeProcess(tmp_path / "serve.log", env, idle_s=3) as serve:
        producer.start()
        wait_for(lambda: serve.metric("forecasts_out_total") >= 40, "forecasts from v1")
        second_version = register(tiny_model(seed=1))
        wait_for(lambda: serve.metric("model_swaps_total") == 1, "the swap to v2")
        bad_version = register(tiny_model(lookback=2 * LOOKBACK))
        refused = 'reason="incompatible"'
        wait_for(lambda: serve.metric("model_refused_total", refused) == 1, "the refusal")
        after_refusal = serve.metric("forecasts_out_total")
        wait_for(lambda: serve.metric("forecasts_out_total") >= after_refusal + 40, "more")
        version_label = f'name="{MlflowSettings().model_name}",version="{second_version}"'
        assert serve.metric("model", version_label) == 1
        producer.stop()
        assert serve.wait() == 0, serve.output()

    steps = producer.steps_sent
    forecasts = read_forecasts(rollcast_env, 4 * (steps - LOOKBACK + 1))
    for series, made in by_series(forecasts).items():
        made.sort(key=lambda f: step_of(f["issued_at"]))
        issued = [step_of(f["issued_at"]) for f in made]
        versions = [f["model"]["version"] for f in made]
        assert issued == list(range(LOOKBACK - 1, steps)), f"{series}: a gap or a repeat"
        assert versions == sorted(versions, key=int), f"{series}: went back to an old version"
        assert set(versions) == {first_version, second_version}
    assert f"refusing version {bad_version}" in serve.output()
    assert "lookback 8 -> 16" in serve.output()


def test_bad_records_are_dead_lettered_or_counted_and_serving_goes_on(
    rollcast_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLCAST_GRACE_STEPS", "2")
    monkeypatch.setenv("ROLLCAST_MAX_RECORD_BYTES", "400")
    monkeypatch.setenv("ROLLCAST_FORECAST_FORMAT", "v1")  # an existing consumer's format
    register(tiny_model())
    steps = [s for s in range(30) if s != 15]  # step 15 is missing: interpolated
    steps[10], steps[11] = steps[11], steps[10]  # out of order, within the grace period
    bad = {
        "duplicate": observation("s0", 25, 99.0),  # observed, still in the window
        "late": observation("s0", 15, 99.0),  # its step was interpolated and passed on
        "malformed_json": (b"s0", b'{"series": "s0", "ts": '),
        "too_large": (b"s0", b" " * 500),
        "non_finite": observation("s0", 30, "NaN"),
        "missing_channel": (b"s0", b'{"series": "s0", "ts": 0, "values": {"temp": 1}}'),
    }
    records = [observation("s0", s, float(s)) for s in steps]
    records += list(bad.values()) + [observation("s0", s, float(s)) for s in range(30, 40)]
    produce(rollcast_env, records)

    serve = ServeSettings(serve_idle_s=10)
    stats, _ = serve_from_settings(
        KafkaTransport(rollcast_env),
        StoreSettings(),
        MlflowSettings(),
        serve,
        RecordSettings(),
        max_records=len(records),
    )

    dead = read_topic(rollcast_env, rollcast_env.topic_deadletter, expected=5, settle_s=2)
    reasons = Counter(d.header("reason") for d in dead)
    assert reasons == Counter(r for r in bad if r != "duplicate")
    assert {d.header("reason"): d.value for d in dead} == {
        r: v for r, (_, v) in bad.items() if r != "duplicate"
    }
    assert stats.duplicates == 1
    # Grace 2 holds steps 38 and 39; step 15 was never observed, so it issues no forecast.
    expected = [s for s in range(LOOKBACK - 1, 38) if s != 15]
    forecasts = read_forecasts(rollcast_env, len(expected))
    assert sorted(step_of(f["issued_at"]) for f in forecasts) == expected
    assert stats.gaps_filled == 1 and stats.records_in == len(records)
    for forecast in forecasts:  # version 1, as the variable asked: each step with its own time
        assert "v" not in forecast and forecast["freq"] == "1h"
        steps = [step_of(step["ts"]) for step in forecast["forecast"]]
        assert steps == [step_of(forecast["issued_at"]) + h for h in range(1, HORIZON + 1)]


def test_two_servers_in_one_group_split_the_series_after_a_rebalance(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    register(tiny_model())
    n_series = 12
    produce(rollcast_env, fleet_steps(n_series, range(20)))

    with ServeProcess(tmp_path / "a.log", idle_s=600) as a:
        wait_for(lambda: a.metric("records_in_total") == n_series * 20, "a to read phase one")
        with ServeProcess(tmp_path / "b.log", idle_s=600) as b:
            wait_for(
                lambda: a.metric("assigned_partitions") == b.metric("assigned_partitions") == 1,
                "the rebalance to settle",
            )
            produce(rollcast_env, fleet_steps(n_series, range(20, 30)))
            wait_for(
                lambda: (
                    a.metric("records_in_total") + b.metric("records_in_total") == n_series * 30
                ),
                "both to read phase two",
            )
            assert b.stop() == 0, b.output()
        assert a.stop() == 0, a.output()

    forecasts = read_forecasts(rollcast_env, n_series * (30 - LOOKBACK + 1))
    phase_two = [f for f in forecasts if step_of(f["issued_at"]) >= 20]
    members = defaultdict(set)
    for forecast in phase_two:
        members[forecast["series"]].add(forecast["served_by"])
    assert all(len(m) == 1 for m in members.values()), members
    assert len({m for ms in members.values() for m in ms}) == 2  # both members served some
    issued = Counter((f["series"], step_of(f["issued_at"])) for f in phase_two)
    # Windows were rebuilt on the member that gained a partition: no warm-up gap, no repeats.
    assert issued == Counter({(f"s{i}", s): 1 for i in range(n_series) for s in range(20, 30)})
    first = phase_two[0]
    assert len(forecast_values(first, "load")) == len(forecast_times(first)) == HORIZON

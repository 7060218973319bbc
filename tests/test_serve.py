"""The serve loop's pure parts: windows per series, batching, online error, swap and metrics.

No broker here: the loop publishes to the in-memory transport, and the tests read its topics
back as a consumer would; the integration tests use the real broker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest
from topics import forecast_times, forecast_values

from pipeline.forecast import LoadedForecaster, predict
from pipeline.inmemory import MemorySink, MemoryTransport
from pipeline.intervals import Calibration
from pipeline.metrics import serve_metrics
from pipeline.model import build_forecaster
from pipeline.open_steps import OpenHours
from pipeline.recipe import ForecasterConfig
from pipeline.records import (
    FUTURE,
    LATE,
    MISSING_CHANNEL,
    ForecastBatch,
    Observation,
    RawRecord,
    RecordPolicy,
    forecast_to_bytes,
    parse_timestamp,
)
from pipeline.serve import (
    BatchCap,
    RollingForecaster,
    new_stats,
    serve_batch,
    stop_rule,
    swap_if_offered,
)
from pipeline.stats import LatencyRecorder, OnlineErrorReporter, SeriesGroups, ServeStats
from pipeline.swap import (
    INCOMPATIBLE,
    UNLOADABLE,
    ChampionWatcher,
    LocalCopy,
    ModelSlot,
    incompatibility,
)

LOOKBACK, HORIZON, STEP_MS = 4, 3, 3_600_000


def repeat_last(version: str = "1", lookback: int = LOOKBACK) -> LoadedForecaster:
    """A DLinear whose weights copy the last input step to every output step."""
    config = ForecasterConfig(
        channels=("load",), lookback=lookback, horizon=HORIZON, architecture="dlinear", max_gap=1
    )
    model = build_forecaster(config)
    with torch.no_grad():
        for layer in (model.trend, model.seasonal):
            layer.weight.zero_()
            layer.weight[:, -1] = 1.0
            layer.bias.zero_()
    return LoadedForecaster("m", version, model.eval())


def record(series: str, step: int, value: float | None = None, offset: int = 0, **kw) -> RawRecord:
    values = {"load": float(step) if value is None else value}
    payload = {"series": series, "ts": step * STEP_MS, "values": values}
    return RawRecord("obs", kw.pop("partition", 0), offset, series.encode(),
                     json.dumps(payload).encode(), 1_000, **kw)  # fmt: skip


def serve(records: list[RawRecord], rolling: RollingForecaster | None = None, **options):
    """One batch into a fresh in-memory transport: (the transport, the stats, the forecaster)."""
    rolling = rolling or RollingForecaster(repeat_last(), max_series=100, **options)
    transport, stats = MemoryTransport(), new_stats(rolling)
    serve_batch(records, rolling, transport.sink(), stats)
    return transport, stats, rolling


def forecasts(transport: MemoryTransport) -> list[dict]:
    """The forecasts acknowledged so far, as a consumer of the topic reads them (version 2, the
    default format, unless the forecaster was made with ``message="v1"``)."""
    return [json.loads(r.value or b"{}") for r in transport.messages(transport.topics.forecasts)]


def issued_steps(transport: MemoryTransport) -> list[int]:
    """The step of each acknowledged forecast's last observation, in publishing order."""
    return [parse_timestamp(f["issued_at"]) // STEP_MS for f in forecasts(transport)]


def letters(transport: MemoryTransport) -> list[RawRecord]:
    """The dead letters acknowledged so far."""
    return transport.messages(transport.topics.deadletter)


def reasons(transport: MemoryTransport) -> list[str | None]:
    return [letter.header("reason") for letter in letters(transport)]


def test_one_forecast_per_step_once_the_window_is_whole() -> None:
    transport, stats, _ = serve([record("a", s) for s in range(6)])

    # On the topic once serve_batch returns: sends reach it only when the sink is flushed.
    assert issued_steps(transport) == [3, 4, 5]
    first = forecasts(transport)[0]
    assert forecast_values(first, "load") == [3.0] * HORIZON  # repeat-last of 3, version 2
    assert forecast_times(first) == [(3 + h) * STEP_MS for h in range(1, HORIZON + 1)]
    assert (stats.records_in, stats.forecasts_out) == (6, 3)
    assert first["model"]["version"] == "1"
    assert "intervals" not in first  # an uncalibrated model has none to publish


def test_the_batch_is_one_model_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    import pipeline.serve as serve_module

    real_predict = serve_module.predict_outputs
    monkeypatch.setattr(
        serve_module,
        "predict_outputs",
        lambda m, x, origins, **kw: calls.append(len(x)) or real_predict(m, x, origins, **kw),
    )

    serve([record(s, k) for k in range(5) for s in ("a", "b", "c")])

    assert calls == [6]  # steps 3 and 4 of three series, together


def test_bad_records_are_dead_lettered_with_their_reason_and_the_rest_served() -> None:
    records = [record("a", s) for s in range(5)]
    records += [
        record("a", 1, offset=7),  # observed, still in the window: a duplicate
        RawRecord("obs", 0, 8, b"a", b'{"series": "a", "ts": 0, "values": {"temp": 1}}'),
        RawRecord("obs", 0, 9, b"a", b"not json"),
        record("a", 5),
    ]

    transport, stats, _ = serve(records)

    assert reasons(transport) == ["malformed_json", MISSING_CHANNEL]
    assert stats.duplicates == 1
    assert issued_steps(transport) == [3, 4, 5]


def test_late_records_beyond_the_grace_period_are_dead_lettered() -> None:
    records = [record("a", s) for s in (0, 1, 3, 2, 4, 5, 7, 8)] + [record("a", 6, offset=9)]

    transport, stats, _ = serve(records, policy=RecordPolicy(grace_steps=1))

    # Step 6 was interpolated when 7 was placed: it issues no forecast, and its record is late.
    assert issued_steps(transport) == [3, 4, 5, 7]
    assert reasons(transport) == [LATE]
    assert stats.gaps_filled == 1


def test_rewound_records_rebuild_windows_but_publish_nothing() -> None:
    rewound = [record("a", s, rewound=True) for s in range(4)]

    transport, stats, _ = serve([*rewound, record("a", 4)])

    assert issued_steps(transport) == [4]
    assert (stats.records_in, stats.records_rewound) == (1, 4)


def test_one_record_far_ahead_is_held_and_refused_as_future_if_unconfirmed() -> None:
    stray = record("a", 20, offset=9)  # 17 steps ahead of step 3: beyond max_jump_steps (12)

    transport, _, rolling = serve([*filled("a"), stray, *filled("a", LOOKBACK)[:3]])

    assert issued_steps(transport) == [3, 4, 5, 6]  # the series' own clock never moved
    assert reasons(transport) == [FUTURE]
    assert int(letters(transport)[0].header("source_offset") or -1) == 9
    assert rolling.series_state("a").window.newest_ms == 6 * STEP_MS  # type: ignore[union-attr]


def test_a_second_record_near_the_held_one_moves_the_clock_to_both() -> None:
    outage = [record("a", s) for s in (21, 20, 22, 23)]  # 16 steps on; out of order, too

    transport, stats, _ = serve([*filled("a"), *outage])

    # Both placed in step order, so the window restarts at 20 and is whole again at 23.
    assert (issued_steps(transport), reasons(transport)) == ([3, 23], [])
    assert stats.restarts == 1


def test_a_held_step_is_refused_once_the_series_comes_within_reach() -> None:
    records = [*filled("a"), record("a", 17, offset=9)]  # 14 ahead of step 3
    records += [record("a", s) for s in range(4, 6)]  # step 5: 17 is within reach now

    transport, _, rolling = serve(records)

    assert reasons(transport) == [FUTURE]
    assert "came within reach" in (letters(transport)[0].header("detail") or "")
    assert rolling.series_state("a").held is None  # type: ignore[union-attr]


def test_a_held_record_is_refused_at_its_batch_end_and_its_time_confirms_the_next() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=100)
    serve(filled("a"), rolling)

    first, _, _ = serve([record("a", 20, offset=9)], rolling)
    then, _, _ = serve([record("a", s) for s in range(21, 25)], rolling)

    assert (reasons(first), reasons(then)) == ([FUTURE], [])  # decided before any commit
    assert issued_steps(then) == [24]  # resumed: 21 to 24 fill the window


def test_a_rewound_held_record_is_decided_again_without_a_second_dead_letter() -> None:
    rewound = [*[record("a", s, rewound=True) for s in range(4)], record("a", 20, rewound=True)]

    transport, _, _ = serve([*rewound, record("a", 4)])

    assert (reasons(transport), issued_steps(transport)) == ([], [4])


def test_a_repeat_of_the_held_step_is_a_duplicate() -> None:
    transport, stats, _ = serve([*filled("a"), record("a", 20), record("a", 20, value=9.0)])

    assert (reasons(transport), stats.duplicates) == ([FUTURE], 1)


def filled(series: str, first_step: int = 0) -> list[RawRecord]:
    """Enough records of one series to fill its window."""
    return [record(series, s) for s in range(first_step, first_step + LOOKBACK)]


def test_the_least_recently_seen_established_series_is_evicted_at_the_cap() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=2)

    records = filled("a") + filled("b") + [record("a", LOOKBACK)] + filled("c")
    _, stats, _ = serve(records, rolling)

    assert list(rolling.series) == ["a", "c"]
    assert stats.evicted_series == 1


def test_a_flood_of_new_keys_never_evicts_an_established_series() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=2, max_new_series=3)
    serve(filled("a") + filled("b"), rolling)
    stats, table_bytes = new_stats(rolling), rolling.sightings.tags.nbytes

    # Straight to observe, past the JSON: 400,000 records through serve_batch take seconds.
    flood = record("junk", 0)  # observe reads only whether a record was rewound
    for i in range(400_000):
        rolling.observe(flood, Observation(f"junk-{i}", 0, {"load": 1.0}), stats)
    transport, _, _ = serve([record("a", LOOKBACK), record("b", LOOKBACK)], rolling)

    assert [f["series"] for f in forecasts(transport)] == ["a", "b"]  # windows kept: at once
    assert list(rolling.newcomers) == ["junk-0", "junk-1", "junk-2"]  # then no room: sighted
    assert (stats.evicted_series, stats.evicted_new_series) == (0, 399_997)
    assert rolling.live_series() == 5 and rolling.sightings.tags.nbytes == table_bytes


def test_a_one_off_key_gets_no_window_once_the_newcomers_are_full() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=10, max_new_series=2)
    serve([record("x", 0), record("y", 0)], rolling)
    table_bytes = rolling.sightings.tags.nbytes

    _, stats, _ = serve([record(f"once-{i}", 0) for i in range(10_000)], rolling)
    assert rolling.series_state("once-0") is None and list(rolling.newcomers) == ["x", "y"]
    assert stats.evicted_new_series == 10_000
    assert rolling.sightings.tags.nbytes == table_bytes == 8 * 32  # 2 x 12 keys, rounded up

    serve([record("again", 0), record("again", 1)], rolling)  # a key that repeats gets one
    assert list(rolling.newcomers) == ["x", "y", "again"]


def test_a_repeating_newcomer_evicts_keys_that_never_repeated_first() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=1, max_new_series=2)
    serve(filled("a"), rolling)  # the established pool is full: newcomers have 2 places

    records = [record("x", 0), record("x", 1), record("y", 0), record("r", 0), record("r", 1)]
    _, stats, _ = serve(records, rolling)

    # x is the least recently seen, but y never repeated; r's first record found no room.
    assert list(rolling.newcomers) == ["x", "r"]
    assert (stats.evicted_series, stats.evicted_new_series) == (0, 2)


def round_robin(n_series: int, steps: range, prefix: str = "s") -> list[RawRecord]:
    """Every series at one step, then every series at the next, as a fleet of sensors reports."""
    return [record(f"{prefix}{i}", step) for step in steps for i in range(n_series)]


# Enough steps for every series of a fleet to fill a window, even one whose sighting other keys
# displaced a few times (a key wins a slot another holds on a coin toss).
FLEET_STEPS = range(3 * LOOKBACK)


def test_a_round_robin_fleet_larger_than_max_new_series_is_served() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=2_000, max_new_series=1_000)

    transport, stats, _ = serve(round_robin(1_500, FLEET_STEPS), rolling)

    assert {f["series"] for f in forecasts(transport)} == {f"s{i}" for i in range(1_500)}
    assert len(rolling.series) == 1_500 and stats.evicted_series == 0


def test_a_round_robin_fleet_is_served_through_a_flood_of_one_off_keys() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=10_000, max_new_series=1_000)
    records = []
    for (
        step
    ) in FLEET_STEPS:  # each step: the fleet's 3,000 series, then 1,000 keys never seen again
        records += round_robin(3_000, range(step, step + 1))
        records += round_robin(1_000, range(step, step + 1), prefix=f"junk-{step}-")

    transport, stats, _ = serve(records, rolling)

    served = {f["series"] for f in forecasts(transport)}
    assert served == {f"s{i}" for i in range(3_000)}  # every series of the fleet, no junk
    assert len(rolling.series) == 3_000 and stats.evicted_series == 0
    assert rolling.live_series() <= 3_000 + 1_000  # junk windows: max_new_series at most


def test_a_new_series_joins_the_established_once_its_window_fills() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=10, max_new_series=10)

    serve(filled("a")[:-1], rolling)
    assert (list(rolling.newcomers), list(rolling.series)) == (["a"], [])
    serve([record("a", LOOKBACK - 1)], rolling)

    assert (list(rolling.newcomers), list(rolling.series)) == ([], ["a"])


def test_forgetting_partitions_drops_only_their_series() -> None:
    _, _, rolling = serve([record("a", 0, partition=0), record("b", 0, partition=1)])

    rolling.forget_partitions({1})

    assert list(rolling.newcomers) == ["a"] and rolling.live_series() == 1


def test_online_error_is_scored_by_steps_ahead() -> None:
    # Values rise by one a step and the model repeats the last one: k steps ahead it is off by k.
    rolling = RollingForecaster(repeat_last(), max_series=10)
    stats, sink = new_stats(rolling), MemoryTransport().sink()
    for step in range(LOOKBACK + HORIZON):
        serve_batch([record("a", step)], rolling, sink, stats)

    assert stats.online_mae() == [1.0, 2.0, 3.0]
    assert stats.online_error.abs_error_count.tolist() == [1, 1, 1]


def test_online_error_scores_the_newest_forecast_of_a_batch() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=10)
    stats, sink = new_stats(rolling), MemoryTransport().sink()
    serve_batch([record("a", s) for s in range(LOOKBACK + 2)], rolling, sink, stats)

    serve_batch([record("a", LOOKBACK + 2)], rolling, sink, stats)

    assert stats.online_mae() == [1.0, None, None]  # scored against the forecast of step 5


def test_latencies_are_recorded_per_forecast_and_per_batch() -> None:
    _, stats, _ = serve([record("a", s) for s in range(6)])

    assert stats.record_latency.count == 3
    assert stats.batch_latency.count == 1


def test_a_compatible_version_is_swapped_in_between_batches() -> None:
    rolling = RollingForecaster(repeat_last("1"), max_series=10)
    stats, slot = new_stats(rolling), ModelSlot()
    serve_batch([record("a", s) for s in range(3)], rolling, MemoryTransport().sink(), stats)

    slot.offer(repeat_last("2"))
    swap_if_offered(slot, rolling, stats)
    transport = MemoryTransport()
    serve_batch([record("a", 3)], rolling, transport.sink(), stats)

    assert [f["model"]["version"] for f in forecasts(transport)] == ["2"]  # the window was kept
    assert (stats.swaps, stats.model_version) == (1, "2")


def test_after_a_swap_each_version_is_scored_on_its_own_forecasts() -> None:
    rolling = RollingForecaster(repeat_last("1"), max_series=10)
    stats, slot, sink = new_stats(rolling), ModelSlot(), MemoryTransport().sink()
    serve_batch([record("a", s) for s in range(LOOKBACK)], rolling, sink, stats)
    serve_batch([record("a", LOOKBACK)], rolling, sink, stats)  # scores 1 of 3 steps ahead

    slot.offer(repeat_last("2"))
    swap_if_offered(slot, rolling, stats)
    for step in range(LOOKBACK + 1, LOOKBACK + 2 + HORIZON):
        serve_batch([record("a", step)], rolling, sink, stats)

    # Version 1's forecast was dropped at the swap; version 2's first one was scored in full.
    scored = {version: count for version, (_, count) in stats.online_error.by_version.items()}
    assert scored == {"1": 1, "2": HORIZON}
    assert stats.online_mae() == [1.0, 2.0, 3.0]


def test_an_incompatible_version_is_refused_and_the_old_one_serves() -> None:
    rolling = RollingForecaster(repeat_last("1"), max_series=10)
    stats, slot = new_stats(rolling), ModelSlot()

    slot.offer(repeat_last("2", lookback=2 * LOOKBACK))
    swap_if_offered(slot, rolling, stats)

    assert rolling.forecaster.version == "1"
    assert stats.refused == {INCOMPATIBLE: 1}
    assert incompatibility(repeat_last(), repeat_last(lookback=8)) == "lookback 4 -> 8"


def test_the_watcher_offers_new_versions_and_retries_unloadable_ones_with_backoff() -> None:
    alias, slot, now, broken = ["1"], ModelSlot(), [0.0], {"3"}
    attempts: list[str] = []

    def load(version: str) -> LoadedForecaster:
        attempts.append(version)
        if version in broken:
            raise RuntimeError("registry timed out")
        return repeat_last(version)

    watcher = ChampionWatcher(
        "1", lambda: alias[0], load, slot, interval_s=10, clock=lambda: now[0]
    )
    watcher.check_once()
    assert slot.take() == (None, [])
    alias[0] = "2"
    watcher.check_once()
    loaded, _ = slot.take()
    alias[0] = "3"
    watcher.check_once()  # fails: the next try in 20 s
    now[0] = 19.0
    watcher.check_once()  # too soon: not tried
    now[0] = 21.0
    watcher.check_once()  # fails again: the next try in 40 s
    _, refusals = slot.take()
    broken.clear()
    now[0] = 62.0
    watcher.check_once()

    assert loaded is not None and loaded.version == "2"
    assert [(r.version, r.reason) for r in refusals] == [("3", UNLOADABLE)]  # reported once
    assert attempts == ["2", "3", "3", "3"]
    assert slot.take()[0].version == "3"  # type: ignore[union-attr]


def test_the_watcher_survives_a_registry_outage() -> None:
    def outage() -> str:
        raise ConnectionError("registry down")

    slot = ModelSlot()
    ChampionWatcher("1", outage, repeat_last, slot, interval_s=60).check_once()

    assert slot.take() == (None, [])


def test_metrics_expose_the_loop_counters() -> None:
    _, stats, rolling = serve(
        [record("a", s) for s in range(6)] + [RawRecord("obs", 0, 9, b"a", b"x")]
    )
    serve_batch([record("a", 6)], rolling, MemoryTransport().sink(), stats)

    text = generate_latest(serve_metrics(stats, port=None)).decode()

    assert "rollcast_records_in_total 8.0" in text
    assert "rollcast_forecasts_out_total 4.0" in text
    assert 'rollcast_dead_letters_total{reason="malformed_json"} 1.0' in text
    assert 'rollcast_model{name="m",version="1"} 1.0' in text
    assert "rollcast_record_latency_seconds_count 4.0" in text
    assert 'rollcast_forecast_abs_error_count{steps_ahead="1"} 1.0' in text


def test_latency_quantiles_come_from_the_newest_values_in_fixed_memory() -> None:
    recorder = LatencyRecorder(keep=100)
    recorder.record(np.full(1000, 5.0))
    recorder.record(np.linspace(0.0, 0.099, 100))

    assert recorder.count == 1100 and recorder.max_s == 5.0
    assert recorder.quantile(0.5) == pytest.approx(0.0495)
    assert recorder.bucket_counts()[-1] == 1100


def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    import socket

    from pipeline.metrics import MetricsPortError

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f":{port}.*ROLLCAST_METRICS_PORT"):
            serve_metrics(new_stats(RollingForecaster(repeat_last(), 10)), port)


def test_the_metrics_endpoint_listens_on_loopback_only_by_default() -> None:
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_metrics(new_stats(RollingForecaster(repeat_last(), 10)), port)

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"rollcast_records_in_total" in text
    # Had it bound every interface (0.0.0.0), this other loopback address would be taken too.
    with socket.socket() as other:
        other.bind(("127.0.0.2", port))


def test_hostile_records_are_dead_lettered_and_serving_goes_on() -> None:
    BIG = b"9" * 400  # noqa: N806
    hostile = [
        RawRecord("obs", 0, 90, None, b'{"series": "x\\ud800", "ts": 0, "values": {"load": 1}}'),
        RawRecord("obs", 0, 91, b"a", b'{"series": "a", "ts": 0, "values": {"load": 1e39}}'),
        RawRecord("obs", 0, 92, b"a", b'{"series": "a", "ts": 0, "values": {"load": %s}}' % BIG),
    ]  # fmt: skip

    transport, _, _ = serve(hostile + [record("a", s) for s in range(5)])

    assert reasons(transport) == ["bad_series", "non_finite", "non_finite"]
    assert issued_steps(transport) == [3, 4]
    assert [forecast_values(f, "load")[0] for f in forecasts(transport)] == [3.0, 4.0]


def test_a_failure_inside_the_window_becomes_an_invalid_dead_letter() -> None:
    rolling = RollingForecaster(repeat_last(), max_series=10)
    observe = rolling.observe

    def fails_for_b(record: RawRecord, obs, stats):  # type: ignore[no-untyped-def]
        if obs.series == "b":
            raise ValueError("window broke")
        return observe(record, obs, stats)

    rolling.observe = fails_for_b  # type: ignore[method-assign]

    transport, _, _ = serve([record("b", 0)] + [record("a", s) for s in range(4)], rolling)

    refused = [(d.header("reason"), d.header("detail")) for d in letters(transport)]
    assert refused == [("invalid", "ValueError: window broke")]
    assert issued_steps(transport) == [3]


def test_the_local_copy_round_trips_and_refuses_a_mismatched_checkpoint(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path, "rollcast/forecaster")
    assert copy.load() is None
    copy.save(repeat_last("7"))

    kept = copy.load()

    assert kept is not None and (kept.name, kept.version) == ("m", "7")
    window = np.arange(LOOKBACK, dtype=np.float32).reshape(1, LOOKBACK, 1)
    assert np.array_equal(predict(kept.model, window), predict(repeat_last().model, window))
    (tmp_path / "rollcast_forecaster.pt").write_bytes(b"torn write")
    assert copy.load() is None


def _stopped_within(stop: Callable[[ServeStats, bool], bool], stats: ServeStats, s: float) -> bool:
    """Call the rule as the loop does after each empty poll, for up to ``s`` seconds."""
    deadline = time.monotonic() + s
    while time.monotonic() < deadline:
        if stop(stats, stats.assigned_partitions > 0):
            return True
        time.sleep(0.01)
    return False


def test_a_member_without_partitions_says_so_and_still_stops_when_idle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = new_stats(
        RollingForecaster(repeat_last(), max_series=10)
    )  # stats.assigned_partitions == 0: none assigned
    stop = stop_rule(None, idle_s=0.05, stopping=threading.Event(), join_grace_s=0.2)
    with caplog.at_level(logging.WARNING, logger="pipeline.serve"):
        assert _stopped_within(stop, stats, 10)
    assert "no partitions assigned" in caplog.text


def test_a_member_still_joining_is_not_idle() -> None:
    stats = new_stats(RollingForecaster(repeat_last(), max_series=10))
    stop = stop_rule(None, idle_s=0.05, stopping=threading.Event(), join_grace_s=60)
    assert not _stopped_within(stop, stats, 0.5)


# --- intervals, published in version 2 and adapted online -----------------------------------------


def calibrated_repeat_last() -> LoadedForecaster:
    """:func:`repeat_last` with intervals of 1.5 window spreads at 80%, 3.5 at 95%."""
    forecaster = repeat_last()
    radius = np.array([1.5, 3.5])[:, None, None] * np.ones((2, HORIZON, 1))
    forecaster.model.calibrate_intervals(Calibration((0.8, 0.95), radius))
    return forecaster


def test_intervals_widen_online_when_the_actuals_leave_them_and_say_their_coverage() -> None:
    rolling = RollingForecaster(calibrated_repeat_last(), max_series=100, message="v2")
    transport, stats = MemoryTransport(), new_stats(rolling)
    # A series rising by 1 a step: repeat-last is h off h steps ahead, and a window's spread
    # is 1, so the 80% band (+-1.5) holds step 1 and misses steps 2 and 3 of every forecast.
    for step in range(40):
        serve_batch([record("a", step)], rolling, transport.sink(), stats)

    published = forecasts(transport)
    first, last = published[0], published[-1]
    assert first["v"] == 2 and first["intervals"]["0.8"]["hi"]["load"] == [4.5, 4.5, 4.5]
    width = {
        f["issued_at"]: np.subtract(
            f["intervals"]["0.8"]["hi"]["load"], f["intervals"]["0.8"]["lo"]["load"]
        )
        for f in (first, last)
    }
    first_width, last_width = width[first["issued_at"]], width[last["issued_at"]]
    # Steps 2 and 3 miss: every step widens (they share a part of the radius: errors across
    # steps go together), the missed steps most, the one missed most the most.
    assert (last_width > first_width).all()
    assert last_width[0] < last_width[1] < last_width[2]
    coverage = stats.online_error.coverage()
    assert coverage[0.8] > 1 / 3 and coverage[0.95] == 1  # fixed radii would hold 1 of 3
    scraped = generate_latest(serve_metrics(stats, port=None)).decode()
    assert 'rollcast_interval_coverage{level="0.8",steps_ahead="1"} 1.0' in scraped


def test_version_1_forecasts_carry_no_intervals_and_keep_no_radii() -> None:
    # Version 1 stays for existing consumers: asked for by name (the default is version 2).
    rolling = RollingForecaster(calibrated_repeat_last(), max_series=100, message="v1")
    transport, stats, _ = serve([record("a", s) for s in range(8)], rolling)

    published = forecasts(transport)
    assert [parse_timestamp(f["issued_at"]) // STEP_MS for f in published] == [3, 4, 5, 6, 7]
    for issued, forecast in zip(range(3, 8), published, strict=True):
        assert set(forecast) == {"series", "issued_at", "model", "freq", "forecast"}
        assert forecast["freq"] == "1h"
        steps = forecast["forecast"]  # one entry per step, with its own time
        assert [parse_timestamp(step["ts"]) for step in steps] == [
            (issued + h) * STEP_MS for h in range(1, HORIZON + 1)
        ]
        assert [step["load"] for step in steps] == [float(issued)] * HORIZON  # repeat-last
    assert not stats.online_error.adapts and stats.online_error.coverage() == {}


def test_the_online_report_gives_the_coverage_of_the_intervals_scored_since_the_last() -> None:
    rolling = RollingForecaster(calibrated_repeat_last(), max_series=100, message="v2")
    transport, stats = MemoryTransport(), new_stats(rolling, interval_gain=0.0)  # fixed radii
    reports: list[tuple] = []
    reporter = OnlineErrorReporter(stats, lambda *report: reports.append(report), 3600)
    for step in range(20):
        serve_batch([record("a", step)], rolling, transport.sink(), stats)
    reporter.report_once()
    for step in range(20, 30):
        serve_batch([record("a", step)], rolling, transport.sink(), stats)
    reporter.report_once()

    (_, _, n_first, _, first), (_, _, n_second, _, second) = reports
    # Fixed radii: 1.5 holds step 1 of 3 (errors 1, 2, 3), 3.5 holds all three; a report may
    # fall between a forecast's steps, so a short stretch holds more or less than a third.
    assert first[0.95] == second[0.95] == 1.0
    assert 0 < first[0.8] < 1 and 0 < second[0.8] < 1
    assert n_second < n_first  # the second covers only the values since the first
    overall = (first[0.8] * n_first + second[0.8] * n_second) / (n_first + n_second)
    assert overall == pytest.approx(stats.online_error.coverage()[0.8])


# --- batches within a poll ------------------------------------------------------------------


class CountingSink(MemorySink):
    """A memory sink that remembers how many forecasts each flush acknowledged."""

    def __init__(self, transport: MemoryTransport) -> None:
        super().__init__(transport)
        self.acknowledged: list[int] = []

    def flush(self, timeout_s: float = 0.0) -> int:
        pending = [p for p in self._pending if p[0] == self.topics.forecasts]
        self.acknowledged.append(len(pending))
        return super().flush(timeout_s)


def serve_capped(records, cap: BatchCap) -> tuple[MemoryTransport, CountingSink]:
    rolling = RollingForecaster(repeat_last(), max_series=100)
    transport = MemoryTransport()
    sink = CountingSink(transport)
    serve_batch(records, rolling, sink, new_stats(rolling), cap=cap)
    return transport, sink


def test_every_step_of_a_series_in_one_poll_is_forecast_from_its_own_window() -> None:
    transport, _ = serve_capped([record("a", s) for s in range(10)], BatchCap())

    # Repeat-last forecasts its window's newest value: each forecast saw its own step, not the
    # poll's last (the windows are gathered from the ring after the whole poll was placed).
    assert [forecast_values(f, "load")[0] for f in forecasts(transport)] == list(range(3, 10))


def test_a_poll_is_published_in_batches_of_the_cap() -> None:
    records = [record(s, k) for k in range(8) for s in ("a", "b", "c")]  # 15 forecasts due

    transport, sink = serve_capped(records, BatchCap(forecasts=4, seconds=60))

    assert sink.acknowledged == [4, 4, 4, 3]  # the first ones acknowledged long before the last
    assert len(forecasts(transport)) == 15


def test_a_time_cap_of_zero_publishes_each_forecast_as_soon_as_it_is_due() -> None:
    transport, sink = serve_capped([record("a", s) for s in range(6)], BatchCap(seconds=0))

    assert sink.acknowledged == [1, 1, 1, 0]  # steps 3, 4, 5; the poll's end has none left
    assert [forecast_values(f, "load")[0] for f in forecasts(transport)] == [3.0, 4.0, 5.0]


def test_the_cap_does_not_change_what_is_published() -> None:
    records = [record(s, k, value=float(k * k % 7)) for k in range(12) for s in ("a", "b")]

    capped, _ = serve_capped(records, BatchCap(forecasts=3, seconds=0.001))
    whole, _ = serve_capped(records, BatchCap(forecasts=10_000, seconds=60))

    assert forecasts(capped) == forecasts(whole)


@pytest.mark.parametrize("message", ["v1", "v2"])
@pytest.mark.parametrize("hours", [None, "mon-fri 08:00-18:00"])
def test_a_batch_writes_the_bytes_of_each_of_its_forecasts(message: str, hours: str | None) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, HORIZON, 2)).astype(np.float32) * 1000
    half = np.abs(rng.normal(size=(2, 3, HORIZON, 2)))
    batch = ForecastBatch(
        series=["a", 'quo"te\\\\', "ünï\u2028"],  # keys JSON must escape
        issued_at_ms=np.array([0, STEP_MS, 5 * STEP_MS]),
        model_name="m",
        model_version="7",
        freq="1h",
        step_ms=STEP_MS,
        channels=("load", "temp"),
        values=values,
        open_hours=None if hours is None else OpenHours.from_text(hours),
        message=message,
        interval_levels=(0.8, 0.95) if message == "v2" else (),
        lo=values[None] - half if message == "v2" else None,
        hi=values[None] + half if message == "v2" else None,
    )

    messages = list(batch.messages())

    assert [key for key, _ in messages] == [s.encode() for s in batch.series]
    assert [value for _, value in messages] == [
        forecast_to_bytes(batch.forecast(i)) for i in range(3)
    ]
    if message == "v2":
        first = json.loads(messages[0][1])
        np.testing.assert_allclose(
            first["intervals"]["0.8"]["hi"]["temp"], values[0, :, 1] + half[0, 0, :, 1], rtol=1e-5
        )


def test_intervals_are_published_from_the_batch_arrays() -> None:
    model = repeat_last()
    config = model.model.config
    radius = np.ones((len(config.interval_levels), HORIZON, 1))
    model.model.calibrate_intervals(Calibration(config.interval_levels, radius))
    rolling = RollingForecaster(model, max_series=10)  # the default format: version 2
    transport = MemoryTransport()
    serve_batch([record("a", s) for s in range(6)], rolling, transport.sink(), new_stats(rolling))

    published = forecasts(transport)
    # Window 2, 3, 4, 5 changes by 1 a step: a spread of 1, so each bound is 1 from the point.
    assert published[-1]["intervals"]["0.8"]["lo"]["load"] == [4.0] * HORIZON
    assert published[-1]["intervals"]["0.95"]["hi"]["load"] == [6.0] * HORIZON


def _interval_width(forecast: dict) -> np.ndarray:
    bounds = forecast["intervals"]["0.8"]
    return np.subtract(bounds["hi"]["load"], bounds["lo"]["load"])


@pytest.mark.parametrize("fields", [0, 1])
def test_each_group_of_series_adapts_its_own_intervals(fields: int) -> None:
    rolling = RollingForecaster(calibrated_repeat_last(), max_series=100, message="v2")
    transport = MemoryTransport()
    stats = new_stats(rolling, groups=SeriesGroups(fields, "/"))
    # "flat/..." repeats its last value exactly; "rising/..." climbs by 1 a step, so its
    # intervals (a spread of 1 in its window, 0 in the flat one's) miss steps 2 and 3.
    for step in range(40):
        batch = [record("flat/a", step, value=5.0 + (step % 2)), record("rising/b", step)]
        serve_batch(batch, rolling, transport.sink(), stats)

    newest = {f["series"]: f for f in forecasts(transport)}
    first_flat = next(f for f in forecasts(transport) if f["series"] == "flat/a")
    flat_widening = _interval_width(newest["flat/a"]) / _interval_width(first_flat)
    if fields:  # the flat series' misses alone move its radii: all its steps were covered
        assert (flat_widening < 1).all()
        coverage = stats.online_error.group_scored
        assert set(coverage) == {"flat", "rising"}
        scraped = generate_latest(serve_metrics(stats, port=None)).decode()
        assert 'rollcast_interval_group_coverage{group="flat",level="0.95"} 1.0' in scraped
        assert 'rollcast_interval_group_coverage{group="rising",level="0.8"} 0.' in scraped
    else:  # one group: the rising series' misses widen the flat one's steps 2 and 3 too
        assert (flat_widening[1:] > 1).all()


def test_a_batch_is_cut_when_its_wait_and_its_model_time_reach_the_cap() -> None:
    cap, now = BatchCap(forecasts=1000, seconds=0.02), time.perf_counter()

    assert cap.reached(200, now, cost_s=0.001)  # 200 forecasts of 1 ms: 0.2 s to publish
    assert not cap.reached(200, now, cost_s=0.00005)  # 10 ms to publish: wait for more
    assert cap.reached(200, now - 0.015, cost_s=0.00005)  # waited 15 ms: 25 ms in all
    assert not cap.reached(127, now - 1.0, cost_s=0.1)  # too few to cut by time: a slow model
    assert cap.reached(1000, now, cost_s=0.0)  # the forecasts' cap
    assert BatchCap(seconds=0).reached(1, now, cost_s=0.0)  # 0: each at once

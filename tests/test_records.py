"""Wire formats: parsing and validating observations, forecasts, dead letters and triage."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import ConfigurationError
from pipeline.config import RecordSettings, ServeSettings, StoreSettings
from pipeline.open_steps import OpenHours
from pipeline.records import (
    BAD_CHANNEL,
    BAD_SERIES,
    BAD_TIMESTAMP,
    DEAD_LETTER_MAX_KEY_BYTES,
    DEAD_LETTER_MAX_VALUE_BYTES,
    FLOAT32_MAX,
    FUTURE,
    KEY_MISMATCH,
    MALFORMED_JSON,
    MISSING_CHANNEL,
    MISSING_FIELD,
    NON_FINITE,
    NON_NUMERIC,
    OUT_OF_RANGE,
    TOO_LARGE,
    UNKNOWN_CHANNEL,
    DeadLetter,
    Forecast,
    Observation,
    RawRecord,
    RecordError,
    RecordPolicy,
    channel_problem,
    forecast_to_bytes,
    forecast_to_dict,
    observation_to_bytes,
    parse_observation,
    triage,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR_MS = 3_600_000


def epoch_ms(moment: datetime) -> int:
    """Exact epoch milliseconds by integer arithmetic, independent of the code under test."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def observation_json(**fields: object) -> bytes:
    payload = {"series": "t1", "ts": "2016-07-01T00:00:00Z", "values": {"OT": 30.5}, **fields}
    return json.dumps(payload).encode()


def raw(value: bytes | None, key: bytes | None = b"t1", offset: int = 0) -> RawRecord:
    return RawRecord(topic="observations", partition=2, offset=offset, key=key, value=value)


# --- happy paths -------------------------------------------------------------------------------


def test_iso_timestamp_with_z_is_utc_epoch_ms() -> None:
    obs = parse_observation(observation_json(ts="2016-07-01T00:00:00Z"))

    assert obs == Observation("t1", epoch_ms(datetime(2016, 7, 1, tzinfo=UTC)), {"OT": 30.5})


def test_iso_timestamp_with_offset_is_converted_to_utc() -> None:
    obs = parse_observation(observation_json(ts="2016-07-01T02:00:00+02:00"))

    assert obs.ts_ms == epoch_ms(datetime(2016, 7, 1, 0, 0, tzinfo=UTC))


def test_epoch_ms_integer_is_taken_as_is() -> None:
    ts_ms = epoch_ms(datetime(2024, 1, 1, tzinfo=UTC)) + 123

    assert parse_observation(observation_json(ts=ts_ms)).ts_ms == ts_ms


def test_integer_channel_values_become_floats() -> None:
    obs = parse_observation(observation_json(values={"OT": 3, "HUFL": -1.25}))

    assert obs.values == {"OT": 3.0, "HUFL": -1.25}
    assert all(isinstance(v, float) for v in obs.values.values())


def test_matching_key_is_accepted() -> None:
    assert parse_observation(observation_json(), key=b"t1").series == "t1"


# --- bad input -----------------------------------------------------------------------------------

BIG_VALUES = {f"channel_{i}": float(i) for i in range(5000)}


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        pytest.param(None, None, MALFORMED_JSON, id="no-value"),
        pytest.param(b'{"series": "t1", "ts": 0,', None, MALFORMED_JSON, id="truncated-json"),
        pytest.param(b"\xff\xfe not utf-8", None, MALFORMED_JSON, id="not-utf8"),
        pytest.param(b'["t1", 0, {"OT": 1.0}]', None, MALFORMED_JSON, id="json-array"),
        pytest.param(b"42", None, MALFORMED_JSON, id="json-number"),
        pytest.param(b'{"ts": 0, "values": {"OT": 1}}', None, MISSING_FIELD, id="no-series"),
        pytest.param(observation_json(series=""), None, MISSING_FIELD, id="empty-series"),
        pytest.param(observation_json(series=7), None, MISSING_FIELD, id="numeric-series"),
        pytest.param(b'{"series": "t1", "values": {"OT": 1}}', None, MISSING_FIELD, id="no-ts"),
        pytest.param(observation_json(ts=None), None, MISSING_FIELD, id="null-ts"),
        pytest.param(b'{"series": "t1", "ts": 0}', None, MISSING_FIELD, id="no-values"),
        pytest.param(observation_json(values={}), None, MISSING_FIELD, id="empty-values"),
        pytest.param(observation_json(values=[1.0]), None, MISSING_FIELD, id="values-list"),
        pytest.param(observation_json(values={"OT": "1.5"}), None, NON_NUMERIC, id="string"),
        pytest.param(observation_json(values={"OT": True}), None, NON_NUMERIC, id="bool-true"),
        pytest.param(observation_json(values={"OT": None}), None, NON_NUMERIC, id="null-value"),
        pytest.param(observation_json(values={"OT": [1.0]}), None, NON_NUMERIC, id="list-value"),
        pytest.param(
            b'{"series": "t1", "ts": 0, "values": {"OT": NaN}}', None, NON_FINITE, id="nan"
        ),
        pytest.param(
            b'{"series": "t1", "ts": 0, "values": {"OT": Infinity}}', None, NON_FINITE, id="inf"
        ),
        pytest.param(
            b'{"series": "t1", "ts": 0, "values": {"OT": -Infinity}}',
            None,
            NON_FINITE,
            id="minus-inf",
        ),
        pytest.param(observation_json(ts="2016-07-01T00:00:00"), None, BAD_TIMESTAMP, id="naive"),
        pytest.param(observation_json(ts="yesterday"), None, BAD_TIMESTAMP, id="not-iso"),
        pytest.param(observation_json(ts=True), None, BAD_TIMESTAMP, id="bool-ts"),
        pytest.param(observation_json(ts={"ms": 0}), None, BAD_TIMESTAMP, id="object-ts"),
        pytest.param(
            b'{"series": "t1", "ts": NaN, "values": {"OT": 1}}', None, BAD_TIMESTAMP, id="nan-ts"
        ),
        pytest.param(observation_json(), b"t2", KEY_MISMATCH, id="key-mismatch"),
        pytest.param(observation_json(values=BIG_VALUES), None, TOO_LARGE, id="too-large"),
    ],
)
def test_bad_input_raises_record_error_with_reason(
    value: bytes | None, key: bytes | None, reason: str
) -> None:
    with pytest.raises(RecordError) as caught:
        parse_observation(value, key)

    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"{reason}: ")


def test_size_limit_is_checked_before_parsing() -> None:
    # Not even valid JSON: the size alone decides, so a huge record is never parsed.
    with pytest.raises(RecordError) as caught:
        parse_observation(b"x" * 101, policy=RecordPolicy(max_record_bytes=100))

    assert caught.value.reason == TOO_LARGE


def test_record_at_the_size_limit_is_accepted() -> None:
    value = observation_json()

    assert parse_observation(value, policy=RecordPolicy(max_record_bytes=len(value))).series == "t1"


def test_epoch_ms_out_of_datetime_range_is_bad_timestamp() -> None:
    with pytest.raises(RecordError) as caught:
        parse_observation(observation_json(ts=10**20))

    assert caught.value.reason == BAD_TIMESTAMP


# --- round trips and outgoing formats -------------------------------------------------------------


@pytest.mark.parametrize(
    "ts_ms",
    [
        pytest.param(0, id="epoch"),
        pytest.param(epoch_ms(datetime(2024, 2, 29, 23, tzinfo=UTC)), id="whole-seconds"),
        pytest.param(epoch_ms(datetime(2024, 2, 29, 23, tzinfo=UTC)) + 250, id="milliseconds"),
        pytest.param(-1500, id="before-epoch"),
    ],
)
def test_observation_round_trips_through_bytes(ts_ms: int) -> None:
    obs = Observation("sensor-007", ts_ms, {"load": 41.125, "temp": -3.0})

    assert parse_observation(observation_to_bytes(obs), key=b"sensor-007") == obs


def test_millisecond_iso_timestamp_round_trips_exactly() -> None:
    moment = datetime(2004, 11, 1, 22, 11, 33, 534_000, tzinfo=UTC)
    obs = Observation("t1", epoch_ms(moment), {"OT": 1.0})

    assert parse_observation(observation_to_bytes(obs)).ts_ms == obs.ts_ms


def parse_observation_ts(ts: str) -> int:
    return parse_observation(observation_json(ts=ts)).ts_ms


def make_forecast(horizon: int = 3) -> Forecast:
    return Forecast(
        series="t1",
        issued_at_ms=epoch_ms(datetime(2016, 7, 1, 12, tzinfo=UTC)),
        model_name="rollcast-forecaster",
        model_version="7",
        freq="1h",
        step_ms=HOUR_MS,
        channels=("HUFL", "OT"),
        values=[[float(h), 10.0 + h] for h in range(horizon)],
    )


def test_forecast_dict_has_one_entry_per_horizon_step() -> None:
    forecast = make_forecast(horizon=3)

    body = forecast_to_dict(forecast)

    assert body["series"] == "t1"
    assert body["issued_at"] == "2016-07-01T12:00:00Z"
    assert body["freq"] == "1h"
    assert body["model"] == {"name": "rollcast-forecaster", "version": "7"}
    assert [step["ts"] for step in body["forecast"]] == [
        "2016-07-01T13:00:00Z",
        "2016-07-01T14:00:00Z",
        "2016-07-01T15:00:00Z",
    ]
    assert [(step["HUFL"], step["OT"]) for step in body["forecast"]] == [
        tuple(row) for row in forecast.values
    ]


def test_forecast_step_timestamps_are_issued_at_plus_k_steps() -> None:
    forecast = make_forecast(horizon=24)

    steps = forecast_to_dict(forecast)["forecast"]

    expected = [forecast.issued_at_ms + k * HOUR_MS for k in range(1, 25)]
    assert [parse_observation_ts(step["ts"]) for step in steps] == expected


# --- version 2: one array per channel, with intervals ---------------------------------------------


def with_intervals(forecast: Forecast, message: str = "v2") -> Forecast:
    """``forecast`` with 80% and 95% bounds 1 and 2 (times the step ahead) around its values."""
    values = np.array(forecast.values)  # (H, C)
    ahead = np.arange(1, len(values) + 1)[:, None]
    half = np.stack([ahead * 1.0, ahead * 2.0])[:, :, :1] * np.ones(values.shape)  # (L, H, C)
    return dataclasses.replace(
        forecast,
        message=message,
        interval_levels=(0.8, 0.95),
        lo=values - half,
        hi=values + half,
    )


def test_a_version_2_message_holds_start_step_and_one_array_per_channel_and_bound() -> None:
    forecast = with_intervals(make_forecast(horizon=3))

    body = json.loads(forecast_to_bytes(forecast))

    assert (body["v"], body["start"], body["step"]) == (2, "2016-07-01T13:00:00Z", "1h")
    assert body["issued_at"] == "2016-07-01T12:00:00Z"
    assert body["model"] == {"name": "rollcast-forecaster", "version": "7"}
    assert body["values"] == {"HUFL": [0.0, 1.0, 2.0], "OT": [10.0, 11.0, 12.0]}
    assert body["intervals"]["0.8"]["lo"] == {"HUFL": [-1.0, -1.0, -1.0], "OT": [9.0, 9.0, 9.0]}
    assert body["intervals"]["0.95"]["hi"]["OT"] == [12.0, 15.0, 18.0]
    assert "open_hours" not in body


def test_a_version_2_message_with_two_levels_is_smaller_than_a_version_1_point_forecast() -> None:
    rng = np.random.default_rng(0)
    point = dataclasses.replace(
        make_forecast(horizon=24),
        channels=("load",),
        values=(30 + rng.normal(size=(24, 1))).astype(np.float32).tolist(),  # as serve's
    )

    v1 = forecast_to_bytes(point)
    v2 = forecast_to_bytes(with_intervals(point))

    assert len(v2) < len(v1)
    loaded = json.loads(v2)["values"]["load"]
    np.testing.assert_allclose(loaded, np.array(point.values)[:, 0], rtol=1e-5)  # 6 digits


def test_a_version_2_message_of_an_open_hours_series_starts_at_the_next_open_step() -> None:
    hours = OpenHours.from_text("mon-fri 08:00-18:00")
    friday_5pm = epoch_ms(datetime(2016, 7, 1, 17, tzinfo=UTC))  # a Friday
    forecast = dataclasses.replace(
        make_forecast(), issued_at_ms=friday_5pm, open_hours=hours, message="v2"
    )

    body = json.loads(forecast_to_bytes(forecast))

    assert body["start"] == "2016-07-04T08:00:00Z"  # Monday morning
    assert body["open_hours"] == hours.to_text() and "intervals" not in body


# --- dead letters and triage --------------------------------------------------------------------


def test_dead_letter_headers_carry_reason_and_source() -> None:
    record = RawRecord("observations", partition=2, offset=1234, key=b"t1", value=b"{")
    letter = DeadLetter(record, reason=MALFORMED_JSON, detail="Expecting value")

    headers = dict(letter.headers())

    assert headers["reason"] == b"malformed_json"
    assert headers["source_topic"] == b"observations"
    assert headers["source_partition"] == b"2"
    assert headers["source_offset"] == b"1234"


def test_dead_letter_detail_is_bounded() -> None:
    letter = DeadLetter(raw(b"{"), reason=MALFORMED_JSON, detail="x" * 10_000)

    assert len(dict(letter.headers())["detail"]) <= 1024


def test_triage_splits_good_and_bad_records_keeping_order() -> None:
    records = [
        raw(observation_json(ts=0), offset=0),
        raw(b"not json", offset=1),
        raw(observation_json(ts=HOUR_MS), offset=2),
        raw(observation_json(), key=b"other", offset=3),
        raw(observation_json(ts=2 * HOUR_MS), offset=4),
        raw(observation_json(values={"OT": "hot"}), offset=5),
    ]

    accepted, dead = triage(records)

    assert [record.offset for record, _ in accepted] == [0, 2, 4]
    assert [obs.ts_ms for _, obs in accepted] == [0, HOUR_MS, 2 * HOUR_MS]
    assert [(letter.record.offset, letter.reason) for letter in dead] == [
        (1, MALFORMED_JSON),
        (3, KEY_MISMATCH),
        (5, NON_NUMERIC),
    ]
    assert dead[0].record is records[1]  # dead-lettered unchanged


def test_triage_applies_the_size_limit() -> None:
    accepted, dead = triage([raw(observation_json())], RecordPolicy(max_record_bytes=10))

    assert accepted == []
    assert [letter.reason for letter in dead] == [TOO_LARGE]


# --- hostile records (issue 9): each one is refused with a reason, never raised past triage ----

BIG_INT = "9" * 400


def hostile_json(series: str = '"t1"', ts: str = "0", values: str = '{"OT": 1}') -> bytes:
    """An observation written as JSON text, so it can hold what json.dumps would not write."""
    return f'{{"series": {series}, "ts": {ts}, "values": {values}}}'.encode()


HOSTILE = {
    "a 400-digit value": (hostile_json(values=f'{{"OT": {BIG_INT}}}'), NON_FINITE),
    "a 400-digit timestamp": (hostile_json(ts=BIG_INT), BAD_TIMESTAMP),
    "a 5000-digit value": (hostile_json(values=f'{{"OT": {"9" * 5000}}}'), MALFORMED_JSON),
    "inf in float32": (hostile_json(values='{"OT": 1e39}'), NON_FINITE),
    "near float64 max": (hostile_json(values='{"OT": 1e308}'), NON_FINITE),
    "a lone surrogate series": (hostile_json(series='"x\\ud800"'), BAD_SERIES),
    "a 300-character series": (observation_json(series="s" * 300), BAD_SERIES),
    "a channel named series": (observation_json(values={"series": 1.0}), BAD_CHANNEL),
    "a channel named ts": (observation_json(values={"ts": 1.0}), BAD_CHANNEL),
    "a lone surrogate channel": (hostile_json(values='{"\\udfff": 1}'), BAD_CHANNEL),
}


@pytest.mark.parametrize(("value", "reason"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_records_are_dead_lettered_with_their_reason(value: bytes, reason: str) -> None:
    record = RawRecord("observations", 0, 7, None, value)

    accepted, dead = triage([record, RawRecord("observations", 0, 8, b"t1", observation_json())])

    assert [letter.reason for letter in dead] == [reason]
    assert [r.offset for r, _ in accepted] == [8]  # the good record after it still counts
    assert all(isinstance(v, bytes) for _, v in dead[0].headers())  # sendable headers


def test_the_largest_finite_float32_value_is_accepted() -> None:
    obs = parse_observation(observation_json(values={"OT": 3.4e38}))

    assert obs.values == {"OT": 3.4e38}


def test_a_huge_dead_letter_is_cut_to_fit_the_producer_and_says_so() -> None:
    huge = RawRecord("observations", 2, 9, b"k" * 5000, b"x" * 1_048_500)

    (letter,) = triage([huge])[1]

    assert letter.reason == TOO_LARGE
    assert len(letter.value() or b"") == DEAD_LETTER_MAX_VALUE_BYTES
    assert len(letter.key() or b"") == DEAD_LETTER_MAX_KEY_BYTES
    headers = dict(letter.headers())
    assert headers["truncated_value_bytes"] == b"1048500"
    assert headers["truncated_key_bytes"] == b"5000"
    assert (headers["source_partition"], headers["source_offset"]) == (b"2", b"9")


# --- the record policy ----------------------------------------------------------------------------

NOW_MS = epoch_ms(datetime(2026, 11, 23, tzinfo=UTC))
HOUR_MS = 3_600_000


def produced_at(ts_ms: int, produced_ms: int) -> RawRecord:
    value = observation_json(ts=ts_ms)
    return RawRecord("observations", 0, 0, b"t1", value, timestamp_ms=produced_ms)


@pytest.mark.parametrize(
    ("ts_ms", "produced_ms", "accepted"),
    [
        (NOW_MS + 23 * HOUR_MS, NOW_MS, True),  # within a day of when it was produced
        (NOW_MS + 25 * HOUR_MS, NOW_MS, False),
        (epoch_ms(datetime(2250, 1, 1, tzinfo=UTC)), NOW_MS, False),
        (0, NOW_MS, True),  # a replay of old data
        (NOW_MS, 0, True),  # no Kafka timestamp: the reader's clock is the stream's time
        (NOW_MS + 25 * HOUR_MS, NOW_MS + 48 * HOUR_MS, False),  # a producer's clock is capped
    ],
)
def test_a_timestamp_ahead_of_the_stream_is_refused_as_future(
    ts_ms: int, produced_ms: int, accepted: bool
) -> None:
    policy = RecordPolicy()
    record = produced_at(ts_ms, produced_ms)
    latest = policy.latest_allowed_ms(record.timestamp_ms, NOW_MS)

    if accepted:
        assert parse_observation(record.value, policy=policy, latest_ms=latest).ts_ms == ts_ms
    else:
        with pytest.raises(RecordError) as caught:
            parse_observation(record.value, policy=policy, latest_ms=latest)
        assert caught.value.reason == FUTURE


def test_triage_refuses_a_far_future_record_with_the_wall_clock() -> None:
    good, future = produced_at(0, 1), produced_at(epoch_ms(datetime(2250, 1, 1, tzinfo=UTC)), 0)

    accepted, dead = triage([good, future])

    assert [record for record, _ in accepted] == [good]
    assert [letter.reason for letter in dead] == [FUTURE]


def test_the_magnitude_limit_is_a_setting() -> None:
    policy = RecordPolicy(max_abs_value=1e6)

    assert (
        parse_observation(observation_json(values={"OT": -1e6}), policy=policy).values["OT"] == -1e6
    )
    with pytest.raises(RecordError) as caught:
        parse_observation(observation_json(values={"OT": 1.5e6}), policy=policy)
    assert caught.value.reason == OUT_OF_RANGE


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"OT": 1.0, "HUFL": 2.0}, None),
        ({"OT": 1.0}, MISSING_CHANNEL),
        ({"OT": 1.0, "HUFL": 2.0, "foo": 3.0}, UNKNOWN_CHANNEL),
        ({"OT": 1.0, "foo": 3.0}, MISSING_CHANNEL),
    ],
)
def test_a_record_must_carry_exactly_its_series_channels(
    values: dict[str, float], problem: str | None
) -> None:
    found = channel_problem(frozenset({"OT", "HUFL"}), values)

    assert (found and found[0]) == problem


def test_record_settings_build_the_policy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_MAX_AHEAD_S", "60")
    monkeypatch.setenv("ROLLCAST_MAX_ABS_VALUE", "1e9")
    monkeypatch.setenv("ROLLCAST_GRACE_STEPS", "2")
    monkeypatch.setenv("ROLLCAST_MAX_JUMP_STEPS", "48")

    policy = RecordSettings().policy()

    assert (policy.max_ahead_ms, policy.max_abs_value, policy.grace_steps) == (60_000, 1e9, 2)
    assert policy.max_jump_steps == policy.jump_rule().max_jump_steps == 48
    assert policy.max_record_bytes == RecordPolicy().max_record_bytes


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ROLLCAST_MAX_AHEAD_S", "-1"),
        ("ROLLCAST_MAX_AHEAD_S", "nan"),
        ("ROLLCAST_MAX_ABS_VALUE", "0"),
        ("ROLLCAST_GRACE_STEPS", "-2"),
        ("ROLLCAST_MAX_RECORD_BYTES", "0"),
        ("ROLLCAST_MAX_JUMP_STEPS", "0"),  # every step would be a jump
        ("ROLLCAST_MAX_JUMP_STEPS", "2000000"),
    ],
)
def test_a_nonsensical_bound_is_refused_when_settings_are_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    # The settings' own error (ConfigurationError) or pydantic's, naming the variable.
    name = variable.removeprefix("ROLLCAST_")
    with pytest.raises((ValidationError, ConfigurationError), match=f"(?i){name}"):
        RecordSettings()


@pytest.mark.parametrize(
    ("settings", "variable", "value"),
    [
        (ServeSettings, "ROLLCAST_MAX_NEW_SERIES", "0"),
        (ServeSettings, "ROLLCAST_MAX_SERIES", "0"),
        (StoreSettings, "ROLLCAST_FREQ", "MS"),  # months have no fixed length
        (StoreSettings, "ROLLCAST_FREQ", "hourly"),
    ],
)
def test_serve_and_store_settings_refuse_what_would_break_the_loops(
    monkeypatch: pytest.MonkeyPatch, settings: type, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises((ValidationError, ConfigurationError)):
        settings()


def test_forecasts_are_version_2_unless_the_variable_asks_for_version_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROLLCAST_FORECAST_FORMAT", raising=False)
    assert ServeSettings().forecast_format == "v2"

    monkeypatch.setenv("ROLLCAST_FORECAST_FORMAT", "v1")  # for existing consumers
    assert ServeSettings().forecast_format == "v1"

    monkeypatch.setenv("ROLLCAST_FORECAST_FORMAT", "v3")
    with pytest.raises((ValidationError, ConfigurationError), match=r"(?i)forecast_format"):
        ServeSettings()


def test_a_version_2_interval_around_the_largest_values_stays_numbers() -> None:
    # Values the record policy accepts (finite in float32), with an interval past that range.
    edge = 3.4e38
    values = np.array([[edge, -edge]] * 3)
    forecast = dataclasses.replace(
        make_forecast(horizon=3),
        message="v2",
        values=values.tolist(),
        interval_levels=(0.8,),
        lo=(values - 1e39)[None],
        hi=(values + 1e39)[None],
    )

    body = json.loads(forecast_to_bytes(forecast))

    bounds = body["intervals"]["0.8"]
    numbers = [*bounds["lo"]["HUFL"], *bounds["hi"]["OT"], *body["values"]["OT"]]
    assert all(isinstance(n, float) and np.isfinite(n) for n in numbers)
    assert bounds["hi"]["HUFL"][0] == pytest.approx(FLOAT32_MAX, rel=1e-5)

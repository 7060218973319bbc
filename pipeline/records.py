"""Wire formats: observations in, forecasts and dead letters out (JSON, UTF-8).

An observation's Kafka key is its series id and its value is::

    {"series": "t1", "ts": "2016-07-01T00:00:00Z", "values": {"OT": 30.53, "HUFL": 5.83}}

``ts`` is ISO-8601 with a zone, or epoch milliseconds. Anything else raises
:class:`RecordError`, whose ``reason`` becomes the dead-letter header.

>>> obs = parse_observation(b'{"series": "t1", "ts": 0, "values": {"OT": 1.5}}')
>>> obs.series, obs.ts_ms, obs.values
('t1', 0, {'OT': 1.5})
>>> parse_observation(b'{"series": "t1", "ts": 0, "values": {"OT": NaN}}')
Traceback (most recent call last):
...
pipeline.records.RecordError: non_finite: value 'OT' is NaN or infinite in float32
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from pipeline import RollcastError
from pipeline.open_steps import OpenHours, steps_from
from pipeline.windows import JumpRule, format_timestamp

logger = logging.getLogger(__name__)

# Reasons carried in the dead-letter `reason` header.
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
BAD_TIMESTAMP = "bad_timestamp"
NON_NUMERIC = "non_numeric"
NON_FINITE = "non_finite"
KEY_MISMATCH = "key_mismatch"
TOO_LARGE = "too_large"
OUT_OF_RANGE = "out_of_range"  # finite, but beyond the policy's magnitude limit
# Further ahead of the stream's time than the policy allows, or (relative to its series)
# more than ``max_jump_steps`` ahead of the series' newest step and never confirmed.
FUTURE = "future"
LATE = "late"  # older than the series' newest step by more than the grace period
MISSING_CHANNEL = "missing_channel"
UNKNOWN_CHANNEL = "unknown_channel"  # a channel its series does not have
OTHER_CONTRACT = "other_contract"  # a new series sharing no channel with the stored ones
BAD_SERIES = "bad_series"  # not valid UTF-8 text, or too long
BAD_CHANNEL = "bad_channel"  # a reserved, too long or non-UTF-8 channel name
INVALID = "invalid"  # anything else that failed on the record's path; the detail names it

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pandas holds times as int64 nanoseconds: about 1677-09-21 to 2262-04-11. Stay inside it.
MIN_TS_MS = -9_223_372_036_854
MAX_TS_MS = 9_223_372_036_854

# A record bigger than this is refused before parsing; a real observation is a few hundred bytes.
DEFAULT_MAX_RECORD_BYTES = 65536
# Series ids become message keys and metric labels: bounded, like Kafka topic names (249).
MAX_SERIES_ID_CHARS = 256
MAX_CHANNEL_NAME_CHARS = 256
# Channel names that would collide with the columns every frame and message already has.
RESERVED_NAMES = frozenset({"series", "ts", "step"})
# Values must stay finite in float32, the dtype of every window and model.
FLOAT32_MAX = 3.4028234663852886e38
# How far an observation may lie ahead of the stream's time (see RecordPolicy).
DEFAULT_MAX_AHEAD_MS = 24 * 3600 * 1000
# Steps a record may lie ahead of its series' newest step and be accepted on its own word. A
# stray record within reach makes the steps it skips late: at most this many, half a day of an
# hourly series. A longer real jump (an outage) costs nothing in a batch that holds two records
# after it, at most its first record otherwise (refused as `future`; the second resumes it).
DEFAULT_MAX_JUMP_STEPS = 12
# A dead letter's key and value beyond these are cut, keeping it far inside the producer's
# request limit (1 MiB by default) whatever a producer sent; the headers say by how much.
DEAD_LETTER_MAX_VALUE_BYTES = 256 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 1024
# The wire formats of a forecast: "v1", a list of steps each with its time (the first format);
# "v2", one array per channel and interval bound (forecast_to_dict_v2).
FORECAST_FORMATS = ("v1", "v2")
# Digits a version-2 message keeps of each number: a relative precision of 1e-6, far below
# any forecast's error, at about 8 characters a number.
SIGNIFICANT_DIGITS = 6


class RecordError(RollcastError):
    """A record that cannot be accepted; ``reason`` is one of the reason constants above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    """What an observation must be to be accepted: the one policy of ingest, serve and training.

    * at most ``max_record_bytes`` of JSON;
    * values finite in float32 and within ``max_abs_value``;
    * a timestamp at most ``max_ahead_ms`` after the stream's time, the record's Kafka
      timestamp (when it was produced) capped at the reader's clock: an observation cannot be
      of a moment that had not come when it was sent. A record of 2250 is refused as ``future``
      and never moves its series' clock;
    * per series (checked by the loops, see :func:`channel_problem`): the channels of its first
      accepted record, no more and no fewer; a step older than the series' newest accepted
      step by more than ``grace_steps`` is ``late`` unless it repeats a step still held (a
      duplicate): in serve's window, among the newest ``grace_steps + 8`` steps ingest keeps of
      each series;
    * per series, the clock never jumps on the word of one record
      (:class:`pipeline.windows.JumpRule`): a step more than ``max_jump_steps`` ahead of the
      series' newest is held until a second record near it confirms it, else it is ``future``
      (relative to the series) by the end of its batch. Keep it above ``grace_steps``.
    """

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_abs_value: float = FLOAT32_MAX
    max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS
    grace_steps: int = 0
    max_jump_steps: int = DEFAULT_MAX_JUMP_STEPS

    def latest_allowed_ms(self, produced_ms: int, now_ms: int) -> int:
        """The newest timestamp accepted in a record produced at ``produced_ms`` (0: unknown)."""
        stream_ms = min(produced_ms, now_ms) if produced_ms > 0 else now_ms
        return stream_ms + self.max_ahead_ms

    def jump_rule(self) -> JumpRule:
        """The rule that keeps one record from moving its series' clock far ahead."""
        return JumpRule(self.max_jump_steps)

    def check_value(self, channel: str, value: Any) -> float:
        """The value as a float within the policy's bounds; raises :class:`RecordError`."""
        number = _float_value(channel, value)
        if abs(number) > self.max_abs_value:
            raise RecordError(OUT_OF_RANGE, f"value {channel!r} exceeds {self.max_abs_value:g}")
        return number


DEFAULT_POLICY = RecordPolicy()


def channel_problem(expected: Collection[str], values: Collection[str]) -> tuple[str, str] | None:
    """``(reason, detail)`` if an observation's channels are not exactly its series' channels."""
    if len(values) == len(expected) and all(c in expected for c in values):
        return None
    missing = sorted(set(expected) - set(values))
    if missing:
        return MISSING_CHANNEL, f"the series has channels {missing[:8]} too"
    extra = sorted(set(values) - set(expected))
    return UNKNOWN_CHANNEL, f"the series has no channels {[c[:64] for c in extra[:8]]}"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka record, before parsing; kept so it can be dead-lettered unchanged."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()
    # Re-read only to rebuild state after a restart or rebalance: already served once.
    rewound: bool = False

    def header(self, name: str) -> str | None:
        """The first header called ``name``, decoded, or None."""
        return next((v.decode() for k, v in self.headers if k == name), None)


@dataclass(frozen=True, slots=True)
class Observation:
    """One validated observation: a series id, a UTC time in epoch ms, and finite channel values."""

    series: str
    ts_ms: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class Forecast:
    """``horizon`` future steps of every channel of one series, issued at its last step."""

    series: str
    issued_at_ms: int
    model_name: str
    model_version: str
    freq: str
    step_ms: int
    channels: tuple[str, ...]
    values: list[list[float]]  # (horizon, channels)
    open_hours: OpenHours | None = None  # set: the steps are the open steps after issued_at
    message: str = "v1"  # the wire format (FORECAST_FORMATS)
    # The prediction intervals (version 2 only): their levels and bounds (L, horizon, channels).
    interval_levels: tuple[float, ...] = ()
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


@dataclass(frozen=True)
class ForecastBatch:
    """The forecasts of one serve batch, as arrays until their bytes are written
    (:meth:`messages`); :meth:`forecast` is one of them as a :class:`Forecast`."""

    series: list[str]
    issued_at_ms: np.ndarray  # (B,)
    model_name: str
    model_version: str
    freq: str
    step_ms: int
    channels: tuple[str, ...]
    values: np.ndarray  # (B, horizon, channels)
    open_hours: OpenHours | None = None
    message: str = "v1"
    interval_levels: tuple[float, ...] = ()
    lo: np.ndarray | None = None  # (L, B, horizon, channels)
    hi: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.series)

    def forecast(self, i: int, values: list[list[float]] | None = None) -> Forecast:
        """The ``i``-th forecast (``values``: its rows as Python floats, if already made)."""
        return Forecast(
            self.series[i],
            int(self.issued_at_ms[i]),
            self.model_name,
            self.model_version,
            self.freq,
            self.step_ms,
            self.channels,
            self.values[i].tolist() if values is None else values,
            self.open_hours,
            self.message,
            self.interval_levels,
            None if self.lo is None else self.lo[:, i],
            None if self.hi is None else self.hi[:, i],
        )

    def messages(self) -> Iterator[tuple[bytes, bytes]]:
        """Each forecast's key and value, the bytes :func:`forecast_to_bytes` writes."""
        if self.message == "v2":
            yield from _v2_messages(self)
            return
        rows = self.values.tolist()  # one conversion for the batch
        for i, series in enumerate(self.series):
            yield series.encode(), forecast_to_bytes(self.forecast(i, rows[i]))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record with the reason, bound for the dead-letter topic."""

    record: RawRecord
    reason: str
    detail: str

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("reason", self.reason.encode()),
            ("detail", self.detail.encode("utf-8", "backslashreplace")[:1024]),
            ("source_topic", self.record.topic.encode()),
            ("source_partition", str(self.record.partition).encode()),
            ("source_offset", str(self.record.offset).encode()),
        ]
        for name, data, limit in (
            ("key", self.record.key, DEAD_LETTER_MAX_KEY_BYTES),
            ("value", self.record.value, DEAD_LETTER_MAX_VALUE_BYTES),
        ):
            if data is not None and len(data) > limit:
                headers.append((f"truncated_{name}_bytes", str(len(data)).encode()))
        return headers

    def key(self) -> bytes | None:
        """The original key, cut to :data:`DEAD_LETTER_MAX_KEY_BYTES`."""
        key = self.record.key
        return key if key is None else key[:DEAD_LETTER_MAX_KEY_BYTES]

    def value(self) -> bytes | None:
        """The original value, cut to :data:`DEAD_LETTER_MAX_VALUE_BYTES`.

        The whole record stays in the source topic at ``source_partition``/``source_offset``.
        """
        value = self.record.value
        return value if value is None else value[:DEAD_LETTER_MAX_VALUE_BYTES]


def parse_observation(
    value: bytes | None,
    key: bytes | None = None,
    policy: RecordPolicy = DEFAULT_POLICY,
    latest_ms: int = MAX_TS_MS,
) -> Observation:
    """Parse and validate one observation value; raise :class:`RecordError` on bad input.

    ``latest_ms`` is the newest timestamp accepted (:meth:`RecordPolicy.latest_allowed_ms`).
    """
    if value is None:
        raise RecordError(MALFORMED_JSON, "record has no value")
    if len(value) > policy.max_record_bytes:
        limit = policy.max_record_bytes
        raise RecordError(TOO_LARGE, f"{len(value)} bytes exceeds the limit of {limit}")
    payload = _decode_json(value)
    series = _series_id(payload, key)
    ts_ms = parse_timestamp(_field(payload, "ts"))
    if ts_ms > latest_ms:
        raise RecordError(
            FUTURE, f"timestamp {format_timestamp(ts_ms)} is after {format_timestamp(latest_ms)}"
        )
    return Observation(series=series, ts_ms=ts_ms, values=_channel_values(payload, policy))


def _decode_json(value: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(value)  # fast, and strict: no NaN or Infinity tokens
    except orjson.JSONDecodeError:
        # The standard parser reads NaN/Infinity, so such values are refused as non_finite,
        # and it gives the error message for broken JSON.
        try:
            payload = json.loads(value)
        except ValueError as err:  # broken JSON, bad UTF-8, an integer of over 4300 digits
            raise RecordError(MALFORMED_JSON, str(err)) from err
    if not isinstance(payload, dict):
        raise RecordError(MALFORMED_JSON, f"expected a JSON object, got {type(payload).__name__}")
    return payload


def _field(payload: dict[str, Any], name: str) -> Any:
    if name not in payload or payload[name] is None:
        raise RecordError(MISSING_FIELD, f"field {name!r} is missing")
    return payload[name]


def _series_id(payload: dict[str, Any], key: bytes | None) -> str:
    series = _field(payload, "series")
    if not isinstance(series, str) or not series:
        raise RecordError(MISSING_FIELD, "field 'series' must be a non-empty string")
    if len(series) > MAX_SERIES_ID_CHARS or not _is_utf8(series):
        raise RecordError(
            BAD_SERIES,
            f"series {series[:64]!r} must be UTF-8 of at most {MAX_SERIES_ID_CHARS} characters",
        )
    if key is not None and key.decode("utf-8", "replace") != series:
        raise RecordError(KEY_MISMATCH, f"key {key!r} differs from series {series!r}")
    return series


def _channel_values(payload: dict[str, Any], policy: RecordPolicy) -> dict[str, float]:
    values = _field(payload, "values")
    if not isinstance(values, dict) or not values:
        raise RecordError(MISSING_FIELD, "field 'values' must be a non-empty object")
    parsed: dict[str, float] = {}
    for channel, value in values.items():
        _check_channel_name(channel)
        parsed[channel] = policy.check_value(channel, value)
    return parsed


def _is_utf8(text: str) -> bool:
    """False for a string with a lone surrogate (``"\\ud800"``), which no UTF-8 output can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_channel_name(channel: str) -> None:
    if channel in RESERVED_NAMES or not channel or len(channel) > MAX_CHANNEL_NAME_CHARS:
        raise RecordError(
            BAD_CHANNEL,
            f"channel {channel[:64]!r} must be 1 to {MAX_CHANNEL_NAME_CHARS} characters and not "
            f"one of {sorted(RESERVED_NAMES)}",
        )
    if not _is_utf8(channel):
        raise RecordError(BAD_CHANNEL, f"channel {channel[:64]!r} is not UTF-8 text")


def _float_value(channel: str, value: Any) -> float:
    """The value as a float that is finite in float32; raises for anything else."""
    # bool is an int subclass in Python, but `true` is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(NON_NUMERIC, f"value {channel!r} is {str(value)[:64]!r}, not a number")
    try:
        number = float(value)  # an integer of 400 digits overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise RecordError(NON_FINITE, f"value {channel!r} is NaN or infinite in float32")
    return number


def parse_timestamp(ts: Any) -> int:
    """Epoch milliseconds (UTC) from ISO-8601 with a zone, or from epoch milliseconds."""
    if isinstance(ts, bool):
        raise RecordError(BAD_TIMESTAMP, f"timestamp {ts!r} is not a time")
    if isinstance(ts, float) and not math.isfinite(ts):
        raise RecordError(BAD_TIMESTAMP, f"timestamp {ts!r} is not finite")
    if isinstance(ts, int | float):
        return _in_range(int(ts), str(ts)[:32])
    if not isinstance(ts, str):
        raise RecordError(BAD_TIMESTAMP, f"timestamp {ts!r} is neither a string nor a number")
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError as err:
        raise RecordError(BAD_TIMESTAMP, f"timestamp {ts!r} is not ISO-8601") from err
    if parsed.tzinfo is None:
        raise RecordError(BAD_TIMESTAMP, f"timestamp {ts!r} has no time zone")
    # Integer arithmetic: float seconds * 1000 loses a millisecond on some dates.
    return _in_range((parsed - EPOCH) // timedelta(milliseconds=1), ts)


def _in_range(ts_ms: int, original: Any) -> int:
    if not MIN_TS_MS <= ts_ms <= MAX_TS_MS:
        raise RecordError(BAD_TIMESTAMP, f"timestamp {original!r} is outside 1678-2261")
    return ts_ms


def observation_to_bytes(obs: Observation) -> bytes:
    payload = {"series": obs.series, "ts": format_timestamp(obs.ts_ms), "values": obs.values}
    return json.dumps(payload, separators=(",", ":")).encode()


def forecast_to_dict(forecast: Forecast) -> dict[str, Any]:
    times = _step_times(
        forecast.issued_at_ms, forecast.step_ms, len(forecast.values), forecast.open_hours
    )
    channels = forecast.channels
    if len(channels) == 1:  # the common case, twice as fast without the zip
        (channel,) = channels
        steps = [
            {"ts": ts, channel: row[0]} for ts, row in zip(times, forecast.values, strict=True)
        ]
    else:
        steps = [
            {"ts": ts, **dict(zip(channels, row, strict=True))}
            for ts, row in zip(times, forecast.values, strict=True)
        ]
    return {
        "series": forecast.series,
        "issued_at": _timestamp(forecast.issued_at_ms),
        "model": {"name": forecast.model_name, "version": forecast.model_version},
        "freq": forecast.freq,
        "forecast": steps,
    }


# Every series is forecast for the same few steps at a time, so formatting their timestamps once
# saves most of the cost of a forecast message. Both caches are bounded (about 10 MB when full).
_timestamp = functools.lru_cache(maxsize=4096)(format_timestamp)


@functools.lru_cache(maxsize=4096)
def _step_times(
    issued_at_ms: int, step_ms: int, horizon: int, hours: OpenHours | None
) -> tuple[str, ...]:
    if hours is None:
        return tuple(format_timestamp(issued_at_ms + (h + 1) * step_ms) for h in range(horizon))
    times = steps_from(np.array([issued_at_ms]), step_ms, np.arange(1, horizon + 1), hours)[0]
    return tuple(map(format_timestamp, times.tolist()))


def forecast_to_bytes(forecast: Forecast) -> bytes:
    """The forecast's JSON in its format (orjson: the serve loop writes one per record)."""
    if forecast.message == "v2":
        return orjson.dumps(forecast_to_dict_v2(forecast), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(forecast_to_dict(forecast))


def forecast_to_dict_v2(forecast: Forecast) -> dict[str, Any]:
    """Version 2: the first step's time and the step once, then one array per channel for the
    point forecast and for each bound of each interval level, numbers to
    :data:`SIGNIFICANT_DIGITS` digits::

        {"v": 2, "series": "t1", "issued_at": "...", "start": "...", "step": "1h",
         "model": {"name": "rollcast", "version": "3"}, "values": {"OT": [30.5, ...]},
         "intervals": {"0.8": {"lo": {"OT": [...]}, "hi": {"OT": [...]}}, "0.95": ...}}

    For series with open hours, ``open_hours`` holds the weekly schedule and the steps are the
    open steps from ``start`` on.
    """
    hours = forecast.open_hours
    start = _step_times(forecast.issued_at_ms, forecast.step_ms, 1, hours)[0]
    message: dict[str, Any] = {
        "v": 2,
        "series": forecast.series,
        "issued_at": _timestamp(forecast.issued_at_ms),
        "start": start,
        "step": forecast.freq,
        "model": {"name": forecast.model_name, "version": forecast.model_version},
    }
    if hours is not None:
        message["open_hours"] = hours.to_text()
    message["values"] = _by_channel(forecast.channels, np.asarray(forecast.values))
    if forecast.lo is not None and forecast.hi is not None:
        message["intervals"] = {
            f"{level:g}": {
                "lo": _by_channel(forecast.channels, forecast.lo[k]),
                "hi": _by_channel(forecast.channels, forecast.hi[k]),
            }
            for k, level in enumerate(forecast.interval_levels)
        }
    return message


def _by_channel(channels: tuple[str, ...], values: np.ndarray) -> dict[str, np.ndarray]:
    """``{channel: its (horizon,) values}`` of ``values`` ``(horizon, channels)``, each a
    contiguous float32 array of :func:`significant` numbers (orjson writes them short). A bound
    past float32's range (an interval around values near it) is written as that range's end,
    a number, not the ``null`` an infinity would become."""
    return dict(zip(channels, _channel_rows(values), strict=True))


def _v2_messages(batch: ForecastBatch) -> Iterator[tuple[bytes, bytes]]:
    """Version-2 messages of a batch, from a template: every number of the batch is rounded
    and written by one ``orjson`` call, and each message is its own key, times and rows of
    numbers set between the parts every message shares."""
    if not len(batch):
        return
    rows = _number_rows(batch)  # each message's arrays, in the order the template holds them
    parts = _template(batch)
    per_message = len(parts) - 1
    step, hours = batch.step_ms, batch.open_hours
    issued = batch.issued_at_ms.tolist()
    for i, (series, issued_at_ms) in enumerate(zip(batch.series, issued, strict=True)):
        start = _step_times(issued_at_ms, step, 1, hours)[0]
        head = b'{"v":2,"series":%b,"issued_at":"%b","start":"%b"' % (
            orjson.dumps(series),
            _timestamp(issued_at_ms).encode(),
            start.encode(),
        )
        mine = rows[i * per_message : (i + 1) * per_message]
        body = [piece for pair in zip(parts, mine, strict=False) for piece in pair]
        yield series.encode(), b"".join([head, *body, parts[-1]])


def _number_rows(batch: ForecastBatch) -> list[bytes]:
    """The text of each ``(horizon,)`` array of every message, message by message: its
    channels' values, then per level the lower bounds' channels and the upper ones'."""
    arrays = [_channel_rows(batch.values)[:, None]]  # (B, 1, C, H)
    if batch.lo is not None and batch.hi is not None:
        for lo, hi in zip(_channel_rows(batch.lo), _channel_rows(batch.hi), strict=True):
            arrays += [lo[:, None], hi[:, None]]  # (B, 1, C, H) each
    numbers = np.concatenate(arrays, axis=1)  # (B, 1 + 2L, C, H)
    text = orjson.dumps(numbers.reshape(-1, numbers.shape[-1]), option=orjson.OPT_SERIALIZE_NUMPY)
    return text[2:-2].split(b"],[")  # numbers hold no brackets: one piece per row


def _template(batch: ForecastBatch) -> list[bytes]:
    """The parts of a batch's version-2 messages between their rows of numbers (the first
    follows each message's own head)."""
    shared: dict[str, Any] = {"step": batch.freq}
    shared["model"] = {"name": batch.model_name, "version": batch.model_version}
    if batch.open_hours is not None:
        shared["open_hours"] = batch.open_hours.to_text()
    keys = [orjson.dumps(channel) for channel in batch.channels]
    parts = [b"," + orjson.dumps(shared)[1:-1] + b',"values":{' + keys[0] + b":["]
    parts += [b"]," + key + b":[" for key in keys[1:]]
    for k, level in enumerate(batch.interval_levels if batch.lo is not None else ()):
        opening = b'},"intervals":{' if k == 0 else b"}},"
        for side in ("lo", "hi"):
            lead = b'"%b":{"lo":{' % f"{level:g}".encode() if side == "lo" else b'},"hi":{'
            parts.append(b"]" + (opening if side == "lo" else b"") + lead + keys[0] + b":[")
            parts += [b"]," + key + b":[" for key in keys[1:]]
    closing = b"]}}}}" if batch.lo is not None and batch.interval_levels else b"]}}"
    return [*parts, closing]


def _channel_rows(values: np.ndarray) -> np.ndarray:
    """``(..., C, H)``: values ``(..., H, C)`` as :func:`_by_channel` writes them, contiguous."""
    rounded = np.clip(significant(values.astype(np.float64)), -FLOAT32_MAX, FLOAT32_MAX)
    return np.ascontiguousarray(rounded.swapaxes(-1, -2), dtype=np.float32)


def significant(values: np.ndarray, digits: int = 0) -> np.ndarray:
    """``values`` rounded to ``digits`` (default :data:`SIGNIFICANT_DIGITS`) significant digits.

    >>> rounded = significant(np.array([30.5312371, 0.000123456789, 0.0])).astype(np.float32)
    >>> orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY)
    b'[30.5312,0.000123457,0.0]'
    """
    digits = digits or SIGNIFICANT_DIGITS
    magnitude = np.floor(np.log10(np.abs(np.where(values == 0, 1.0, values))))
    unit = 10.0 ** (magnitude - (digits - 1))
    return np.round(values / unit) * unit


def triage(
    records: list[RawRecord], policy: RecordPolicy = DEFAULT_POLICY
) -> tuple[list[tuple[RawRecord, Observation]], list[DeadLetter]]:
    """Split consumed records into parsed observations and dead letters with their reasons."""
    accepted: list[tuple[RawRecord, Observation]] = []
    dead: list[DeadLetter] = []
    now_ms = int(time.time() * 1000)
    for record in records:
        try:
            latest_ms = policy.latest_allowed_ms(record.timestamp_ms, now_ms)
            obs = parse_observation(record.value, record.key, policy, latest_ms)
            accepted.append((record, obs))
        except RecordError as err:
            dead.append(DeadLetter(record, err.reason, err.detail))
        except Exception as err:  # no record may stop a loop: it becomes a dead letter
            dead.append(invalid_letter(record, err))
    return accepted, dead


def invalid_letter(record: RawRecord, err: Exception) -> DeadLetter:
    """The dead letter of a record whose handling failed unexpectedly, naming the error."""
    logger.warning("record at offset %d refused: %r", record.offset, err)
    return DeadLetter(record, INVALID, f"{type(err).__name__}: {err}"[:512])

"""Hypothesis strategies of hostile observations, each with the reason it must be refused for.

Every record is what a producer could really send to the observations topic: any key, any
bytes. The targets are the series of a healthy fleet (``s0``...), which the tests send first, so
series-level refusals (``late``, channels) have a series to be measured against. Shared by the
fuzz tests and ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import strategies as st

from pipeline.records import MAX_CHANNEL_NAME_CHARS, MAX_SERIES_ID_CHARS, RESERVED_NAMES

CHANNEL = "load"
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
BIG_INT = "9" * 400  # overflows a float; Python's int parser takes it
FUTURE_ISO = "2250-01-01T00:00:00Z"


@dataclass(frozen=True)
class Poison:
    kind: str
    key: bytes | None
    value: bytes | None
    reason: str


def _json(series: str = '"s0"', ts: str | None = None, values: str | None = None) -> bytes:
    """Raw JSON text, so fields can hold what ``json.dumps`` would never write."""
    ts = str(T0_MS) if ts is None else ts
    values = f'{{"{CHANNEL}": 1.0}}' if values is None else values
    return f'{{"series": {series}, "ts": {ts}, "values": {values}}}'.encode()


def _poison(kind: str, reason: str, value: bytes | None, key: bytes | None = b"s0") -> Poison:
    return Poison(kind, key, value, reason)


series_ids = st.sampled_from(["s0", "s1", "s2"])
junk_text = st.text(min_size=1, max_size=40)

malformed = st.one_of(
    st.binary(min_size=1, max_size=64)
    .filter(lambda b: not _parses(b))
    .map(lambda b: _poison("garbage bytes", "malformed_json", b)),
    junk_text.map(lambda t: _poison("cut JSON", "malformed_json", _json()[: -1 - len(t) % 20])),
    st.sampled_from([b"[1, 2]", b'"s0"', b"42", b"null", b"true"]).map(
        lambda b: _poison("not an object", "malformed_json", b)
    ),
    st.just(_poison("tombstone", "malformed_json", None)),
    st.just(_poison("invalid UTF-8", "malformed_json", b'{"series": "s0\xff", "ts": 0}', None)),
)

missing = st.one_of(
    st.sampled_from(["series", "ts", "values"]).map(
        lambda field: _poison(
            f"no {field}",
            "missing_field",
            json.dumps({k: v for k, v in json.loads(_json()).items() if k != field}).encode(),
        )
    ),
    st.sampled_from(['""', "17", "null", "[]"]).map(
        lambda s: _poison(f"series {s}", "missing_field", _json(series=s), None)
    ),
    st.sampled_from(["{}", "[]", '"x"', "1"]).map(
        lambda v: _poison(f"values {v}", "missing_field", _json(values=v))
    ),
)

bad_series = st.one_of(
    st.text(min_size=MAX_SERIES_ID_CHARS + 1, max_size=MAX_SERIES_ID_CHARS + 50).map(
        lambda s: _poison("long series id", "bad_series", _json(series=json.dumps(s)), None)
    ),
    junk_text.map(
        lambda s: _poison(
            "lone surrogate in the id",
            "bad_series",
            _json(series='"' + json.dumps(s[:8])[1:-1] + '\\ud800"'),
            None,
        )
    ),
)

key_mismatch = (
    st.tuples(series_ids, junk_text)
    .filter(lambda p: p[0] != p[1])
    .map(lambda p: _poison("key differs", "key_mismatch", _json(series=f'"{p[0]}"'), p[1].encode()))
)

bad_timestamp = st.sampled_from(
    [
        "true",
        '"yesterday"',
        '"2016-07-01T00:00:00"',  # no zone
        BIG_INT,
        "NaN",
        "[1]",
        "99999999999999999",  # beyond pandas' 2262
        '"10000-01-01T00:00:00Z"',
    ]
).map(lambda ts: _poison(f"ts {ts[:20]}", "bad_timestamp", _json(ts=ts)))

future = st.one_of(
    st.just(_poison("ts in 2250", "future", _json(ts=f'"{FUTURE_ISO}"'))),
    st.integers(min_value=2, max_value=10_000).map(
        lambda days: _poison(
            "ts days ahead", "future", _json(ts=str(_now_ms() + days * 86_400_000))
        )
    ),
)

non_numeric = st.sampled_from(['"abc"', "[1]", '{"a": 1}', "true", "null", '""']).map(
    lambda v: _poison(f"value {v}", "non_numeric", _json(values=f'{{"{CHANNEL}": {v}}}'))
)

non_finite = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e39", "-1e39", "1e308", BIG_INT, "-" + BIG_INT]
).map(lambda v: _poison(f"value {v[:10]}", "non_finite", _json(values=f'{{"{CHANNEL}": {v}}}')))

bad_channel = st.one_of(
    st.sampled_from(["series", "ts", "step", ""]).map(
        lambda c: _poison(f"channel {c!r}", "bad_channel", _json(values=f'{{"{c}": 1.0}}'))
    ),
    st.text(min_size=MAX_CHANNEL_NAME_CHARS + 1, max_size=MAX_CHANNEL_NAME_CHARS + 20).map(
        lambda c: _poison(
            "long channel", "bad_channel", _json(values=json.dumps({CHANNEL: 1.0, c: 1.0}))
        )
    ),
    st.just(_poison("surrogate channel", "bad_channel", _json(values='{"x\\udc00": 1.0}'))),
)

too_large = st.integers(min_value=1, max_value=200_000).map(
    lambda pad: _poison(
        "padded record",
        "too_large",
        _json(values=json.dumps({CHANNEL: 1.0})) + b" " * (70_000 + pad),
    )
)

# Aimed at a healthy series that already has step 0: the same policy in ingest and serve.
series_level = st.one_of(
    st.tuples(series_ids, st.integers(1, 1000)).map(
        lambda p: _poison(
            "older than the series",
            "late",
            _json(f'"{p[0]}"', str(T0_MS - p[1] * 3_600_000)),
            p[0].encode(),
        )
    ),
    st.tuples(series_ids, junk_text.filter(lambda c: c != CHANNEL and c not in RESERVED_NAMES)).map(
        lambda p: _poison(
            "an extra channel",
            "unknown_channel",
            _json(f'"{p[0]}"', values=json.dumps({CHANNEL: 1.0, p[1]: 2.0})),
            p[0].encode(),
        )
    ),
    series_ids.map(
        lambda s: _poison(
            "a missing channel",
            "missing_channel",
            _json(f'"{s}"', values='{"other": 1.0}'),
            s.encode(),
        )
    ),
)

poisons = st.one_of(
    malformed,
    missing,
    bad_series,
    key_mismatch,
    bad_timestamp,
    future,
    non_numeric,
    non_finite,
    bad_channel,
    too_large,
    series_level,
)
# Every poison that needs no series state: refused by parsing alone.
record_level = st.one_of(
    malformed, missing, bad_series, key_mismatch, bad_timestamp, future, non_numeric,
    non_finite, bad_channel, too_large,
)  # fmt: skip


def _parses(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)

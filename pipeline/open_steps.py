"""Open steps: the weekly schedule of a series recorded only at some times of the week.

A business-hours series (08:00-22:00 on weekdays) or a trading-day series (Monday to Friday)
has no rows at night or at weekends, and nothing is missing then: those steps do not exist.
:class:`OpenHours` is such a schedule, and the series lives on its *open steps*: a night is no
gap, a training window runs from Friday evening into Monday morning, and a live window stays
whole across a weekend. :func:`detect_open_hours` finds the schedule in the data.

Times are UTC; a week starts on Monday 00:00. A step is open when its timestamp falls in an
open range. Steps lie on a grid ``phase + k * step`` (``phase`` in ``[0, step)``), and every
function counting steps needs a step that divides a week, so a week holds the same steps.

Imports only numpy and the standard library.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from pipeline import ConfigurationError

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# Epoch 0 (1970-01-01) was a Thursday: the week containing it began three days earlier.
EPOCH_WEEK_OFFSET_MS = 3 * DAY_MS
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Detection. A time-of-week slot observed in fewer than this share of the weeks the data spans
# there is closed: a slot of a closed period is (almost) never observed, while a holiday or a
# lost record leaves most weeks' observations of a slot in place.
CLOSED_SHARE = 0.05
# Fewer closed slots than this share of the week are gaps, not a schedule (24/7 data).
MIN_CLOSED_SHARE_OF_WEEK = 0.10
# A series spanning fewer weeks cannot tell a recurring closure from a one-off outage: over
# two, each slot of the week occurs at least twice, and only a recurring closure misses both.
MIN_WEEKS = 2
# A closed period lasts at least this long and this many steps: a slot missed by chance in
# every week of a sparse series is alone, the nights and weekends of a schedule are not.
MIN_CLOSED_RUN_MS = 3_600_000
MIN_CLOSED_RUN_STEPS = 2
# Rows whose observations are counted at once: bounds detection's temporaries (~40 bytes a row).
DETECT_CHUNK_ROWS = 1 << 20


class OpenHoursError(ConfigurationError, ValueError):
    """An open-hours schedule that cannot be read, or a step it cannot count in."""


@dataclass(frozen=True)
class OpenHours:
    """A weekly schedule of open times: half-open ``[start, end)`` ranges in ms from Monday
    00:00 UTC, sorted, disjoint and not touching (a range crossing Sunday midnight is two).

    >>> hours = OpenHours.from_text("mon-fri 08:00-22:00")
    >>> hours.to_text(), len(hours.ranges)
    ('mon-fri 08:00-22:00', 5)
    >>> monday_9am = 4 * DAY_MS + 9 * 3_600_000  # 1970-01-05 was a Monday
    >>> hours.is_open(np.array([monday_9am, monday_9am + 13 * 3_600_000])).tolist()
    [True, False]
    >>> hours.open_steps_between(monday_9am, monday_9am + DAY_MS, 3_600_000).item()  # 10-21, 8-8
    13
    """

    ranges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        flat = [edge for pair in self.ranges for edge in pair]
        if not self.ranges:
            raise OpenHoursError("open hours need at least one open range")
        if flat[0] < 0 or flat[-1] > WEEK_MS or any(b <= a for a, b in pairwise(flat)):
            raise OpenHoursError(
                f"open ranges must be sorted, disjoint, apart and within a week: {self.ranges}"
            )

    # --- building and reading ------------------------------------------------------------------

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> OpenHours:
        """A schedule from a ``(7, slots_per_day)`` (or ``(7 * slots_per_day,)``) boolean mask
        of open slots, Monday first; a slot is ``DAY_MS / slots_per_day`` long.

        >>> mask = np.zeros((7, 24), dtype=bool)
        >>> mask[:5, 8:22] = True
        >>> OpenHours.from_mask(mask).to_text()
        'mon-fri 08:00-22:00'
        """
        flat = np.asarray(mask, dtype=bool).ravel()
        if not len(flat) or (len(flat) % 7) or WEEK_MS % len(flat):
            raise OpenHoursError(f"a mask of {len(flat)} slots does not divide a week in days")
        slot_ms = WEEK_MS // len(flat)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
        pairs = edges.reshape(-1, 2) * slot_ms
        return cls(tuple((int(a), int(b)) for a, b in pairs))

    def mask(self, step_ms: int) -> np.ndarray:
        """``(7, DAY_MS // step_ms)`` bool: whether each step of the week (from Monday 00:00) is
        open; ``step_ms`` must divide a day."""
        if step_ms <= 0 or DAY_MS % step_ms:
            raise OpenHoursError(f"a step of {step_ms} ms does not divide a day")
        starts = np.arange(WEEK_MS // step_ms, dtype=np.int64) * step_ms
        return self._open_offsets(starts).reshape(7, -1)

    @classmethod
    def from_text(cls, text: str) -> OpenHours:
        """Read :meth:`to_text`'s form: ``"mon-fri 08:00-22:00; sat 09:00-12:00,13:00-17:00"``.

        Days are ``mon``..``sun``, alone, in ranges (``mon-fri``) or lists (``mon,wed``); times
        ``HH:MM`` (or ``HH:MM:SS``), an end of ``24:00`` is midnight; a day without times is
        open all day. Raises
        :class:`OpenHoursError` on anything else.
        """
        ranges: list[tuple[int, int]] = []
        for group in filter(None, (part.strip() for part in text.split(";"))):
            days, _, times = group.partition(" ")
            for day in _days(days):
                for start, end in _times(times):
                    ranges.append((day * DAY_MS + start, day * DAY_MS + end))
        if not ranges:
            raise OpenHoursError(f"{text!r} names no open hours: write e.g. 'mon-fri 08:00-22:00'")
        return cls(_merged(ranges))

    def to_text(self) -> str:
        """The schedule as one short line, consecutive days of the same hours grouped; UTC."""
        per_day = [self._day_text(day) for day in range(7)]
        groups: list[tuple[int, int]] = []  # (first day, last day) of equal hours
        for day in range(7):
            if groups and per_day[groups[-1][1]] == per_day[day]:
                groups[-1] = (groups[-1][0], day)
            else:
                groups.append((day, day))
        return "; ".join(
            (WEEKDAYS[a] if a == b else f"{WEEKDAYS[a]}-{WEEKDAYS[b]}") + " " + per_day[a]
            for a, b in groups
            if per_day[a]
        )

    def _day_text(self, day: int) -> str:
        lo, hi = day * DAY_MS, (day + 1) * DAY_MS
        cut = [(max(a, lo) - lo, min(b, hi) - lo) for a, b in self.ranges if a < hi and b > lo]
        return ",".join(f"{_clock(a)}-{_clock(b)}" for a, b in cut)

    # --- where steps are open ------------------------------------------------------------------

    @functools.cached_property
    def _edges(self) -> np.ndarray:
        return np.array(self._edge_list, dtype=np.int64)

    @functools.cached_property
    def _edge_list(self) -> list[int]:
        return [edge for pair in self.ranges for edge in pair]

    def _open_offsets(self, offsets: np.ndarray) -> np.ndarray:
        # Inside a range: an odd count of edges at or before the offset.
        return np.searchsorted(self._edges, offsets, side="right") % 2 == 1

    def is_open(self, ts_ms: int | np.ndarray) -> np.ndarray:
        """Whether each epoch-ms timestamp falls in open hours; O(n log ranges)."""
        return self._open_offsets(week_offset_ms(np.asarray(ts_ms, dtype=np.int64)))

    def is_open_at(self, ts_ms: int) -> bool:
        """:meth:`is_open` of one timestamp, in plain Python (a serve loop's per-record cost)."""
        offset = (ts_ms + EPOCH_WEEK_OFFSET_MS) % WEEK_MS
        return bisect.bisect_right(self._edge_list, offset) % 2 == 1

    def open_index(self, ts_ms: int | np.ndarray, step_ms: int, phase_ms: int = 0) -> np.ndarray:
        """The open steps of the grid ``phase_ms + k * step_ms`` before each timestamp's step
        (floored to the grid), counted from the epoch: an open step's own index, which
        :meth:`open_time` inverts. Consecutive open steps have consecutive indices. O(n)."""
        pattern = _pattern(self, step_ms, phase_ms % step_ms)
        n = (np.asarray(ts_ms, dtype=np.int64) - phase_ms % step_ms) // step_ms
        return pattern.before(n)

    def open_time(self, index: int | np.ndarray, step_ms: int, phase_ms: int = 0) -> np.ndarray:
        """The epoch-ms time of the open step with each :meth:`open_index`; O(n)."""
        pattern = _pattern(self, step_ms, phase_ms % step_ms)
        week, within = np.divmod(np.asarray(index, dtype=np.int64), pattern.per_week)
        steps = week * pattern.week_steps + pattern.positions[within]
        return phase_ms % step_ms + steps * step_ms

    def open_steps_between(
        self, a_ms: int | np.ndarray, b_ms: int | np.ndarray, step_ms: int
    ) -> np.ndarray:
        """How many open steps of ``a_ms``'s grid lie strictly between ``a_ms`` and ``b_ms``:
        the missing steps of a gap, 0 for one spanning only closed time. Vectorised (with one
        ``a_ms`` phase per call; the steps of a series share it); O(n).

        >>> hours = OpenHours.from_text("mon-fri 00:00-24:00")
        >>> friday, monday = 8 * DAY_MS, 11 * DAY_MS  # 1970-01-09, 1970-01-12
        >>> hours.open_steps_between(friday, monday, DAY_MS).item()
        0
        """
        a = np.asarray(a_ms, dtype=np.int64)
        b = np.asarray(b_ms, dtype=np.int64)
        phase = int(a.flat[0] % step_ms) if a.size else 0
        pattern = _pattern(self, step_ms, phase)
        first_after = (a - phase) // step_ms + 1
        first_at_or_after_b = -((phase - b) // step_ms)  # ceil((b - phase) / step)
        return np.maximum(pattern.before(first_at_or_after_b) - pattern.before(first_after), 0)

    def next_open(self, origin_ms: int | np.ndarray, step_ms: int, horizon: int) -> np.ndarray:
        """The times of the ``horizon`` open steps after ``origin_ms`` on its grid: a forecast's
        steps. ``(horizon,)`` for one origin, ``(N, horizon)`` for ``N`` (one phase).

        >>> hours = OpenHours.from_text("mon-fri 00:00-24:00")
        >>> (hours.next_open(8 * DAY_MS, DAY_MS, 2) // DAY_MS).tolist()  # Friday -> Mon, Tue
        [11, 12]
        """
        origin = np.asarray(origin_ms, dtype=np.int64)
        phase = int(origin.flat[0] % step_ms) if origin.size else 0
        first = self.open_index(origin + step_ms, step_ms, phase)
        return self.open_time(first[..., None] + np.arange(horizon), step_ms, phase)


def steps_from(
    origins_ms: np.ndarray, step_ms: int, offsets: np.ndarray, hours: OpenHours | None = None
) -> np.ndarray:
    """The times of the steps ``offsets`` away from each origin on its grid (0: the origin's
    own step, 1: the next): ``(N, K)`` for ``N`` origins and ``K`` offsets. With ``hours`` the
    steps are open steps, so a forecast issued on Friday evening runs into Monday morning. The
    one place a model's step times come from: its forecasts' and its calendar's.

    >>> steps_from(np.array([100]), 10, np.array([-1, 0, 1])).tolist()
    [[90, 100, 110]]
    >>> hours = OpenHours.from_text("mon-fri 00:00-24:00")
    >>> (steps_from(np.array([8 * DAY_MS]), DAY_MS, np.arange(-1, 3), hours) // DAY_MS).tolist()
    [[7, 8, 11, 12]]
    """
    origins = np.asarray(origins_ms, dtype=np.int64).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64)
    if hours is None:
        return origins[:, None] + offsets * step_ms
    times = np.empty((len(origins), len(offsets)), dtype=np.int64)
    phases = origins % step_ms
    for phase in np.unique(phases).tolist():  # a fleet's series mostly share one grid
        on_grid = phases == phase
        first = hours.open_index(origins[on_grid], step_ms, phase)
        times[on_grid] = hours.open_time(first[:, None] + offsets, step_ms, phase)
    return times


def steps_ahead(issued_at_ms: int, ts_ms: int, step_ms: int, hours: OpenHours | None) -> int:
    """How many steps after ``issued_at_ms`` the step of ``ts_ms`` is (1: the next step);
    open steps only with ``hours``. What scores a forecast's steps against their actuals.

    >>> steps_ahead(0, 30, 10, None)
    3
    >>> friday, monday = 8 * DAY_MS, 11 * DAY_MS
    >>> steps_ahead(friday, monday, DAY_MS, OpenHours.from_text("mon-fri 00:00-24:00"))
    1
    """
    if hours is None:
        return (ts_ms - issued_at_ms) // step_ms
    phase = issued_at_ms % step_ms
    index = hours.open_index(np.array([issued_at_ms, ts_ms]), step_ms, phase)
    return int(index[1] - index[0])


@functools.lru_cache(maxsize=16)
def read_open_hours(text: str | None) -> OpenHours | None:
    """:meth:`OpenHours.from_text` of a model config's ``open_hours`` (None: None), read once
    per text: every window of a model shares one schedule (and its step patterns)."""
    return None if text is None else OpenHours.from_text(text)


def week_offset_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Milliseconds since the Monday 00:00 UTC before each epoch-ms timestamp."""
    return (ts_ms + EPOCH_WEEK_OFFSET_MS) % WEEK_MS


@dataclass(frozen=True)
class _StepPattern:
    """Which steps of one week of a grid are open, and how many precede each."""

    week_steps: int  # steps in a week
    per_week: int  # open steps in a week
    open_before: np.ndarray  # (week_steps,) open steps of the week before each one
    positions: np.ndarray  # (per_week,) where in the week each open step is

    def before(self, n: np.ndarray) -> np.ndarray:
        """Open steps of the grid with a step number below ``n`` (counted from the epoch)."""
        week, within = np.divmod(n, self.week_steps)
        return week * self.per_week + self.open_before[within]


@functools.lru_cache(maxsize=64)
def _pattern(hours: OpenHours, step_ms: int, phase_ms: int) -> _StepPattern:
    """The week of the grid ``phase_ms + k * step_ms``; O(steps in a week), once per grid."""
    if step_ms <= 0 or WEEK_MS % step_ms:
        raise OpenHoursError(f"a step of {step_ms} ms does not divide a week: no open steps")
    week_steps = WEEK_MS // step_ms
    is_open = hours.is_open(phase_ms + np.arange(week_steps, dtype=np.int64) * step_ms)
    if not is_open.any():
        raise OpenHoursError(f"no step of {step_ms} ms is open in {hours.to_text()!r}")
    before = np.concatenate([[0], np.cumsum(is_open)[:-1]]).astype(np.int64)
    return _StepPattern(week_steps, int(is_open.sum()), before, np.flatnonzero(is_open))


# --- detection ------------------------------------------------------------------------------------


def detect_open_hours(
    ts_ms: np.ndarray, step_ms: int, bounds: np.ndarray | None = None
) -> OpenHours | None:
    """The recurring closed periods of series observed every ``step_ms``, as their open hours.

    A slot of the week (one step long) is closed when it is observed in fewer than
    :data:`CLOSED_SHARE` of the weeks the data spans there, in runs of at least
    :data:`MIN_CLOSED_RUN_MS` and :data:`MIN_CLOSED_RUN_STEPS`. None unless the closed slots
    make at least :data:`MIN_CLOSED_SHARE_OF_WEEK` of the week: data observed around the clock,
    lost records and one-off outages included, has no open hours. A holiday (a weekday closed
    in one week of several) keeps its slots open. Only series spanning :data:`MIN_WEEKS` weeks
    count; None without one, or with a step that does not divide a week.

    ``ts_ms`` holds the timestamps of one series, or of several back to back (``bounds``:
    ``(S+1,)`` offsets, series ``i`` is ``ts_ms[bounds[i]:bounds[i+1]]``), each sorted; their
    observations are pooled into one schedule. O(n + steps in a week).

    >>> hour = 3_600_000
    >>> weekdays = [t for t in range(4 * DAY_MS, 32 * DAY_MS, hour) if (t // DAY_MS - 4) % 7 < 5]
    >>> detect_open_hours(np.array(weekdays), hour).to_text()
    'mon-fri 00:00-24:00'
    >>> print(detect_open_hours(np.arange(0, 28 * DAY_MS, hour), hour))
    None
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    edges = np.array([0, len(ts)], np.int64) if bounds is None else np.asarray(bounds, np.int64)
    if step_ms <= 0 or WEEK_MS % step_ms or not len(ts):
        return None
    first, last = ts[edges[:-1].clip(max=len(ts) - 1)], ts[(edges[1:] - 1).clip(min=0)]
    long_enough = (edges[1:] > edges[:-1]) & (last - first >= MIN_WEEKS * WEEK_MS)
    if not long_enough.any():
        return None
    seen = sum(
        _seen(ts, edges, long_enough, step_ms, lo, hi)
        for lo, hi in pairwise(range(0, len(ts) + DETECT_CHUNK_ROWS, DETECT_CHUNK_ROWS))
        if lo < len(ts)
    )
    spanned = _exposure(first[long_enough] // step_ms, last[long_enough] // step_ms, step_ms)
    closed = _long_runs(seen < CLOSED_SHARE * spanned, _min_run(step_ms))
    if closed.mean() < MIN_CLOSED_SHARE_OF_WEEK or closed.all():
        return None
    return OpenHours.from_mask(~closed)


def _seen(
    ts: np.ndarray, edges: np.ndarray, counted: np.ndarray, step_ms: int, lo: int, hi: int
) -> np.ndarray:
    """``(week_steps,)`` the observed steps of rows ``lo:hi`` in each slot of the week: a step
    once per series, only series ``counted``. Temporaries of ``hi - lo`` rows."""
    start = max(lo - 1, 0)  # the row before: a step that began in the previous chunk
    rows = np.arange(start, min(hi, len(ts)))
    codes = np.searchsorted(edges, rows, side="right") - 1
    steps = ts[rows] // step_ms
    new_step = np.concatenate([[lo == 0], (np.diff(steps) != 0) | (np.diff(codes) != 0)])
    kept = new_step & counted[codes]
    return np.bincount(_slot(steps[kept], step_ms), minlength=WEEK_MS // step_ms)


def _slot(steps: np.ndarray, step_ms: int) -> np.ndarray:
    """The slot of the week (from Monday 00:00) of each step number (epoch ms // step)."""
    return week_offset_ms(steps * step_ms) // step_ms


def _exposure(first: np.ndarray, last: np.ndarray, step_ms: int) -> np.ndarray:
    """``(week_steps,)`` how often each slot of the week occurs in the series' spans
    ``[first, last]`` (step numbers): whole weeks everywhere, the rest from each first slot."""
    week_steps = WEEK_MS // step_ms
    length = last - first + 1
    whole, rest = np.divmod(length, week_steps)
    start = _slot(first, step_ms)
    end = start + rest
    diff = np.zeros(2 * week_steps + 1, np.int64)  # over two weeks, folded: a span may wrap
    np.add.at(diff, start, 1)
    np.add.at(diff, end, -1)
    counts = np.cumsum(diff)[: 2 * week_steps]
    return whole.sum() + counts[:week_steps] + counts[week_steps:]


def _min_run(step_ms: int) -> int:
    return max(MIN_CLOSED_RUN_STEPS, -(-MIN_CLOSED_RUN_MS // step_ms))


def _long_runs(closed: np.ndarray, min_run: int) -> np.ndarray:
    """``closed`` with its runs shorter than ``min_run`` slots opened; the week wraps around."""
    if closed.all() or not closed.any():
        return closed
    shift = int(np.flatnonzero(~closed)[0])  # start the week at an open slot: no run wraps
    rolled = np.roll(closed, -shift)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]])))
    starts, ends = edges[0::2], edges[1::2]
    long = ends - starts >= min_run
    marks = np.zeros(len(rolled) + 1, np.int64)
    np.add.at(marks, starts[long], 1)
    np.add.at(marks, ends[long], -1)
    return np.roll(np.cumsum(marks)[:-1] > 0, shift)


# --- the text form ----------------------------------------------------------------------------

_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def _clock(ms: int) -> str:
    """``HH:MM`` (``HH:MM:SS`` off the minute) of ms since midnight; 24:00 at the day's end."""
    minutes, ms_rest = divmod(ms, 60_000)
    text = f"{minutes // 60:02d}:{minutes % 60:02d}"
    return text if not ms_rest else f"{text}:{ms_rest // 1000:02d}"


def _days(text: str) -> list[int]:
    """Weekday numbers of ``mon``, ``mon-fri`` (wrapping: ``sat-mon``) or ``mon,wed``."""
    days = []
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise OpenHoursError(f"{text!r} is not a day, e.g. 'mon', 'mon-fri' or 'sat,sun'")
        a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days += [(a + k) % 7 for k in range((b - a) % 7 + 1)]
    return days


def _times(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` ms since midnight of ``08:00-12:00,13:00-17:00``."""
    ranges = []
    if not text.strip():
        return [(0, DAY_MS)]  # a day named without times is open all day
    for part in text.replace(" ", "").split(","):
        start, _, end = part.partition("-")
        a, b = _clock_ms(start, part), _clock_ms(end, part)
        if not 0 <= a < b <= DAY_MS:
            raise OpenHoursError(f"{part!r} is not a range of one day, e.g. '08:00-22:00'")
        ranges.append((a, b))
    return ranges


def _clock_ms(text: str, part: str) -> int:
    match = _CLOCK.match(text)
    if match is None:
        raise OpenHoursError(f"{part!r} is not a range of times, e.g. '08:00-22:00'")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((hours * 60 + minutes) * 60 + seconds) * 1000


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted ranges with the overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)

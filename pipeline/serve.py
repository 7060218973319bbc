"""The rolling forecast loop: observations in, one forecast per series per new step out.

Each poll is handled in micro-batches::

    triage → place in rolling windows (scoring the new actuals) → at BatchCap's forecasts
           or time: gather their windows from the rings → one model call → intervals
           → the messages' bytes → wait for the broker's acks → ... → dead letters
           → the rest → wait for the acks → commit input offsets

A forecast's window is read straight from its series' ring into one array kept between
batches (:class:`~pipeline.windows.Step`), and its values stay numpy until the bytes are
written (:class:`~pipeline.records.ForecastBatch`); so the per-record Python is the record's
own parsing and placement, and a record waits for its own micro-batch, not its whole poll.

:class:`RollingForecaster` holds the windows and runs the model; :func:`serve_batch` tells the
online scorer (:class:`pipeline.stats.OnlineScorer`) what each batch forecast, and the
forecaster tells it (``on_placed``, set by the loop) what each record placed.

Policies (the window policies themselves are in :mod:`pipeline.windows`):

* **Event time.** Each series is on the model's frequency. A step is held for ``grace_steps`` steps
  of event time so out-of-order records can be placed; one older than that is dead-lettered
  (``late``). A repeat of an observed (series, ts) is dropped and counted (``duplicates``).
  A step more than ``max_jump_steps`` ahead of its series' newest waits for a second record
  to confirm it, or is dead-lettered (``future``) by the end of its poll, as in ingest
  (:class:`~pipeline.windows.JumpRule`): one stray record cannot make the next ones late.
  Gaps of up to ``max_gap`` steps are interpolated; a longer one empties the window, and the series
  gets no forecast until ``lookback`` new steps have arrived.
* **Delivery.** At-least-once. Input offsets are committed once per poll, only after the broker
  acknowledged every forecast and dead letter its records caused (micro-batches within a poll
  are acknowledged earlier, never committed earlier). After a crash, the member re-reads from
  the last commit, so **at most one poll per member (``max_poll_records`` records) is forecast
  twice**.
  Every forecast of a re-read record is identical to the first one, given the same model.
* **State after a restart or rebalance.** A member that gains a partition re-reads up to
  ``rewind_records`` records before the committed offset to rebuild the windows of its series,
  publishing nothing for them. A series whose last ``lookback`` steps lie further back warms up
  from the stream. Windows of partitions lost to another member are dropped at once, so after
  the rebalance each series is forecast by the one member that reads its partition.
* **Live model swap.** Between batches, a version that :mod:`pipeline.swap` loaded in the
  background replaces the model if it serves like it; windows are kept. Every forecast names
  the version that made it.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import intervals
from pipeline.forecast import (
    LoadedForecaster,
    interval_units,
    new_window,
    point_forecasts,
    predict_outputs,
)
from pipeline.intervals import DEFAULT_GAIN, Calibration
from pipeline.model import Forecaster
from pipeline.open_steps import read_open_hours
from pipeline.progress import Progress, by_reason
from pipeline.records import (
    DEFAULT_POLICY,
    FUTURE,
    INVALID,
    LATE,
    MISSING_CHANNEL,
    DeadLetter,
    ForecastBatch,
    Observation,
    RawRecord,
    RecordPolicy,
    channel_problem,
    invalid_letter,
    triage,
)
from pipeline.shutdown import StopRequestedError
from pipeline.stats import OnlineError, OnlineScorer, Scoring, SeriesGroups, ServeStats
from pipeline.swap import INCOMPATIBLE, ModelSlot, incompatibility
from pipeline.transport import Sink, Source
from pipeline.windows import (
    BATCH_ENDED,
    DISPLACED,
    OUTRUN,
    Append,
    Gap,
    HeldJump,
    Jump,
    JumpRule,
    RollingWindow,
    Step,
    freq_to_ms,
)

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.5
NO_REQUESTS: tuple[ForecastRequest, ...] = ()


@dataclass(frozen=True, slots=True)
class ForecastRequest:
    series: str
    issued_at_ms: int
    step: Step  # its window (L, C), a view of the ring until the series moves on
    produced_at_ms: int  # the input record's timestamp, for latency


@dataclass(frozen=True)
class BatchCap:
    """When the forecasts due so far in a poll are made and published, before the poll ends:
    at ``forecasts`` of them, or once the wait since the last publish plus the time publishing
    them will take (each as long as the last ones took) reaches ``seconds``, and at least
    :data:`MIN_TIMED_BATCH` are pending: a model call on fewer costs more per forecast, and so
    the measured cost would keep the batches small (with ``seconds`` 0, each forecast is
    published as soon as it is due). A micro-batch then adds about ``seconds``
    to its records' latency, whatever the model's cost or the poll's size; offsets are still
    committed once per poll, so the duplicate bound stays one poll per member."""

    forecasts: int = 1000
    seconds: float = 0.02

    def reached(self, pending: int, since: float, cost_s: float) -> bool:
        """Whether ``pending`` forecasts, waiting since ``since`` (``perf_counter``), each
        taking ``cost_s`` to make and publish, are to be published now."""
        if pending >= self.forecasts or self.seconds == 0:  # 0: each as soon as it is due
            return True
        waited = time.perf_counter() - since
        return pending >= MIN_TIMED_BATCH and waited + pending * cost_s >= self.seconds


# How much of the measured cost of a forecast each publish replaces (a moving average).
COST_WEIGHT = 0.2
# The fewest forecasts a micro-batch is cut at by time: a model call's fixed cost is then
# spread over enough of them (an LSTM's cost per window levels off from about 128: at 64 it is
# a quarter more at the default shape, BENCHMARKS.md).
MIN_TIMED_BATCH = 128


@dataclass(slots=True)
class SeriesState:
    """What the loop holds for one live series.

    The last two fields are the :class:`~pipeline.stats.OnlineScorer`'s, kept here so they go
    with the series when it is evicted; :class:`RollingForecaster` never reads them.
    """

    window: RollingWindow
    partition: int
    channels: frozenset[str]  # its first accepted record's: later ones must match
    # A step too far ahead, waiting for a record to confirm it (see windows.JumpRule).
    held: HeldJump[tuple[RawRecord, np.ndarray]] | None = None
    established: bool = False  # its window has filled once: safe from new keys
    forecast_before: bool = False  # it has had a forecast (counted once)
    scoring: Scoring | None = None  # the forecast being scored against actuals as they arrive


class Sightings:
    """Keys seen once and given no window: a direct-mapped table of 64-bit key hashes.

    8 bytes a slot, whatever the keys; a key leaves its slot when it gets a window, so the table
    holds only keys waiting for their second record. A key sighted in a slot another key holds
    takes it on the toss of a coin: were it always to, two keys of one slot reporting in turn
    would overwrite each other for ever. A key that lost its slot is sighted anew, one record
    later. Hashes are Python's (salted per process), all one process needs.
    """

    def __init__(self, keys: int) -> None:
        slots = 1 << max(1, 2 * keys - 1).bit_length()  # a power of two >= 2 * keys
        self.tags = np.zeros(slots, dtype=np.int64)  # 0: an empty slot
        self._mask = slots - 1
        self._coin = random.Random(0)

    def _slot(self, key: str) -> tuple[int, int]:
        key_hash = hash(key)
        # Keys of one slot share their low bits, so bit 0 is free to mark a slot in use.
        return key_hash & self._mask, key_hash | 1

    def take(self, key: str) -> bool:
        """Whether ``key`` was sighted (and not displaced since); it leaves the table if so."""
        slot, tag = self._slot(key)
        if self.tags.item(slot) != tag:
            return False
        self.tags[slot] = 0
        return True

    def sight(self, key: str) -> None:
        """Remember ``key`` until its next record (or until another key displaces it)."""
        slot, tag = self._slot(key)
        if self.tags.item(slot) == 0 or self._coin.getrandbits(1):
            self.tags[slot] = tag


class RollingForecaster:
    """Per-series rolling windows and the batched forecast step; no I/O, no scoring.

    Windows are made by :func:`pipeline.forecast.new_window` from the model's config, so they
    fill gaps as the model's training windows and its MLflow pyfunc do.

    **Admission.** A series fills its first window among the ``newcomers``, then joins the
    ``max_series`` established ones (least recently seen evicted). A new key gets a window at
    once while fewer than ``max_new_series`` newcomers are held; past that it is only *sighted*
    (:class:`Sightings`; its record is dropped) and gets a window at its next record. A key
    that has repeated is held among up to ``max_new_series`` plus the established pool's free
    room, so a fleet reporting round-robin is served whatever its size up to ``max_series``.
    Room is made by evicting the least recently seen newcomer that never repeated, else the
    least recently seen one. A flood of one-off keys thus fills no window and never evicts an
    established series. Each key given no room, sighted or evicted, counts in
    ``evicted_new_series``.

    **Memory.** At most ``max_series + max_new_series`` windows, each
    ``lookback * (channels + 1) * 8`` bytes plus about 1 KB of bookkeeping, and a sighting table
    of 8 bytes a slot, the next power of two >= twice that many slots (2 MiB at the defaults).
    BENCHMARKS.md has a measured flood.
    """

    def __init__(
        self,
        forecaster: LoadedForecaster,
        max_series: int,
        policy: RecordPolicy = DEFAULT_POLICY,
        max_new_series: int | None = None,
        message: str = "v2",
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.forecaster = forecaster
        self.precision = precision  # of the model's arithmetic (forecast.resolve_precision)
        self.message = message  # the forecasts' wire format (records.FORECAST_FORMATS)
        self.max_series, self.policy = max_series, policy
        self.max_new_series = max_series if max_new_series is None else max_new_series
        self.series: OrderedDict[str, SeriesState] = OrderedDict()  # established
        self.newcomers: OrderedDict[str, SeriesState] = OrderedDict()
        # The newcomers that have had one record so far, oldest first: the first to evict.
        self.unrepeated: OrderedDict[str, None] = OrderedDict()
        self.sightings = Sightings(max_series + self.max_new_series)
        self.step_ms = freq_to_ms(self.model.config.freq)
        # The week's open hours the model's steps are on (a swap never changes them).
        self.open_hours = read_open_hours(self.model.config.open_hours)
        self.jumps = policy.jump_rule()
        self._holding: list[SeriesState] = []  # series that held a far step in this batch
        self._refused_jumps: list[DeadLetter] = []  # held records refused in this batch
        self._windows = np.empty((0, 0, 0), np.float32)  # a batch's windows, gathered (predict)
        # Told of the steps each record placed, with its series' state (the online scorer).
        self.on_placed: Callable[[SeriesState, list[Step]], None] | None = None

    @property
    def model(self) -> Forecaster:
        return self.forecaster.model

    def live_series(self) -> int:
        """Series held, established or new."""
        return len(self.series) + len(self.newcomers)

    def states(self) -> Iterator[SeriesState]:
        """The state of every series held, established ones first."""
        yield from self.series.values()
        yield from self.newcomers.values()

    def swap(self, forecaster: LoadedForecaster) -> None:
        """Serve with ``forecaster`` from now on, keeping the windows; it must serve like the
        current one (:func:`pipeline.swap.incompatibility` says whether it does)."""
        self.forecaster = forecaster

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the windows of series read from ``partitions`` (now another member's)."""
        dropped = 0
        for pool in (self.series, self.newcomers):
            gone = [sid for sid, state in pool.items() if state.partition in partitions]
            for series_id in gone:
                del pool[series_id]
                self.unrepeated.pop(series_id, None)
            dropped += len(gone)
        logger.info("dropped %d series of partitions %s", dropped, sorted(partitions))

    def observe(
        self, record: RawRecord, obs: Observation, stats: ServeStats
    ) -> DeadLetter | Sequence[ForecastRequest]:
        """Add one observation to its series' window; return the forecasts it makes due.

        The steps it placed go to :attr:`on_placed`, if set.
        """
        state = self._state(obs, record.partition, stats)
        if state is None:
            return self._not_held(record, obs)
        if obs.values.keys() != state.channels:
            reason, detail = channel_problem(state.channels, obs.values) or (INVALID, "")
            return DeadLetter(record, reason, detail)
        values = np.array([obs.values[c] for c in self.model.config.channels], dtype=np.float32)
        step = obs.ts_ms - obs.ts_ms % self.step_ms
        jump = self.jumps.judge(state.window.newest_ms, step, self.step_ms, state.held)
        if jump is not Jump.WITHIN:
            return self._jump(jump, state, obs, (record, values), stats)
        outcome = state.window.append(obs.ts_ms, values)
        self._outrun(state)
        if record.rewound:
            state.window.placed()  # state only: these records were served before
            return NO_REQUESTS
        if outcome is Append.LATE:
            newest = state.window.last_ts_ms
            return DeadLetter(record, LATE, f"older than the grace period allows (newest {newest})")
        if outcome is Append.DUPLICATE:
            stats.duplicates += 1
            return NO_REQUESTS
        return self._due(obs.series, state, record, stats)

    def _jump(
        self,
        jump: Jump,
        state: SeriesState,
        obs: Observation,
        observed: tuple[RawRecord, np.ndarray],
        stats: ServeStats,
    ) -> Sequence[ForecastRequest]:
        """Hold a step too far ahead, or confirm the held one: both placed, in step order."""
        record, step = observed[0], obs.ts_ms - obs.ts_ms % self.step_ms
        if jump is Jump.REPEAT:
            stats.duplicates += not record.rewound
            return NO_REQUESTS
        if jump is Jump.HELD:
            self._drop_held(state, DISPLACED)
            newest = state.window.newest_ms or 0  # HELD: the window has a newest step
            state.held = self.jumps.hold(newest, step, self.step_ms, observed)
            self._holding.append(state)
            return NO_REQUESTS
        held, state.held = state.held, None
        both = [(step, observed)]
        if held is not None and held.item is not None:
            both.append((held.step_ms, held.item))
        for ts_ms, (_, values) in sorted(both, key=lambda pair: pair[0]):
            state.window.append(ts_ms, values)
        if record.rewound:
            state.window.placed()  # state only: these records were served before
            return NO_REQUESTS
        return self._due(obs.series, state, record, stats)

    def _outrun(self, state: SeriesState) -> None:
        """Refuse the held step once the series' own clock came within reach of it."""
        held, newest = state.held, state.window.newest_ms
        if held is None or newest is None:
            return
        if self.jumps.outrun(newest, self.step_ms, held):
            self._drop_held(state, OUTRUN)

    def _drop_held(self, state: SeriesState, why: str) -> None:
        held = state.held
        if held is None:
            return
        state.held = JumpRule.left_after(held, why)
        if held.item is not None:
            letter = DeadLetter(held.item[0], FUTURE, JumpRule.refusal(held, why))
            self._refused_jumps.append(letter)

    def refuse_unconfirmed(self) -> list[DeadLetter]:
        """At a batch's end: the ``future`` dead letters of the held records no record
        confirmed (and of those refused during the batch). Only their times stay held, so
        each record is decided before its offset is committed."""
        for state in self._holding:
            self._drop_held(state, BATCH_ENDED)
        letters, self._refused_jumps, self._holding = self._refused_jumps, [], []
        return letters

    def _due(
        self, series_id: str, state: SeriesState, record: RawRecord, stats: ServeStats
    ) -> list[ForecastRequest]:
        due = []
        placed = state.window.placed()
        if self.on_placed is not None:
            self.on_placed(state, placed)
        for step in placed:
            stats.gaps_filled += step.gap is Gap.FILLED
            stats.restarts += step.gap is Gap.RESTARTED
            if step.window is not None:
                due.append(ForecastRequest(series_id, step.ts_ms, step, record.timestamp_ms))
        if not state.established and state.window.is_whole:
            self._establish(series_id, state, stats)
        return due

    def _not_held(
        self, record: RawRecord, obs: Observation
    ) -> DeadLetter | Sequence[ForecastRequest]:
        missing = [c for c in self.model.config.channels if c not in obs.values]
        if missing:
            return DeadLetter(record, MISSING_CHANNEL, f"the model needs channels {missing[:8]}")
        return NO_REQUESTS  # only sighted: a window comes with its next record

    def _state(self, obs: Observation, partition: int, stats: ServeStats) -> SeriesState | None:
        series_id = obs.series
        state = self.series.get(series_id)
        if state is not None:
            self.series.move_to_end(series_id)
            return state
        state = self.newcomers.get(series_id)
        if state is not None:
            self.newcomers.move_to_end(series_id)
            self.unrepeated.pop(series_id, None)  # it repeats: no longer the first to go
            return state
        return self._admit(obs, partition, stats)

    def _admit(self, obs: Observation, partition: int, stats: ServeStats) -> SeriesState | None:
        """A window for a key held nowhere, if it may have one; None if it is only sighted or
        lacks a channel."""
        if any(c not in obs.values for c in self.model.config.channels):
            return None  # not a series this model can serve: hold nothing for it
        if self.sightings.take(obs.series):
            self._make_room(stats)
        elif len(self.newcomers) >= self.max_new_series:
            self.sightings.sight(obs.series)
            stats.evicted_new_series += 1  # no room for a key that may never come again
            return None
        else:
            self.unrepeated[obs.series] = None
        window = new_window(self.model.config, self.policy.grace_steps)
        state = SeriesState(window, partition, frozenset(obs.values))
        self.newcomers[obs.series] = state
        return state

    def _make_room(self, stats: ServeStats) -> None:
        """Room for one more repeating newcomer: one-off keys go first.

        A repeating key may use the established pool's free room too, where it is headed: so a
        round-robin fleet that outnumbers ``max_new_series`` does not evict itself.
        """
        free = max(0, self.max_series - len(self.series))
        if len(self.newcomers) < self.max_new_series + free:
            return
        if self.unrepeated:
            series_id, _ = self.unrepeated.popitem(last=False)
            del self.newcomers[series_id]
        else:
            self.newcomers.popitem(last=False)
        stats.evicted_new_series += 1

    def _establish(self, series_id: str, state: SeriesState, stats: ServeStats) -> None:
        del self.newcomers[series_id]
        self.unrepeated.pop(series_id, None)  # a window of one step fills at its first record
        if len(self.series) >= self.max_series:
            self.series.popitem(last=False)  # least recently seen
            stats.evicted_series += 1
        state.established = True
        self.series[series_id] = state

    def series_state(self, series_id: str) -> SeriesState | None:
        """The state held for a series, established or new."""
        return self.series.get(series_id) or self.newcomers.get(series_id)

    def predict(self, requests: list[ForecastRequest]) -> tuple[np.ndarray, np.ndarray]:
        """One batched model call for every request: the windows ``(B, L, C)``, gathered
        straight from the rings into one array kept between batches (the intervals read them
        too), and the model's outputs (:func:`pipeline.forecast.predict_outputs`)."""
        windows = self._gathered(len(requests))
        for row, request in zip(windows, requests, strict=True):
            row[:] = request.step.window
            request.step.release()  # read: no copy when its series moves on
        origins = np.fromiter((r.issued_at_ms for r in requests), np.int64, len(requests))
        return windows, predict_outputs(self.model, windows, origins, precision=self.precision)

    def _gathered(self, batch: int) -> np.ndarray:
        """``(batch, L, C)`` of the array the batches' windows are gathered into."""
        config = self.model.config
        shape = (config.lookback, config.n_channels)
        if len(self._windows) < batch or self._windows.shape[1:] != shape:
            self._windows = np.empty((max(batch, 2 * len(self._windows)), *shape), np.float32)
        return self._windows[:batch]

    def forecasts(
        self, requests: list[ForecastRequest], preds: np.ndarray, bounds: np.ndarray | None = None
    ) -> ForecastBatch:
        """The messages of the forecasts ``preds`` (``(B, H, C)``) made for ``requests``, with
        the intervals ``bounds`` (lower and upper, ``(2, L, B, H, C)``) if given; arrays until
        their bytes are written."""
        config = self.model.config
        return ForecastBatch(
            series=[r.series for r in requests],
            issued_at_ms=np.fromiter((r.issued_at_ms for r in requests), np.int64, len(requests)),
            model_name=self.forecaster.name,
            model_version=self.forecaster.version,
            freq=config.freq,
            step_ms=self.step_ms,
            channels=config.target_names,
            values=preds,
            open_hours=self.open_hours,
            message=self.message,
            interval_levels=config.interval_levels if bounds is not None else (),
            lo=None if bounds is None else bounds[0],
            hi=None if bounds is None else bounds[1],
        )

    def interval_bounds(
        self,
        windows: np.ndarray,
        outputs: np.ndarray,
        preds: np.ndarray,
        radii: np.ndarray | None,
    ) -> np.ndarray | None:
        """The intervals, lower and upper ``(2, L, B, H, C)``, of each forecast's radii now
        ``radii`` ``(L, B, H, C)`` around the forecasts ``preds`` of ``windows`` (their outputs
        ``outputs``); None without radii."""
        if radii is None or not len(windows):
            return None
        units = interval_units(self.model, windows, outputs)
        return np.stack(intervals.bounds(radii, preds, units))

    def calibration(self) -> Calibration | None:
        """The intervals to publish and adapt: the model's, in a version-2 message only."""
        return self.model.calibration if self.message == "v2" else None


def serve_batch(
    records: list[RawRecord],
    rolling: RollingForecaster,
    sink: Sink,
    stats: ServeStats,
    scorer: OnlineScorer | None = None,
    cap: BatchCap = BatchCap(),
) -> None:
    """Handle one poll; on return every output it caused is acknowledged by the broker.

    The forecasts due are made and published in batches of at most ``cap``, each one
    acknowledged before the next is made. ``scorer`` is told what was observed and forecast;
    by default one over ``stats`` and ``rolling`` (a scorer keeps nothing of its own, so any
    one of them scores the same).
    """
    started = time.perf_counter()
    scorer = scorer or OnlineScorer(stats, rolling)
    rolling.on_placed = scorer.placed
    accepted, dead = triage(records, rolling.policy)
    requests: list[ForecastRequest] = []
    since = started
    for record, obs in accepted:
        outcome = observe_safely(rolling, record, obs, stats)
        if isinstance(outcome, DeadLetter):
            dead.append(outcome)
        elif outcome:
            requests += outcome
            if cap.reached(len(requests), since, stats.forecast_cost_s):
                publish(requests, rolling, sink, stats, scorer)
                requests, since = [], time.perf_counter()
    dead += rolling.refuse_unconfirmed()
    for letter in dead:
        if not letter.record.rewound:
            sink.send_dead_letter(letter)
            stats.dead_letters[letter.reason] += 1
    publish(requests, rolling, sink, stats, scorer)
    _count(records, stats, started)


def publish(
    requests: list[ForecastRequest],
    rolling: RollingForecaster,
    sink: Sink,
    stats: ServeStats,
    scorer: OnlineScorer,
) -> None:
    """Score what arrived, make the forecasts due in one model call, send them with their
    intervals and wait for the broker to acknowledge everything sent so far."""
    begun = time.perf_counter()
    scorer.settle()
    windows, outputs = rolling.predict(requests)  # (B, L, C), the model's outputs
    preds = point_forecasts(rolling.model, outputs)  # (B, H, C)
    online = stats.online_error
    groups = radii = None
    if online.adapts and requests:
        groups = [online.groups.of(r.series) for r in requests]
        radii = online.radii_for(groups)
    bounds = rolling.interval_bounds(windows, outputs, preds, radii)
    scorer.forecasts_issued(requests, preds, bounds, groups)
    if requests:
        sink.send_forecasts(rolling.forecasts(requests, preds, bounds))
    sink.flush()
    acked_ms = time.time() * 1000
    produced_ms = np.fromiter((r.produced_at_ms for r in requests), np.float64, len(requests))
    stats.record_latency.record((acked_ms - produced_ms) / 1000)
    stats.forecasts_out += len(requests)
    if requests:
        cost = (time.perf_counter() - begun) / len(requests)
        stats.forecast_cost_s += COST_WEIGHT * (cost - stats.forecast_cost_s)


def observe_safely(
    rolling: RollingForecaster, record: RawRecord, obs: Observation, stats: ServeStats
) -> DeadLetter | Sequence[ForecastRequest]:
    """:meth:`RollingForecaster.observe`, with any error turned into the record's dead letter.

    No single record may stop the loop: what it broke is reported with the reason ``invalid``.
    """
    try:
        return rolling.observe(record, obs, stats)
    except Exception as err:
        return invalid_letter(record, err)


def _count(records: list[RawRecord], stats: ServeStats, started: float) -> None:
    stats.batch_latency.record(np.array([time.perf_counter() - started]))
    rewound = sum(r.rewound for r in records)
    stats.records_rewound += rewound
    stats.records_in += len(records) - rewound


def swap_if_offered(
    slot: ModelSlot,
    rolling: RollingForecaster,
    stats: ServeStats,
    scorer: OnlineScorer | None = None,
) -> LoadedForecaster | None:
    """Between batches: take a version the watcher loaded, swap it in or refuse it.

    Returns the version swapped in, if any; ``scorer`` (by default one over ``stats`` and
    ``rolling``) is told of it.
    """
    loaded, refusals = slot.take()
    for refusal in refusals:
        stats.refused[refusal.reason] += 1
    if loaded is None:
        return None
    problem = incompatibility(rolling.forecaster, loaded)
    if problem is not None:
        logger.error(
            "refusing version %s: it does not serve like version %s (%s); keeping the old one",
            loaded.version,
            rolling.forecaster.version,
            problem,
        )
        stats.refused[INCOMPATIBLE] += 1
        return None
    logger.info("swapping in version %s (was %s)", loaded.version, rolling.forecaster.version)
    rolling.swap(loaded)
    stats.swaps += 1
    stats.model_version = loaded.version
    scorer = scorer or OnlineScorer(stats, rolling)
    scorer.model_swapped(loaded.version, model_scale(rolling), rolling.calibration())
    return loaded


@dataclass(frozen=True)
class LiveSwap:
    """Where the serve loop takes new versions from between batches (the watcher's slot), and
    who is told of each one it swaps in (serve keeps a local copy of it)."""

    slot: ModelSlot
    on_swap: Callable[[LoadedForecaster], None] | None = None


def run_serve(
    source: Source,
    sink: Sink,
    rolling: RollingForecaster,
    should_stop: Callable[[ServeStats, bool], bool],
    live_swap: LiveSwap | None = None,
    stats: ServeStats | None = None,
    cap: BatchCap = BatchCap(),
) -> ServeStats:
    """Serve until ``should_stop(stats, last_poll_was_empty)`` says so; without ``live_swap``,
    with the one model ``rolling`` has; the forecasts of a poll are published in batches of
    at most ``cap``."""
    stats = stats or new_stats(rolling)
    scorer = OnlineScorer(stats, rolling)
    progress = Progress("serve", logger=logger)
    while True:
        if live_swap is not None:
            take_swap(live_swap, rolling, stats, scorer)
        records = source.poll(POLL_TIMEOUT_S)
        if records:
            try:
                serve_batch(records, rolling, sink, stats, scorer, cap)
            except StopRequestedError as stop:  # a stop during an outage: read again later
                logger.warning("%s: %d records left uncommitted", stop, len(records))
                break
            source.commit(records)
            progress.advance(len(records), _progress_note(stats))
        stats.consumer_lag, stats.live_series = source.lag(), rolling.live_series()
        stats.assigned_partitions = source.partitions()
        # Idle time counts from the first assignment (or JOIN_GRACE_S without one).
        if should_stop(stats, not records and stats.assigned_partitions > 0):
            break
    progress.finish(_progress_note(stats))
    return stats


def _progress_note(stats: ServeStats) -> str:
    return f"{stats.forecasts_out} forecasts, dead letters: {by_reason(stats.dead_letters)}"


def take_swap(
    live_swap: LiveSwap, rolling: RollingForecaster, stats: ServeStats, scorer: OnlineScorer
) -> None:
    """Swap in a version the watcher offers, if it serves like the current one, and say so."""
    swapped = swap_if_offered(live_swap.slot, rolling, stats, scorer)
    if swapped is not None and live_swap.on_swap is not None:
        live_swap.on_swap(swapped)


def model_scale(rolling: RollingForecaster) -> np.ndarray:
    """The served model's channel scale, in the order of the forecasts it makes."""
    return np.asarray(rolling.model.scale.detach().cpu().numpy(), dtype=np.float64)


def new_stats(
    rolling: RollingForecaster,
    interval_gain: float = DEFAULT_GAIN,
    groups: SeriesGroups | None = None,
) -> ServeStats:
    """The stats of a loop over ``rolling``, whose intervals adapt by ``interval_gain`` in each
    of the ``groups`` of series (one group by default)."""
    return ServeStats(
        OnlineError(
            rolling.model.config.horizon,
            rolling.step_ms,
            model_scale(rolling),
            rolling.forecaster.version,
            rolling.model.target_columns,
            rolling.open_hours,
            rolling.calibration(),
            interval_gain,
            groups,
        ),
        model_name=rolling.forecaster.name,
        model_version=rolling.forecaster.version,
    )


def freeze_heap() -> None:
    """Exempt everything loaded so far (torch, MLflow, the model) from garbage collection.

    The loop makes many short-lived objects per record, so the collector runs often; without
    this, each full collection walks the whole start-up heap. Measured: +58% records/s.
    """
    gc.collect()
    gc.freeze()


# A member that has no partitions this long after it started says so, and from then on its
# idle time counts: longer than a group join (about 3 s) and a dead member's session (10 s).
JOIN_GRACE_S = 30.0


def stop_rule(
    max_records: int | None,
    idle_s: float | None,
    stopping: threading.Event,
    join_grace_s: float = JOIN_GRACE_S,
) -> Callable[[ServeStats, bool], bool]:
    """When the serve loop ends: SIGTERM, ``max_records`` read, or ``idle_s`` without records.

    Idle time counts once the member has partitions, or once ``join_grace_s`` passed without.
    """
    started = idle_since = time.monotonic()
    ever_assigned, warned = False, False

    def should_stop(stats: ServeStats, idle: bool) -> bool:
        nonlocal idle_since, ever_assigned, warned
        now = time.monotonic()
        ever_assigned |= stats.assigned_partitions > 0
        if not ever_assigned and now - started >= join_grace_s:
            idle = True
            if not warned:
                warned = True
                logger.warning(
                    "no partitions assigned in %.0f s: the group has as many members as "
                    "partitions, or a member that died has not left it yet (its session must "
                    "expire); serving nothing until the group rebalances",
                    now - started,
                )
        if not idle:
            idle_since = now
        if stopping.is_set():
            logger.info("stopping: SIGTERM")
            return True
        if max_records is not None and stats.records_in >= max_records:
            return True
        return idle_s is not None and now - idle_since >= idle_s

    return should_stop

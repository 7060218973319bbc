"""Rollcast at fleet scale: ingest, compaction, training's data load and serve memory (issue 19).

    python benchmarks/scale.py --json                      # every section (about 16 min, 2 vCPUs)
    python benchmarks/scale.py --quick --json              # smaller fleets where a section is slow
    python benchmarks/scale.py --only ingest_fleet serve_fleet
    python benchmarks/scale.py --results benchmarks/results/scale.jsonl   # and append a row
    python benchmarks/scale.py --only ingest_fleet --profile   # pyinstrument text profiles too

Sections (``--only``), each in its own subprocess, every memory figure a fresh process's peak
RSS (``VmHWM``), so no measurement holds another's memory:

* ``ingest_fleet``: the ingest stage (``pipeline.wiring.ingest_from_settings``, Kafka settings
  built explicitly) on the embedded broker, fresh 3-partition topics, at 1,000, 10,000 and
  100,000 one-channel hourly series. Everything is produced first (``KafkaTransport.sink`` and
  ``transport.replay``, not timed), then ingest runs in a child process. *Steady* rows/s: the
  rows of every flush after the first over the time from the end of the first flush to the end
  of the last; *start-up*: from the call to the first poll that returned records (group join and
  the ledger's one read of the table).
* ``ingest_history``: the same onto 1,000 series already holding 100, 1,000 and 10,000 steps
  each (written with ``DeltaSeriesStore.append`` in big batches), 300 new steps per series
  (``--history-new-steps``: 300,000 records, six flushes, so the steady rate spans five).
* ``old_store``: the old store (one Parquet file per series, commit 45ef4a8, a git worktree
  at ``--old-tree``) against the new on the same topic, interleaved old, new, new, old, at
  1,000 and 10,000 series; the rate is rows over the time from the first records polled to the
  end of the last write (the new store flushes 20,000 rows once, so it has no "steady" part).
* ``compaction``: ``pipeline.maintenance.compact(store, retention_hours=0)`` on a table of many
  small commits with replayed (repeated) rows, and on ``ingest_fleet``'s 100,000-series table
  when it is in the work folder; files, bytes and rows before and after, and whether every read
  row is the same after.
* ``training_load``: ``read_rows`` (after ``sample_cutoff``, as ``load_table`` does) and
  ``prepare_training_data`` on 10,000 series x 8,760 hourly steps (``--quick``: 1,000), at
  ``train_memory_mb`` 4096 (the default) and 1024 (sampled); the table is built once under
  ``--train-tables`` and reused. A sampler thread says in which ``pipeline`` frames the peak
  RSS was reached (``peak_at``).
* ``serve_fleet``: ``RollingForecaster`` + ``serve_batch`` in one process with the default model
  (``ModelSettings``: LSTM, lookback 720) for 100,000 series (``--quick``: 10,000), the serve
  settings' ``max_series``/``max_new_series``; timed rounds of one record per series.

**The serve warm-up.** Every series is admitted by real records through ``serve_batch`` (as
many steps as admission takes: ``held_after_each_admission_step``; a 100,000-series fleet
against ``max_new_series`` 10,000 takes about 35), then its window is filled to the lookback
directly, as ``lookback`` in-order appends leave it (ring, observed steps, count; checked bit
for bit against real appends on a sampled series). 72M real records would take about half an
hour here (25 us a record); ``--serve-warm records`` does that instead (at 5,000 series the two
gave the same peak RSS within 3%: 509.5 MB by records twice, 508.0 and 523.6 MB filled).

Ingest figures include ``steady_rows_per_cpu_s`` (the ingest process's CPU seconds, every
thread, over the same span), less swayed than wall time by other work on a shared machine;
every section says the 1-minute load average at its start and end.

Targets: ingest >= 20,000 rows/s at 100,000 series, and within 1.5x of itself from 1,000 to
100,000 series and from 100 to 10,000 steps of history; the 87.6M-row training load <= 60 s and
<= 4 GB; 100,000 series served at the default lookback <= 3 GB.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

# Nothing of ``pipeline`` is imported at the top: the ingest child also runs the old commit's
# code (PYTHONPATH at its worktree), which lacks the new modules.

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
OLD_COMMIT = "45ef4a8"
STEP_MS = 3_600_000
CHANNEL = "value"
SECTIONS = (
    "ingest_fleet",
    "ingest_history",
    "old_store",
    "compaction",
    "training_load",
    "serve_fleet",
)
TARGETS = {
    "ingest_rows_per_s_at_100k_series": ">= 20000",
    "ingest_spread_1k_to_100k_series": "<= 1.5x",
    "ingest_spread_100_to_10k_history": "<= 1.5x",
    "training_load_87.6M_rows_s": "<= 60",
    "training_load_87.6M_rows_peak_rss_mb": "<= 4096",
    "serve_100k_series_peak_rss_mb": "<= 3072",
}
CHILD_TIMEOUT_S = 3 * 3600
# Steps of one record per series at most, for serve to give every series of the fleet a window.
ADMISSION_STEPS = 64

logger = logging.getLogger("benchmarks.scale")


# --- memory and processes -----------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory line (``VmHWM``: peak RSS, ``VmRSS``: now), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def clean_env(pythonpath: Path = ROOT) -> dict[str, str]:
    """This environment without ``ROLLCAST_*`` (settings are built explicitly), ``pythonpath``
    first on the path (the new code, or the old commit's worktree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLCAST_")}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(kind: str, spec: dict[str, Any], log: Path, pythonpath: Path = ROOT) -> dict:
    """``scale.py --child KIND --spec JSON`` in a fresh process; its last stdout line's JSON."""
    command = [sys.executable, str(SCRIPT), "--child", kind, "--spec", json.dumps(spec)]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=clean_env(pythonpath),
            cwd=log.parent,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"child {kind} failed ({done.returncode}); {log}:\n{tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = round(time.perf_counter() - started, 1)
    return result


class PeakWatcher(threading.Thread):
    """Samples this process's RSS every ``interval_s``; at each new high, keeps the main
    thread's innermost ``pipeline`` frames: where the peak was reached."""

    def __init__(self, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peak_mb, self.stack = interval_s, 0.0, []
        self._main = threading.main_thread().ident
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            now = rss_mb()
            if now > self.peak_mb:
                self.peak_mb, self.stack = now, self._where()

    def _where(self) -> list[str]:
        frame = sys._current_frames().get(self._main)
        names = []
        while frame is not None:
            code = frame.f_code
            if "/pipeline/" in code.co_filename:
                names.append(f"{Path(code.co_filename).stem}.{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return names[:6]

    def stop(self) -> dict[str, Any]:
        self._halt.set()
        self.join()
        return {"sampled_peak_rss_mb": self.peak_mb, "peak_at": self.stack}


def start_profiler(spec: dict[str, Any]) -> Any:
    if not spec.get("profile"):
        return None
    from pyinstrument import Profiler

    profiler = Profiler()
    profiler.start()
    return profiler


def stop_profiler(profiler: Any, spec: dict[str, Any]) -> None:
    if profiler is None:
        return
    profiler.stop()
    Path(spec["profile"]).parent.mkdir(parents=True, exist_ok=True)
    Path(spec["profile"]).write_text(profiler.output_text(unicode=False, color=False))


# --- data ------------------------------------------------------------------------------------


def series_name(i: int) -> str:
    return f"s{i:06d}"


def value_of(i: int, step: int) -> float:
    return round(math.sin(2 * math.pi * step / 24) + 0.01 * i, 5)


def first_step_ms(total_steps: int) -> int:
    """The first step of a series of ``total_steps`` hourly steps ending an hour ago (the record
    policy refuses timestamps a day past the stream's time)."""
    now = int(time.time() * 1000)
    return now - now % STEP_MS - total_steps * STEP_MS


def fleet(n_series: int, steps: range, t0_ms: int) -> Iterator[Any]:
    """Observations of every series at each step, step by step (a fleet reporting in turn)."""
    from pipeline.records import Observation

    for step in steps:
        ts = t0_ms + step * STEP_MS
        for i in range(n_series):
            yield Observation(series_name(i), ts, {CHANNEL: value_of(i, step)})


def history_frame(series: range, steps: range, t0_ms: int) -> Any:
    """A long frame of ``series`` x ``steps``, as the stored history (the fleet's values)."""
    import numpy as np
    import pandas as pd

    ids = np.array([series_name(i) for i in series], dtype=object)
    idx = np.arange(series.start, series.stop, dtype=np.float64)
    step = np.arange(steps.start, steps.stop, dtype=np.int64)
    values = np.sin(2 * np.pi * step / 24)[None, :] + 0.01 * idx[:, None]
    return pd.DataFrame(
        {
            "series": np.repeat(ids, len(step)),
            "ts": pd.to_datetime(np.tile(t0_ms + step * STEP_MS, len(ids)), unit="ms", utc=True),
            CHANNEL: np.round(values, 5).ravel(),
        }
    )


class Broker:
    """The embedded broker, and fresh 3-partition topics on it."""

    def __init__(self) -> None:
        from pipeline.broker import EmbeddedBroker

        self.broker = EmbeddedBroker()

    def __enter__(self) -> Broker:
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()

    @property
    def servers(self) -> str:
        return self.broker.bootstrap_servers

    def produce(self, name: str, observations: Iterator[Any], total: int) -> dict[str, Any]:
        """A fresh topic (and its dead-letter topic) holding ``observations``."""
        from pipeline.config import KafkaSettings
        from pipeline.kafka_io import KafkaTransport
        from pipeline.transport import replay

        topic = f"{name}-{uuid.uuid4().hex[:8]}"
        kafka = KafkaSettings(bootstrap_servers=self.servers, topic_observations=topic)
        transport = KafkaTransport(kafka)
        transport.create_topics([topic, f"{topic}-dead"], 3)
        sink = transport.sink()
        started = time.perf_counter()
        try:
            sent = replay(sink, observations, total)
        finally:
            sink.close()
        seconds = time.perf_counter() - started
        logger.info("produced %d records to %s in %.1f s", sent, topic, seconds)
        return {"topic": topic, "produced": sent, "produce_s": round(seconds, 1)}


# --- the ingest child (runs the new code or, with PYTHONPATH at the worktree, the old) -------


class TimedSource:
    """A source that remembers when a poll first returned records, and the time spent polling."""

    def __init__(self, source: Any, clock: dict[str, float]) -> None:
        self._source, self._clock = source, clock

    def poll(self, timeout_s: float = 1.0) -> list:
        started = time.perf_counter()
        records = self._source.poll(timeout_s)
        now = time.perf_counter()
        self._clock["poll_s"] += now - started
        if records and "first_records" not in self._clock:
            self._clock["first_records"] = now
        return records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class TimedTransport:
    def __init__(self, transport: Any, clock: dict[str, float]) -> None:
        self._transport, self._clock = transport, clock
        self.topics = transport.topics

    def source(self, *args: Any, **kwargs: Any) -> TimedSource:
        return TimedSource(self._transport.source(*args, **kwargs), self._clock)

    def sink(self) -> Any:
        return self._transport.sink()

    def create_topics(self, *args: Any, **kwargs: Any) -> Any:
        return self._transport.create_topics(*args, **kwargs)


def child_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    """One ingest run: ``ingest_from_settings`` until every produced record is read."""
    import pipeline
    import pipeline.ingest as ingest_module
    from pipeline.config import IngestSettings, KafkaSettings, RecordSettings, StoreSettings
    from pipeline.kafka_io import KafkaTransport
    from pipeline.wiring import ingest_from_settings

    rss_imports = rss_mb()
    flushes: list[tuple[float, float, int, float]] = []  # start, end, records, CPU s at end
    clock: dict[str, float] = {"poll_s": 0.0}
    original_batch = ingest_module.ingest_batch

    def timed_batch(records: list, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_batch(records, *args, **kwargs)
        finally:
            flushes.append((started, time.perf_counter(), len(records), time.process_time()))

    ingest_module.ingest_batch = timed_batch  # looked up by run_ingest at each flush
    ledger = getattr(ingest_module, "IngestLedger", None)  # the new code's in-memory state
    if ledger is not None:
        original_rebuilt = ledger.rebuilt.__func__

        def timed_rebuilt(cls: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original_rebuilt(cls, *args, **kwargs)
            finally:
                clock["ledger_rebuild_s"] = time.perf_counter() - started

        ledger.rebuilt = classmethod(timed_rebuilt)
    kafka = KafkaSettings(
        bootstrap_servers=spec["servers"],
        topic_observations=spec["topic"],
        topic_deadletter=f"{spec['topic']}-dead",
        topic_partitions=3,
    )
    store = StoreSettings(data_dir=Path(spec["data_dir"]))
    ingest = IngestSettings(ingest_group=f"ingest-{uuid.uuid4().hex[:8]}", ingest_idle_s=20.0)
    transport = TimedTransport(KafkaTransport(kafka), clock)
    profiler = start_profiler(spec)
    called = time.perf_counter()
    report = ingest_from_settings(transport, store, ingest, RecordSettings(), spec["records"])
    ended = time.perf_counter()
    cpu_s = time.process_time()
    stop_profiler(profiler, spec)
    rows = report.rows_written
    first = clock.get("first_records", called)
    result: dict[str, Any] = {
        "code": spec["code"],
        "pipeline": str(Path(pipeline.__file__).parent.parent),
        "records_in": report.records_in,
        "rows_written": rows,
        "duplicates": report.duplicates,
        "dead_letters": sum(report.dead_letters.values()),
        "series": len(report.series),
        "flushes": len(flushes),
        "flush_records": sorted({f[2] for f in flushes})[-3:],
        "startup_s": round(first - called, 2),
        "ledger_rebuild_s": round(clock["ledger_rebuild_s"], 2)
        if "ledger_rebuild_s" in clock
        else None,
        "ingest_s": round(flushes[-1][1] - first, 2) if flushes else None,
        "total_s": round(ended - called, 2),
        "poll_s": round(clock["poll_s"], 2),
        "flush_s": round(sum(f[1] - f[0] for f in flushes), 2),
        "rows_per_s": round(rows / (flushes[-1][1] - first)) if flushes else None,
        "steady_rows_per_s": None,
        "cpu_s": round(cpu_s, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_imports,
    }
    if len(flushes) >= 2:
        steady = sum(f[2] for f in flushes[1:])
        result["steady_rows_per_s"] = round(steady / (flushes[-1][1] - flushes[0][1]))
        # CPU seconds of this process (every thread) over the same span: less swayed than
        # wall time by the other processes of a shared machine (the broker's are not counted)
        cpu = flushes[-1][3] - flushes[0][3]
        result["steady_rows_per_cpu_s"] = round(steady / cpu) if cpu > 0 else None
        result["steady_records"] = steady
        result["first_flush_s"] = round(flushes[0][1] - flushes[0][0], 2)
    return result


def ingest_once(
    broker: Broker,
    topic: dict[str, Any],
    data_dir: Path,
    work: Path,
    name: str,
    code: str = "new",
    profile: bool = False,
    old_tree: Path | None = None,
) -> dict[str, Any]:
    spec = {
        "servers": broker.servers,
        "topic": topic["topic"],
        "records": topic["produced"],
        "data_dir": str(data_dir),
        "code": code,
        "profile": str(work / "profiles" / f"{name}.txt") if profile else None,
    }
    pythonpath = ROOT if code == "new" else old_tree
    assert pythonpath is not None
    result = run_child("ingest", spec, work / "logs" / f"{name}.log", pythonpath)
    if code == "old" and not result["pipeline"].startswith(str(old_tree)):
        raise RuntimeError(f"the old ingest ran {result['pipeline']}, not {old_tree}")
    logger.info(
        "%s: %s rows/s steady, %s overall, start-up %s s, peak RSS %s MB",
        name,
        result["steady_rows_per_s"],
        result["rows_per_s"],
        result["startup_s"],
        result["peak_rss_mb"],
    )
    return result


def spread(rates: list[float | None]) -> float | None:
    """The fastest rate over the slowest (None unless every one of two or more is known)."""
    known = [r for r in rates if r]
    return round(max(known) / min(known), 3) if len(known) == len(rates) >= 2 else None


# --- 1. ingest_fleet -------------------------------------------------------------------------


def section_ingest_fleet(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows_each = args.ingest_rows
    sizes = []
    with Broker() as broker:
        for n_series in args.fleet_sizes:
            steps = max(3, math.ceil(rows_each / n_series))
            t0 = first_step_ms(steps)
            topic = broker.produce(
                f"fleet-{n_series}", fleet(n_series, range(steps), t0), n_series * steps
            )
            data_dir = work / f"fleet-{n_series}"
            shutil.rmtree(data_dir, ignore_errors=True)
            result = ingest_once(
                broker, topic, data_dir, work, f"ingest_fleet-{n_series}", profile=args.profile
            )
            sizes.append({"series": n_series, "steps": steps, **topic, **result})
    rates = [s["steady_rows_per_s"] for s in sizes]
    at_100k = next((s["steady_rows_per_s"] for s in sizes if s["series"] == 100_000), None)
    return {
        "sizes": sizes,
        "steady_rows_per_s": {str(s["series"]): s["steady_rows_per_s"] for s in sizes},
        "steady_rows_per_cpu_s": {str(s["series"]): s.get("steady_rows_per_cpu_s") for s in sizes},
        "peak_rss_mb": {f"{s['series']}": s["peak_rss_mb"] for s in sizes},
        "spread_1k_to_100k": spread(rates),
        "meets_20k_at_100k": bool(at_100k and at_100k >= 20_000),
        "meets_spread_1_5x": bool((spread(rates) or 99) <= 1.5),
        "profiled": bool(args.profile),
    }


# --- 2. ingest_history -----------------------------------------------------------------------


def write_history(uri: str, n_series: int, steps: int, t0_ms: int, batch_rows: int) -> float:
    """The stored history, appended in batches of about ``batch_rows`` rows; seconds taken."""
    from pipeline.delta_store import DeltaSeriesStore

    store = DeltaSeriesStore(uri)
    per_batch = max(1, batch_rows // steps)
    started = time.perf_counter()
    for lo in range(0, n_series, per_batch):
        store.append(history_frame(range(lo, min(lo + per_batch, n_series)), range(steps), t0_ms))
    return time.perf_counter() - started


def section_ingest_history(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n_series, new_steps = 1_000, args.history_new_steps
    sizes = []
    with Broker() as broker:
        for history in args.history_sizes:
            t0 = first_step_ms(history + new_steps)
            data_dir = work / f"history-{history}"
            shutil.rmtree(data_dir, ignore_errors=True)
            build_s = write_history(str(data_dir / "series"), n_series, history, t0, 2_000_000)
            topic = broker.produce(
                f"history-{history}",
                fleet(n_series, range(history, history + new_steps), t0),
                n_series * new_steps,
            )
            result = ingest_once(
                broker, topic, data_dir, work, f"ingest_history-{history}", profile=args.profile
            )
            sizes.append(
                {
                    "history_steps": history,
                    "stored_rows": n_series * history,
                    "history_build_s": round(build_s, 1),
                    **topic,
                    **result,
                }
            )
    rates = [s["steady_rows_per_s"] for s in sizes]
    return {
        "series": n_series,
        "new_steps": new_steps,
        "sizes": sizes,
        "steady_rows_per_s": {str(s["history_steps"]): s["steady_rows_per_s"] for s in sizes},
        "steady_rows_per_cpu_s": {
            str(s["history_steps"]): s.get("steady_rows_per_cpu_s") for s in sizes
        },
        "startup_s": {str(s["history_steps"]): s["startup_s"] for s in sizes},
        "ledger_rebuild_s": {str(s["history_steps"]): s["ledger_rebuild_s"] for s in sizes},
        "spread_100_to_10k": spread(rates),
        "meets_spread_1_5x": bool((spread(rates) or 99) <= 1.5),
        "profiled": bool(args.profile),
    }


# --- 3. old_store ----------------------------------------------------------------------------


def check_old_tree(tree: Path) -> None:
    if (
        not (tree / "pipeline" / "parquet_store.py").exists()
        or (tree / "pipeline" / "delta_store.py").exists()
    ):
        raise RuntimeError(
            f"{tree} is not a checkout of {OLD_COMMIT}: git worktree add {tree} {OLD_COMMIT}"
        )


def section_old_store(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tree = args.old_tree.resolve()
    check_old_tree(tree)
    sizes = []
    with Broker() as broker:
        for index, n_series in enumerate((1_000, 10_000)):
            steps = max(2, args.old_rows // n_series)
            topic = broker.produce(
                f"old-{n_series}",
                fleet(n_series, range(steps), first_step_ms(steps)),
                n_series * steps,
            )
            order = ("old", "new") if index % 2 == 0 else ("new", "old")
            runs = {}
            for code in order:
                data_dir = work / f"{code}-{n_series}"
                shutil.rmtree(data_dir, ignore_errors=True)
                runs[code] = ingest_once(
                    broker,
                    topic,
                    data_dir,
                    work,
                    f"old_store-{code}-{n_series}",
                    code=code,
                    profile=args.profile,
                    old_tree=tree,
                )
            old, new = runs["old"]["rows_per_s"], runs["new"]["rows_per_s"]
            sizes.append(
                {
                    "series": n_series,
                    "rows": topic["produced"],
                    "order": list(order),
                    "old_rows_per_s": old,
                    "new_rows_per_s": new,
                    "new_over_old": round(new / old, 1) if old and new else None,
                    "old_peak_rss_mb": runs["old"]["peak_rss_mb"],
                    "new_peak_rss_mb": runs["new"]["peak_rss_mb"],
                    "old": runs["old"],
                    "new": runs["new"],
                }
            )
    return {"old_commit": OLD_COMMIT, "sizes": sizes, "profiled": bool(args.profile)}


# --- 4. compaction ---------------------------------------------------------------------------


def read_all(uri: str) -> Any:
    from pipeline.delta_store import DeltaSeriesStore

    return DeltaSeriesStore(uri).rows()


def same_rows(a: Any, b: Any) -> bool:
    import numpy as np

    return (
        a.series == b.series
        and np.array_equal(a.codes, b.codes)
        and np.array_equal(a.ts_ms, b.ts_ms)
        and np.array_equal(a.values, b.values, equal_nan=True)
    )


def compact_table(uri: str, name: str) -> dict[str, Any]:
    from pipeline.delta_store import DeltaSeriesStore
    from pipeline.maintenance import compact

    before_rows = read_all(uri)
    started = time.perf_counter()
    report = compact(DeltaSeriesStore(uri), retention_hours=0)
    seconds = time.perf_counter() - started
    after_rows = read_all(uri)
    figures = report.as_dict()
    return {
        "table": name,
        **figures,
        "compact_s": round(seconds, 1),
        "rows_read_before_after": [len(before_rows), len(after_rows)],
        "rows_identical": same_rows(before_rows, after_rows),
        "files_on_disk_after": sum(1 for _ in Path(uri).glob("*.parquet")),
    }


def small_commits_table(uri: str, n_series: int, steps: int, replays: int) -> dict[str, Any]:
    """A table of one commit per step (``n_series`` rows each) and ``replays`` commits that
    store some steps again (a replayed topic, a second writer): repeated (series, ts) rows."""
    from pipeline.delta_store import DeltaSeriesStore

    store, t0 = DeltaSeriesStore(uri), first_step_ms(steps)
    started = time.perf_counter()
    for step in range(steps):
        store.append(history_frame(range(n_series), range(step, step + 1), t0))
    for k in range(replays):
        step = k * steps // max(replays, 1)
        store.append(history_frame(range(n_series), range(step, step + 1), t0))
    return {
        "series": n_series,
        "commits": steps + replays,
        "rows_per_commit": n_series,
        "replayed_rows": replays * n_series,
        "build_s": round(time.perf_counter() - started, 1),
    }


def section_compaction(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tables = []
    uri = str(work / "small-commits" / "series")
    shutil.rmtree(work / "small-commits", ignore_errors=True)
    built = small_commits_table(uri, 1_000, args.compaction_commits, args.compaction_commits // 10)
    tables.append({**built, **compact_table(uri, "small_commits")})
    ingested = work.parent / "ingest_fleet" / "fleet-100000" / "series"
    if (ingested / "_delta_log").is_dir():
        tables.append(compact_table(str(ingested), "ingest_fleet_100000_series"))
    else:
        logger.info("no ingest_fleet table at %s: run that section first to compact it", ingested)
    return {"tables": tables}


# --- 5. training_load ------------------------------------------------------------------------


def training_table(root: Path, n_series: int, steps: int, chunk_rows: int) -> dict[str, Any]:
    """The table of ``n_series`` x ``steps`` hourly rows under ``root``, built once and reused."""
    from pipeline.delta_store import DeltaSeriesStore

    folder = root / f"train-{n_series}x{steps}"
    marker = folder / "complete.json"
    uri = str(folder / "series")
    if marker.exists():
        info = json.loads(marker.read_text())
        logger.info("reusing the training table %s (%d rows)", uri, info["rows"])
        return {**info, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    store, t0 = DeltaSeriesStore(uri), first_step_ms(steps)
    per_chunk = max(1, chunk_rows // steps)
    started = time.perf_counter()
    for lo in range(0, n_series, per_chunk):
        store.append(history_frame(range(lo, min(lo + per_chunk, n_series)), range(steps), t0))
        logger.info("training table: %d of %d series", min(lo + per_chunk, n_series), n_series)
    built = store.info()
    info = {
        "uri": uri,
        "series": n_series,
        "steps": steps,
        "rows": built.rows,
        "files": built.files,
        "bytes": built.bytes,
        "build_s": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


def child_training(spec: dict[str, Any]) -> dict[str, Any]:
    """``read_rows`` and ``prepare_training_data`` as ``load_table`` runs them, timed apart."""
    import numpy as np

    from pipeline.config import ModelSettings, StoreSettings, TrainSettings
    from pipeline.delta_store import DeltaSeriesStore
    from pipeline.records import RecordPolicy
    from pipeline.training import read_rows, sample_cutoff
    from pipeline.training_data import prepare_training_data

    rss_imports = rss_mb()
    train = TrainSettings(train_memory_mb=spec["train_memory_mb"])
    model, store_settings = ModelSettings(), StoreSettings()
    span = model.segment_len + model.horizon
    profiler, watcher = start_profiler(spec), PeakWatcher()
    watcher.start()
    started = time.perf_counter()
    store = DeltaSeriesStore(spec["uri"])
    since = sample_cutoff(store, train)
    rows = read_rows(store, train, since)
    read = time.perf_counter()
    rss_read, peak_read = rss_mb(), peak_rss_mb()
    data = prepare_training_data(
        rows, RecordPolicy(), store_settings.freq, store_settings.max_gap, span
    )
    done = time.perf_counter()
    stop_profiler(profiler, spec)
    where = watcher.stop()
    steps = np.array([len(f) for f in data.series.values()])
    return {
        "train_memory_mb": spec["train_memory_mb"],
        "sampled_since_ms": since,
        "rows_read": len(rows),
        "series_read": len(rows.series),
        "series_trained": len(data.series),
        "steps_per_series": [int(steps.min()), int(steps.max())] if len(steps) else None,
        "skipped": len(data.skipped),
        "read_s": round(read - started, 1),
        "prepare_s": round(done - read, 1),
        "load_s": round(done - started, 1),
        "rss_after_imports_mb": rss_imports,
        "rss_after_read_mb": rss_read,
        "peak_rss_read_mb": peak_read,  # the peak while reading (VmHWM when read_rows returned)
        "peak_rss_mb": peak_rss_mb(),
        **where,
    }


def section_training_load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n_series, steps = (1_000, 8_760) if args.quick else (10_000, 8_760)
    table = training_table(args.train_tables, n_series, steps, 4_000_000)
    runs = []
    for memory_mb in (4096, 1024):
        spec = {
            "uri": table["uri"],
            "train_memory_mb": memory_mb,
            "profile": str(work / "profiles" / f"training_load-{memory_mb}.txt")
            if args.profile
            else None,
        }
        result = run_child("training", spec, work / "logs" / f"training_load-{memory_mb}.log")
        logger.info(
            "training load at %d MB: %.1f s (read %.1f, prepare %.1f), peak RSS %.0f MB",
            memory_mb,
            result["load_s"],
            result["read_s"],
            result["prepare_s"],
            result["peak_rss_mb"],
        )
        runs.append(result)
    full = runs[0]
    return {
        "table": table,
        "runs": runs,
        "meets_60_s": full["load_s"] <= 60 if table["rows"] >= 87_600_000 else None,
        "meets_4_gb": full["peak_rss_mb"] <= 4096 if table["rows"] >= 87_600_000 else None,
        "profiled": bool(args.profile),
    }


# --- 6. serve_fleet --------------------------------------------------------------------------


def serve_records(n_series: int, step: int, t0_ms: int, offset: int, first: int = 0) -> list[Any]:
    """One record per series ``first .. first + n_series`` at ``step``, as a consumer hands
    them (3 partitions)."""
    from pipeline.records import RawRecord

    ts, now = t0_ms + step * STEP_MS, int(time.time() * 1000)
    out = []
    for i in range(first, first + n_series):
        key = series_name(i)
        value = f'{{"series":"{key}","ts":{ts},"values":{{"{CHANNEL}":{value_of(i, step)}}}}}'
        out.append(RawRecord("obs", i % 3, offset + i - first, key.encode(), value.encode(), now))
    return out


def serve_in_polls(records: list[Any], poll: int, serve: Callable[[list[Any]], None]) -> None:
    for lo in range(0, len(records), poll):
        serve(records[lo : lo + poll])


def fill_window(window: Any, ts_ms: Any, values: Any) -> None:
    """``window`` as ``len(ts_ms)`` (its lookback) in-order appends of ``values`` leave it."""
    lookback = window.lookback
    window._ring[:lookback] = values
    window._ring[lookback:] = values
    window._observed_ts[:] = ts_ms
    window._count = lookback
    window.last_ts_ms = window._newest_ms = int(ts_ms[-1])
    window._held.clear()
    window._placed.clear()
    window._newest = None


def check_fill(config: Any, grace: int, ts_ms: Any, values: Any) -> None:
    """A filled window equals one made by real appends, now and after one more step."""
    import numpy as np

    from pipeline.forecast import new_window

    real, filled = new_window(config, grace), new_window(config, grace)
    for ts, row in zip(ts_ms.tolist(), values, strict=True):
        real.append(ts, row)
    real.placed()
    fill_window(filled, ts_ms, values)
    for name in ("_ring", "_observed_ts"):
        assert np.array_equal(getattr(real, name), getattr(filled, name)), name
    assert (real._count, real.last_ts_ms) == (filled._count, filled.last_ts_ms)
    step = int(ts_ms[-1]) + STEP_MS
    for window in (real, filled):
        window.append(step, values[0])
    a, b = real.placed(), filled.placed()
    assert len(a) == len(b) == 1 and np.array_equal(a[0].window, b[0].window)


def section_serve_fleet(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from pipeline.config import ModelSettings, RecordSettings, ServeSettings
    from pipeline.forecast import LoadedForecaster, resolve_precision
    from pipeline.intervals import Calibration
    from pipeline.model import build_forecaster
    from pipeline.recipe import ForecasterConfig
    from pipeline.serve import RollingForecaster, freeze_heap, new_stats, serve_batch

    n_series = args.serve_series or (10_000 if args.quick else 100_000)
    rss_imports = rss_mb()
    shape = ModelSettings().model_dump(exclude={"season"})  # the train flow's model settings
    config = ForecasterConfig(channels=(CHANNEL,), **shape)
    config = replace(config, norm=config.norms[0])  # a served model's norm: "auto" is resolved
    network = build_forecaster(config, seed=0).eval()
    radii = np.ones((len(config.interval_levels), config.horizon, 1))  # as a trained champion's
    network.calibrate_intervals(Calibration(config.interval_levels, radii))
    model = LoadedForecaster("scale", "1", network)
    serve, policy = ServeSettings(), RecordSettings().policy()
    max_series = max(serve.max_series, n_series)
    precision = resolve_precision(serve.inference_precision, torch.device("cpu"))
    rolling = RollingForecaster(
        model, max_series, policy, serve.max_new_series, serve.forecast_format, precision
    )
    from serve_path import NullSink

    class BytesSink(NullSink):
        """Writes each forecast's bytes and keeps nothing: the serve loop's own cost."""

        def send_forecasts(self, batch: Any) -> None:
            for _ in batch.messages():
                pass

    stats, sink = new_stats(rolling), BytesSink()
    rss_model = rss_mb()
    lookback, poll = config.lookback, serve.max_poll_records
    t0 = first_step_ms(lookback + ADMISSION_STEPS + args.serve_rounds)
    admitted: list[int] = []  # series holding a window after each admission step

    def serve_poll(records: list[Any]) -> None:
        serve_batch(records, rolling, sink, stats)  # type: ignore[arg-type]

    started = time.perf_counter()
    step, offset = 0, 0
    if args.serve_warm == "records":
        for step in range(lookback + ADMISSION_STEPS):  # a key may need records to be admitted
            serve_in_polls(serve_records(n_series, step, t0, offset), poll, serve_poll)
            offset += n_series
            if step + 1 >= lookback and len(rolling.series) == n_series:
                break
        step += 1
    else:
        while rolling.live_series() < n_series and step < ADMISSION_STEPS:  # by real records
            serve_in_polls(serve_records(n_series, step, t0, offset), poll, serve_poll)
            step, offset = step + 1, offset + n_series
            admitted.append(rolling.live_series())
        ts = t0 + np.arange(lookback, dtype=np.int64) * STEP_MS
        base = np.sin(2 * np.pi * np.arange(lookback) / 24)
        probe = (base + 0.01 * 7).astype(np.float32)[:, None]
        check_fill(config, policy.grace_steps, ts, probe)
        for i in range(n_series):
            state = rolling.series_state(series_name(i))
            assert state is not None, f"series {i} was not admitted"
            values = np.round(base + 0.01 * i, 5).astype(np.float32)[:, None]
            fill_window(state.window, ts, values)
        step = lookback
    warm_s = time.perf_counter() - started
    held = rolling.live_series()
    rss_warm = rss_mb()
    freeze_heap()  # as serve_from_settings does before its loop
    rounds = []
    profiler = start_profiler(
        {"profile": str(work / "profiles" / "serve_fleet.txt") if args.profile else None}
    )
    for _ in range(args.serve_rounds):
        before, seconds = stats.forecasts_out, 0.0
        for lo in range(0, n_series, poll):  # a poll's records made untimed, then served
            records = serve_records(min(poll, n_series - lo), step, t0, offset + lo, first=lo)
            begun = time.perf_counter()
            serve_poll(records)
            seconds += time.perf_counter() - begun
        made = stats.forecasts_out - before
        rounds.append({"forecasts": made, "s": round(seconds, 1), "per_s": round(made / seconds)})
        logger.info("serve round: %d forecasts in %.1f s", made, seconds)
        step, offset = step + 1, offset + n_series
    stop_profiler(
        profiler, {"profile": str(work / "profiles" / "serve_fleet.txt") if args.profile else None}
    )
    peak = peak_rss_mb()
    rates = sorted(r["per_s"] for r in rounds)
    return {
        "series": n_series,
        "lookback": lookback,
        "model": {
            k: shape[k] for k in ("architecture", "hidden_size", "num_layers", "segment_len")
        },
        "max_series": max_series,
        "max_new_series": serve.max_new_series,
        "format": serve.forecast_format,
        "intervals": serve.forecast_format == "v2",
        "precision": str(precision).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "warm": args.serve_warm,
        "warm_s": round(warm_s, 1),
        "series_held": held,
        "admission_steps": len(admitted),
        "held_after_each_admission_step": admitted,
        "established": len(rolling.series),
        "rounds": rounds,
        "forecasts_per_s_median": rates[len(rates) // 2] if rates else None,
        "dead_letters": sum(stats.dead_letters.values()),
        "rss_after_imports_mb": rss_imports,
        "rss_after_model_mb": rss_model,
        "rss_after_warm_mb": rss_warm,
        "rss_end_mb": rss_mb(),
        "peak_rss_mb": peak,
        "meets_3_gb": peak <= 3072 if n_series >= 100_000 else None,
        "profiled": bool(args.profile),
    }


# --- the run ----------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "ingest_fleet": section_ingest_fleet,
    "ingest_history": section_ingest_history,
    "old_store": section_old_store,
    "compaction": section_compaction,
    "training_load": section_training_load,
    "serve_fleet": section_serve_fleet,
}


def section_args(args: argparse.Namespace) -> list[str]:
    """The options a section's subprocess is run with (those of this run)."""
    out = ["--workdir", str(args.workdir), "--train-tables", str(args.train_tables)]
    out += ["--old-tree", str(args.old_tree), "--serve-warm", args.serve_warm]
    out += ["--serve-rounds", str(args.serve_rounds), "--ingest-rows", str(args.ingest_rows)]
    out += ["--old-rows", str(args.old_rows), "--history-new-steps", str(args.history_new_steps)]
    out += ["--compaction-commits", str(args.compaction_commits)]
    out += ["--fleet-sizes", *map(str, args.fleet_sizes)]
    out += ["--history-sizes", *map(str, args.history_sizes)]
    if args.serve_series:
        out += ["--serve-series", str(args.serve_series)]
    if args.quick:
        out.append("--quick")
    if args.profile:
        out.append("--profile")
    return out


def run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One section in its own process (progress on stderr, figures on stdout's last line)."""
    command = [sys.executable, str(SCRIPT), "--section", name, *section_args(args)]
    started, load = time.perf_counter(), os.getloadavg()[0]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=clean_env(), check=False)
    wall = round(time.perf_counter() - started, 1)
    # The 1-minute load average at the start and end: a busy shared machine reads slower.
    loads = [round(load, 2), round(os.getloadavg()[0], 2)]
    if done.returncode != 0:
        error = f"exit {done.returncode}: {done.stdout[-2000:]}"
        return {"error": error, "wall_s": wall, "load_avg_1m": loads}
    return {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "wall_s": wall,
        "load_avg_1m": loads,
    }


def summary(figures: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(figure, value, target) lines for the console."""
    lines: list[tuple[str, Any, str]] = []
    fleet_ = figures.get("ingest_fleet", {})
    for s in fleet_.get("sizes", []):
        target = ">= 20,000" if s["series"] == 100_000 else ""
        lines.append(
            (f"ingest {s['series']} series: steady rows/s", s["steady_rows_per_s"], target)
        )
        lines.append((f"ingest {s['series']} series: start-up s", s["startup_s"], ""))
        lines.append((f"ingest {s['series']} series: peak RSS MB", s["peak_rss_mb"], ""))
    if "spread_1k_to_100k" in fleet_:
        lines.append(("ingest spread 1k..100k series", fleet_["spread_1k_to_100k"], "<= 1.5"))
    hist = figures.get("ingest_history", {})
    for s in hist.get("sizes", []):
        name = f"ingest onto {s['history_steps']} steps"
        lines.append((f"{name}: steady rows/s", s["steady_rows_per_s"], ""))
        lines.append(
            (f"{name}: start-up s (ledger read)", (s["startup_s"], s["ledger_rebuild_s"]), "")
        )
        lines.append((f"{name}: peak RSS MB", s["peak_rss_mb"], ""))
    if "spread_100_to_10k" in hist:
        lines.append(("ingest spread 100..10k steps", hist["spread_100_to_10k"], "<= 1.5"))
    for s in figures.get("old_store", {}).get("sizes", []):
        name = f"old vs new store, {s['series']} series"
        lines.append((f"{name}: rows/s", (s["old_rows_per_s"], s["new_rows_per_s"]), ""))
        lines.append((f"{name}: new/old", s["new_over_old"], ""))
    for t in figures.get("compaction", {}).get("tables", []):
        name = f"compaction {t['table']}"
        lines.append((f"{name}: files", t["files"], ""))
        lines.append((f"{name}: bytes", t["bytes"], ""))
        lines.append((f"{name}: duplicates removed", t["duplicates_removed"], ""))
        lines.append((f"{name}: rows identical", t["rows_identical"], ""))
    train = figures.get("training_load", {})
    for r in train.get("runs", []):
        name = f"training load {train['table']['rows']:,} rows at {r['train_memory_mb']} MB"
        full = r["train_memory_mb"] == 4096 and train["table"]["rows"] >= 87_600_000
        seconds = (r["load_s"], r["read_s"], r["prepare_s"])
        lines.append((f"{name}: s (read, prepare)", seconds, "<= 60" if full else ""))
        lines.append((f"{name}: peak RSS MB", r["peak_rss_mb"], "<= 4096" if full else ""))
        lines.append((f"{name}: rows read", r["rows_read"], ""))
    serve = figures.get("serve_fleet", {})
    if "peak_rss_mb" in serve:
        name = f"serve {serve['series']:,} series, lookback {serve['lookback']}"
        target = "<= 3072" if serve["series"] >= 100_000 else ""
        lines.append((f"{name}: peak RSS MB", serve["peak_rss_mb"], target))
        lines.append((f"{name}: forecasts/s", serve["forecasts_per_s_median"], ""))
    for name, section in figures.items():
        if isinstance(section, dict) and "error" in section:
            lines.append((f"{name}: FAILED", section["error"][-300:], ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="the figures as JSON, last line")
    parser.add_argument(
        "--quick", action="store_true", help="training_load 1,000 series, serve_fleet 10,000"
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles too")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rollcast-scale"))
    parser.add_argument("--train-tables", type=Path, default=Path("/tmp/rollcast-scale-tables"))
    parser.add_argument("--old-tree", type=Path, default=Path("/tmp/old-rollcast"))
    parser.add_argument("--ingest-rows", type=int, default=600_000, help="per fleet size")
    parser.add_argument("--fleet-sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--history-sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--history-new-steps", type=int, default=300)
    parser.add_argument("--old-rows", type=int, default=20_000)
    parser.add_argument("--compaction-commits", type=int, default=200)
    parser.add_argument("--serve-series", type=int, default=None)
    parser.add_argument("--serve-rounds", type=int, default=3)
    parser.add_argument("--serve-warm", choices=["fill", "records"], default="fill")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["ingest", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    add_results = _results_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its slow-task lines on a busy machine
    if args.child:
        child = {"ingest": child_ingest, "training": child_training}[args.child]
        print(json.dumps(child(json.loads(args.spec))))
        return
    if args.section:
        work = args.workdir / args.section
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(RUNNERS[args.section](args, work), default=float))
        return
    started = time.perf_counter()
    figures: dict[str, Any] = {"quick": args.quick, "targets": TARGETS}
    for name in args.only or SECTIONS:
        logger.info("section %s", name)
        figures[name] = run_section(name, args)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    for name, value, target in summary(figures):
        print(f"{name:<64} {value!s:<28} {target}")
    if args.json:
        print(json.dumps(figures, default=float))
    add_results(args, "scale", figures)


def _results_option(parser: argparse.ArgumentParser) -> Callable[..., None]:
    """``--results FILE`` (benchmarks/results.py), imported only by the parent process."""
    sys.path.insert(0, str(SCRIPT.parent))
    from results import add_results_option, append_if_asked

    add_results_option(parser)
    return append_if_asked


if __name__ == "__main__":
    main()

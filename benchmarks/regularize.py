"""Regularizing a whole fleet for training: :func:`regularize_all` against per-series pandas.

    python benchmarks/regularize.py                          # 10,000 series x 8,760 hourly steps
    python benchmarks/regularize.py --series 1000
    python benchmarks/regularize.py --results benchmarks/results/regularize.jsonl   # a row too

Builds a synthetic fleet as the store hands it over (``StoredRows``: int32 codes, int64 epoch
ms, float32 values, sorted by (series, ts)): each series a year of hourly steps with about one
gap in 200 steps, of 1 to ``max_gap + 3`` steps, and 0.5% of channel values missing. Times
:func:`pipeline.windows.regularize_all` over every series, and the old path (one
:func:`pipeline.windows.regularize` per series, on a pandas frame as ``StoredRows.frame``
builds it) over ``--sample`` series, scaled to the fleet; checks the two agree on the sample.
Peak RSS (``resource.getrusage``) is read after building the fleet and again at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import pandas as pd
from results import add_results_option, append_if_asked

from pipeline.windows import LongArrays, RegularSeries, regularize, regularize_all, step_to_freq

STEP_MS = 3_600_000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
GAPS_PER_STEP, MISSING_VALUES = 1 / 200, 0.005
SERIES_PER_BLOCK = 250  # the fleet is generated this many series at a time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def kept_steps(rng: np.random.Generator, n_cells: int, max_gap: int) -> np.ndarray:
    """``(n_cells,)`` bool: False inside the random gaps of 1 to ``max_gap + 3`` steps."""
    starts = rng.integers(0, n_cells, int(n_cells * GAPS_PER_STEP))
    ends = np.minimum(starts + rng.integers(1, max_gap + 4, len(starts)), n_cells)
    inside = np.cumsum(
        np.bincount(starts, minlength=n_cells + 1) - np.bincount(ends, minlength=n_cells + 1)
    )
    return inside[:n_cells] == 0


def synthetic_fleet(n_series: int, n_steps: int, n_channels: int, max_gap: int) -> LongArrays:
    """The fleet's rows, written block by block into arrays sized for every step (untouched
    pages of the unused tail cost no memory)."""
    rng = np.random.default_rng(0)
    codes = np.empty(n_series * n_steps, np.int32)
    ts_ms = np.empty(n_series * n_steps, np.int64)
    values = np.empty((n_series * n_steps, n_channels), np.float32)
    n = 0
    for first in range(0, n_series, SERIES_PER_BLOCK):
        count = min(SERIES_PER_BLOCK, n_series - first)
        cell = np.flatnonzero(kept_steps(rng, count * n_steps, max_gap))
        step = cell % n_steps
        block = slice(n, n + len(cell))
        codes[block] = first + cell // n_steps
        ts_ms[block] = START_MS + step * STEP_MS
        wave = np.sin(step * (2 * np.pi / 24))[:, None] * (1 + np.arange(n_channels))
        values[block] = wave + rng.normal(0, 0.1, (len(cell), n_channels))
        values[block][rng.random((len(cell), n_channels)) < MISSING_VALUES] = np.nan
        n += len(cell)
    names = [f"series-{i:05d}" for i in range(n_series)]
    channels = tuple(f"c{j}" for j in range(n_channels))
    return LongArrays(names, codes[:n], ts_ms[:n], values[:n], channels)


def series_frame(rows: LongArrays, bounds: np.ndarray, i: int) -> pd.DataFrame:
    """Series ``i``'s rows as ``StoredRows.frame`` gives them to the old path."""
    lo, hi = bounds[i], bounds[i + 1]
    columns = {c: rows.values[lo:hi, j].astype(np.float64) for j, c in enumerate(rows.channels)}
    frame = pd.DataFrame(columns)
    frame.insert(0, "ts", pd.to_datetime(rows.ts_ms[lo:hi], unit="ms", utc=True))
    frame.insert(0, "series", rows.series[i])
    return frame


def time_pandas(rows: LongArrays, regular: RegularSeries, sample: int, max_gap: int) -> dict:
    """The old path's seconds per series over ``sample`` series, and whether it agrees."""
    # Codes' own dtype: an int64 needle would copy all of them to int64 first.
    bounds = np.searchsorted(rows.codes, np.arange(len(rows.series) + 1, dtype=rows.codes.dtype))
    picked = np.linspace(0, len(rows.series) - 1, min(sample, len(rows.series))).astype(int)
    frames = {int(i): series_frame(rows, bounds, int(i)) for i in picked}
    started = time.perf_counter()
    old = {i: regularize(frame, step_to_freq(STEP_MS), max_gap) for i, frame in frames.items()}
    per_series = (time.perf_counter() - started) / len(frames)
    agrees = all(regular.frame(i).equals(out.astype(np.float32)) for i, out in old.items())
    return {"pandas_ms_per_series": round(per_series * 1000, 2), "pandas_sample": len(frames),
            "pandas_scaled_seconds": round(per_series * len(rows.series), 1),
            "sample_matches": agrees}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=8_760)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--max-gap", type=int, default=3)
    parser.add_argument("--sample", type=int, default=50, help="series the old path is timed on")
    add_results_option(parser)
    args = parser.parse_args()

    rows = synthetic_fleet(args.series, args.steps, args.channels, args.max_gap)
    rss_inputs = peak_rss_mb()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    regular = regularize_all(rows, STEP_MS, args.max_gap)
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    rss_after = peak_rss_mb()
    started = time.perf_counter()
    frames = [regular.frame(i) for i in range(len(regular))]
    frames_seconds = time.perf_counter() - started
    rss_frames = peak_rss_mb()  # each frame's DatetimeIndex is 8 bytes a step more
    del frames
    figures = {
        "series": args.series, "steps": args.steps, "channels": args.channels,
        "max_gap": args.max_gap, "rows": len(rows.codes), "grid_steps": len(regular.values),
        "seconds": round(seconds, 2), "frames_seconds": round(frames_seconds, 2),
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 2),
        "cpu_sys_s": round(after.ru_stime - before.ru_stime, 2),
        "peak_rss_mb": round(rss_after), "peak_rss_mb_before": round(rss_inputs),
        "peak_rss_mb_with_frames": round(rss_frames),
        "inputs_mb": round(sum(a.nbytes for a in (rows.codes, rows.ts_ms, rows.values)) / 2**20),
        "output_mb": round(regular.values.nbytes / 2**20),
        "cpus": os.cpu_count(),
        **time_pandas(rows, regular, args.sample, args.max_gap),
    }  # fmt: skip
    figures["speedup"] = round(figures["pandas_scaled_seconds"] / max(seconds, 1e-9), 1)
    print(json.dumps(figures))
    append_if_asked(args, "regularize", figures)


if __name__ == "__main__":
    main()

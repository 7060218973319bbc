"""Interval coverage on the generalization table's cells: online variants replayed on one backtest.

Per cell (dataset x horizon x seed) the LSTM at Rollcast's defaults is backtested once, exactly
as ``benchmarks/generalization.py`` runs it (its ``run_job``), and what the intervals are made
from is kept under ``--cache`` (npz, outside the repo): the validation and test point
forecasts, their targets, the intervals' units and the test windows' origins. Every interval
variant is then replayed on those arrays, no retraining:

* ``split``: split conformal alone (``calibrate`` on the validation windows; gain 0);
* ``default``: the checkout's ``OnlineRadius`` at ``DEFAULT_GAIN``, through the same stream
  order as ``replay``; where the cell was cached by the same ``OnlineRadius`` and ``replay``,
  its figures are checked against the backtest's own ``coverage.<level>``;
* ``step_only``: the online radius before issue 23 (each step's own misses alone), and the
  variants designed against it (:data:`VARIANTS`: larger gains, terms shared by every step);
* ``oracle``: not a method, a reference: split conformal's radii times the one factor per
  level that covers the test split at nominal (it reads the test split).

Every variant learns from the published intervals' misses alone, as serve's
``OnlineRadius.observe(steps, misses)`` does. Printed per cell: coverage at each level and mean
width per variant (on the scaled data, as the backtest reports it), and whether coverage is
within ``--tolerance`` of nominal; then per variant the cells within at every level and the
mean width over split conformal's and over ``step_only``'s (geometric means over cells).
``--results FILE`` appends one row per cell and variant (``benchmarks/results.py``).

    .venv/bin/python benchmarks/coverage.py --datasets co2,sunspots,taylor
    .venv/bin/python benchmarks/coverage.py --results benchmarks/results/coverage.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import DATASETS, HORIZONS, run_job
from results import add_results_option, append_if_asked

import pipeline.backtest as backtest
from pipeline import intervals
from pipeline.intervals import (
    DEFAULT_GAIN,
    DEFAULT_LEVELS,
    Calibration,
    OnlineRadius,
    both_ways,
    calibrate,
    interval_metrics,
)

CACHE = Path("/tmp/coverage-cache")
TOLERANCE = 0.02
logger = logging.getLogger("coverage")


# --- the backtest, once per cell ------------------------------------------------------------


def cache_path(cache: Path, dataset: str, horizon: int, seed: int) -> Path:
    return cache / f"{dataset}-H{horizon}-s{seed}.npz"


def _units_arrays(prefix: str, units: intervals.Units) -> dict[str, np.ndarray]:
    if isinstance(units, np.ndarray):
        return {f"{prefix}units": units}
    below, above = units
    return {f"{prefix}below": np.asarray(below), f"{prefix}above": np.asarray(above)}


def cell_units(cell: dict[str, Any], prefix: str) -> intervals.Units:
    """The units a cell's split ``prefix`` ("val_" or "test_") was cached with."""
    if f"{prefix}units" in cell:
        return cell[f"{prefix}units"]
    return cell[f"{prefix}below"], cell[f"{prefix}above"]


def run_cell(dataset: str, horizon: int, seed: int) -> dict[str, Any]:
    """Backtest one cell as generalization.py does, keeping what its intervals were made of."""
    kept: dict[str, Any] = {}
    original = backtest._intervals

    def keeping(spec, val_forecast, val, scored, forecasted):  # type: ignore[no-untyped-def]
        kept.update(
            val_points=val_forecast.points,
            val_targets=val.targets,
            val_origins=val.starts + val.lookback - 1,
            test_points=forecasted.points,
            test_targets=scored.targets,
            test_origins=scored.starts + scored.lookback - 1,
            **_units_arrays("val_", val_forecast.units),
            **_units_arrays("test_", forecasted.units),
        )
        return original(spec, val_forecast, val, scored, forecasted)

    backtest._intervals = keeping
    try:
        metrics = run_job({"dataset": dataset, "model": "lstm", "horizon": horizon, "seed": seed})
    finally:
        backtest._intervals = original
    figures = {
        k: v
        for k, v in metrics.items()
        if k.startswith(("coverage.", "width.", "mse", "mae", "windows", "wall_s", "val_mse"))
    }
    return {**kept, "metrics": json.dumps(figures), "online_code": online_code()}


def online_code() -> str:
    """A digest of the online adaptation's code: a cached backtest's own coverage is that of
    the ``OnlineRadius`` and ``replay`` it ran with."""
    source = inspect.getsource(OnlineRadius) + inspect.getsource(intervals.replay)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def load_cell(cache: Path, dataset: str, horizon: int, seed: int, train: bool) -> dict | None:
    """The cell's arrays from the cache, backtesting it first if it is not there (and
    ``train``); None if it is not cached and ``train`` is false."""
    path = cache_path(cache, dataset, horizon, seed)
    if not path.exists():
        if not train:
            return None
        started = time.perf_counter()
        logger.info("backtesting %s H=%d seed %d", dataset, horizon, seed)
        arrays = run_cell(dataset, horizon, seed)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").rename(path)
        logger.info("%s H=%d: %.0f s", dataset, horizon, time.perf_counter() - started)
    with np.load(path) as data:
        cell = {k: data[k] for k in data.files}
    cell["metrics"] = json.loads(str(cell["metrics"]))
    return cell


# --- replaying interval methods -------------------------------------------------------------


class Tracker:
    """What a variant's online state offers the replay: ``observe(steps, misses)`` as the
    actuals of a batch arrive (and optionally their scores), and ``radius`` (L, H, C)."""

    radius: np.ndarray

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        raise NotImplementedError


class Online(Tracker):
    """pipeline.intervals.OnlineRadius as it is in the checkout (at ``gain``)."""

    def __init__(self, calibration: Calibration, gain: float, **kwargs: Any) -> None:
        self.inner = OnlineRadius(calibration, gain, **kwargs)

    @property
    def radius(self) -> np.ndarray:  # type: ignore[override]
        return self.inner.radius

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        self.inner.observe(steps, misses)


def replay_tracker(
    predictions: np.ndarray,
    targets: np.ndarray,
    units: intervals.Units,
    origins: np.ndarray,
    tracker: Tracker,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pipeline.intervals.replay`'s stream order with any tracker (it also sees each
    arrival's score, which a variant that only uses misses ignores)."""
    horizon = predictions.shape[1]
    below, above = both_ways(units)
    below = np.broadcast_to(below, (tracker.radius.shape[0], *predictions.shape))
    above = np.broadcast_to(above, below.shape)
    lo = np.empty(below.shape)
    hi = np.empty_like(lo)
    for i, (windows, steps) in enumerate(intervals.arrivals(origins, horizon)):
        if len(windows):
            actual = targets[windows, steps]  # (K, C)
            missed = (actual < lo[:, windows, steps]) | (actual > hi[:, windows, steps])
            error = actual - predictions[windows, steps]
            scores = np.maximum(-error / below[:, windows, steps], error / above[:, windows, steps])
            seen = ~np.isnan(actual)
            tracker.observe(steps, missed & seen, np.where(seen, scores, np.nan))
        lo[:, i] = predictions[i] - tracker.radius * below[:, i]
        hi[:, i] = predictions[i] + tracker.radius * above[:, i]
    return lo, hi


class Static(Tracker):
    """Split conformal alone: the calibrated radii, never moved."""

    def __init__(self, calibration: Calibration) -> None:
        self.radius = calibration.radius.copy()

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        pass


class Shares(Tracker):
    """``radius = calibrated * max(1 + own[l, h, c] + sum_j shared_j[l, c], 0)``, every term moved
    by its gain times ``miss - (1 - l)`` per actual, from misses alone (what serve has):

    * ``own``: the actual's own step, at ``own`` per actual (the tracking before issue 23 had
      this term alone);
    * each of ``shared``, ``(gain, tau)``: every step, the actual of step ``h`` weighted
      ``exp(-h / tau)`` (``tau`` None: uniformly), the weights summing to 1 over the horizon, so
      ``gain`` is the move per forecast's worth of actuals.

    ``own`` takes what the shared terms went under 0, as ``OnlineRadius`` does.
    """

    def __init__(
        self, calibration: Calibration, own: float, shared: tuple[tuple[float, float | None], ...]
    ) -> None:
        self.c = calibration.radius
        levels, horizon, channels = self.c.shape
        self.alpha = 1 - np.asarray(calibration.levels)[:, None, None]
        h = np.arange(horizon)
        self.shared_gain = np.zeros(horizon)
        for gain, tau in shared:
            weights = np.ones(horizon) if tau is None else np.exp(-h / tau)
            self.shared_gain += gain * weights / weights.sum()
        self.own_gain = own
        self.own = np.zeros((levels, horizon, channels))
        self.shared = np.zeros((levels, 1, channels))
        self.radius = self.c.copy()

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        excess = misses - self.alpha
        np.add.at(self.own.swapaxes(0, 1), steps, self.own_gain * excess.swapaxes(0, 1))
        self.shared += np.einsum("k,lkc->lc", self.shared_gain[steps], excess)[:, None]
        share = 1 + self.shared + self.own
        np.maximum(self.own, -1 - self.shared, out=self.own)
        self.radius = self.c * np.maximum(share, 0)


class StepOnly(Tracker):
    """The online radius before issue 23 (each step's own misses alone, additive, held at 0):
    ``radius[h] += gain * calibrated[h] * (miss - (1 - l))``."""

    def __init__(self, calibration: Calibration, gain: float) -> None:
        self.step = gain * calibration.radius
        self.alpha = 1 - np.asarray(calibration.levels)[:, None, None]
        self.radius = calibration.radius.copy()

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        change = self.step[:, steps] * (misses - self.alpha)
        np.add.at(self.radius.swapaxes(0, 1), steps, change.swapaxes(0, 1))
        np.maximum(self.radius, 0, out=self.radius)


class Oracle(Tracker):
    """Not a method (it reads the test split): split conformal's radii times the one factor
    per level that gives the test windows nominal coverage; the width a static inflation
    needs when it knows the test split."""

    def __init__(self, calibration: Calibration, cell: dict[str, Any]) -> None:
        below, above = both_ways(cell_units(cell, "test_"))
        error = cell["test_targets"] - cell["test_points"]
        scores = np.broadcast_to(
            np.maximum(-error / below, error / above), (len(calibration.levels), *error.shape)
        )
        factors = [
            np.nanquantile(scores[k] / calibration.radius[k][None], level)
            for k, level in enumerate(calibration.levels)
        ]
        self.radius = calibration.radius * np.array(factors)[:, None, None]

    def observe(self, steps: np.ndarray, misses: np.ndarray, scores: np.ndarray) -> None:
        pass


# A variant: (calibration, the cell's arrays) -> its tracker. The gains are at DEFAULT_GAIN's
# scale (0.05); see the module docstring of pipeline/intervals.py for today's default.
Variant = Callable[[Calibration, dict[str, Any]], Tracker]
G = DEFAULT_GAIN

VARIANTS: dict[str, Variant] = {
    "split": lambda cal, cell: Static(cal),
    "default": lambda cal, cell: Online(cal, DEFAULT_GAIN),  # the checkout's OnlineRadius
    "step_only": lambda cal, cell: StepOnly(cal, G),  # the default before issue 23
    "step_only_x2": lambda cal, cell: StepOnly(cal, 2 * G),  # a larger gain
    "step_only_x4": lambda cal, cell: StepOnly(cal, 4 * G),
    # each step's own, plus one term every step's misses move alike
    "step+whole": lambda cal, cell: Shares(cal, G, ((G, None),)),
    "step+whole_x2": lambda cal, cell: Shares(cal, 0.4 * G, ((2 * G, None),)),
    # + a term moved by the soonest steps' misses (fresh feedback: short delay); "fresh" is
    # what OnlineRadius does since issue 23 (the default's figures, from the same formula)
    "fresh": lambda cal, cell: Shares(cal, 0.6 * G, ((4 * G, 4.0), (G, None))),
    "fresh_x2": lambda cal, cell: Shares(cal, 0.6 * G, ((8 * G, 4.0), (G, None))),
    "fresh_tau8_x2": lambda cal, cell: Shares(cal, 0.6 * G, ((8 * G, 8.0), (G, None))),
    "fresh_whole_x2": lambda cal, cell: Shares(cal, 0.6 * G, ((4 * G, 4.0), (2 * G, None))),
    "oracle": lambda cal, cell: Oracle(cal, cell),
}


def evaluate(
    cell: dict[str, Any], variants: dict[str, Variant], levels: tuple[float, ...]
) -> dict[str, dict[str, float]]:
    """Per variant, its interval metrics on the cell's test windows."""
    calibration = calibrate(
        cell["val_points"], cell["val_targets"], cell_units(cell, "val_"), levels
    )
    units = cell_units(cell, "test_")
    out = {}
    for name, make in variants.items():
        lo, hi = replay_tracker(
            cell["test_points"], cell["test_targets"], units, cell["test_origins"],
            make(calibration, cell),
        )  # fmt: skip
        out[name] = interval_metrics(lo, hi, cell["test_targets"], levels)
    return out


def check_default(
    cell: dict[str, Any], figures: dict[str, float], levels: tuple[float, ...]
) -> None:
    """The replayed default must give the backtest's own coverage (same code, same arrays)."""
    if str(cell.get("online_code", "")) != online_code():
        logger.info("cached by another OnlineRadius: the replayed default is not checked")
        return
    recorded = cell["metrics"]
    for level in levels:
        name = f"coverage.{level:g}"
        if name in recorded and abs(recorded[name] - figures[name]) > 1e-9:
            logger.warning("replayed default %s %.4f != backtest's %.4f", name, figures[name],
                           recorded[name])  # fmt: skip


def table(rows: list[dict[str, Any]], levels: tuple[float, ...], tolerance: float) -> str:
    head = (
        "| cell | windows | variant | "
        + " | ".join(f"cov {level:g} | width {level:g}" for level in levels)
        + " | within |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(levels) + 1)]
    for row in rows:
        cells = []
        hits = 0
        for level in levels:
            cov = row[f"coverage.{level:g}"]
            hits += abs(cov - level) <= tolerance + 1e-12
            cells += [f"{cov:.3f}", f"{row[f'width.{level:g}']:.3g}"]
        lines.append(
            f"| {row['dataset']} H={row['horizon']} s{row['seed']} | {row['windows']} "
            f"| {row['variant']} | " + " | ".join(cells) + f" | {hits}/{len(levels)} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], levels: tuple[float, ...], tolerance: float) -> str:
    """Per variant: the cells within ``tolerance`` of nominal at every level and per level, the
    mean distance from nominal, and the mean width over split conformal's and ``step_only``'s."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    against = [name for name in ("split", "step_only") if name in by_variant]
    base = {
        name: {(r["dataset"], r["horizon"], r["seed"]): r for r in by_variant[name]}
        for name in against
    }
    columns = [f"mean abs(cov - {level:g})" for level in levels] + [
        f"width {level:g} / {name}" for level in levels for name in against
    ]
    lines = ["| variant | cells within | level-cells within | " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * (3 + len(columns)))
    for name, group in by_variant.items():
        within = [
            [abs(r[f"coverage.{lv:g}"] - lv) <= tolerance + 1e-12 for lv in levels] for r in group
        ]
        cells = [
            f"{np.mean([abs(r[f'coverage.{lv:g}'] - lv) for r in group]):.3f}" for lv in levels
        ]
        for level in levels:
            key = f"width.{level:g}"
            for ref in against:
                ratios = [
                    r[key] / base[ref][(r["dataset"], r["horizon"], r["seed"])][key] for r in group
                ]
                cells.append(f"{np.exp(np.mean(np.log(ratios))):.2f}")
        lines.append(
            f"| {name} | {sum(all(w) for w in within)}/{len(group)} "
            f"| {sum(map(sum, within))}/{len(levels) * len(group)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--horizons", help="comma-separated, for every dataset (default: each's)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (all)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--no-train", action="store_true", help="only the cells already cached")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    add_results_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    levels = DEFAULT_LEVELS
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    variants = {name: VARIANTS[name] for name in names}
    horizons = _ints(args.horizons)
    rows = []
    for dataset in args.datasets.split(","):
        for horizon in horizons or HORIZONS[dataset]:
            for seed in _ints(args.seeds) or [0]:
                cell = load_cell(args.cache, dataset, horizon, seed, not args.no_train)
                if cell is None:
                    continue
                results = evaluate(cell, variants, levels)
                if "default" in results:
                    check_default(cell, results["default"], levels)
                windows = len(cell["test_points"])
                for name, figures in results.items():
                    row = {"dataset": dataset, "model": "lstm", "horizon": horizon,
                           "seed": seed, "windows": windows, "variant": name,
                           "levels": list(levels), "gain": DEFAULT_GAIN, **figures}  # fmt: skip
                    rows.append(row)
                    append_if_asked(args, "coverage", row)
                print(table(rows[-len(results) :], levels, args.tolerance), flush=True)
    print()
    print(table(rows, levels, args.tolerance))
    print()
    print(summary(rows, levels, args.tolerance))


if __name__ == "__main__":
    main()

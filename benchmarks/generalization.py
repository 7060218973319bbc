"""Generalization: Rollcast's defaults on real series nobody here tuned for; resumable.

Every dataset goes through the same LTSF protocol (``pipeline/backtest.py``: 70/10/20 split, or
ETTh's fixed borders; a scaler fit on the training rows; stride-1 test windows) with the same
defaults and no per-dataset settings. Per dataset and horizon it runs:

* ``repeat_last`` and ``seasonal_naive``: the backtest's own seasonal naive, whose period the
  backtest chooses from the data (reported as "best seasonal-naive", with its period);
* ``dlinear`` with its paper's recipe (``--seeds``, default 0, 1, 2);
* ``lstm``: Rollcast's defaults (``--seeds``); since issue 21 they include ``norm="auto"``:
  the window's last value or the residual over seasonal-naive, whichever validates better
  (twice the training);
* ``lstm_tuned`` (opt-in, ``--models ...,lstm_tuned``: hours on a CPU): an Optuna search
  (``pipeline/tuning.py``) on the validation split, then the best candidate trained with every
  seed and scored on the test split.
* ``lstm_last`` (opt-in): the defaults with ``norm="last"``, the defaults before issue 21 (rows
  of ``lstm`` recorded before then are read as ``lstm_last``, and those of the opt-in
  ``lstm_auto`` variant, which ran today's defaults, as ``lstm``: ``labelled_rows``).

The series ship inside packages on PyPI (``pip install -e '.[bench]'``: pmdarima, statsmodels,
vega_datasets, pvlib; nothing is downloaded); ETTh1/ETTh2 are read from ``../shared/data``.

| dataset | rows | step | train / val / test | source |
|---|---|---|---|---|
| taylor | 4,032 | 30 min | 2,822 / 404 / 806 | Taylor (2003); pmdarima |
| sunspots | 2,820 | month | 1,973 / 283 / 564 | Andrews & Herzberg (1985); pmdarima |
| co2 | 2,284 | week | 1,598 / 230 / 456 | Keeling et al. (Scripps); statsmodels |
| seattle | 8,760 | 1 h | 6,132 / 876 / 1,752 | NOAA hourly normals 1981-2010; vega_datasets |
| sf | 8,760 | 1 h | 6,132 / 876 / 1,752 | NOAA hourly normals 1981-2010; vega_datasets |
| tmy3 | 8,760 | 1 h | 6,132 / 876 / 1,752 | NREL TMY3 (Wilcox & Marion 2008); pvlib |
| ETTh1, ETTh2 | 17,420 | 1 h | 8,640 / 2,880 / 2,880 | Zhou et al. (2021) |

Row counts of the split are of target rows; ETTh's fixed borders leave its last 3,020 rows out.
``--describe`` prints the same with what each series is and its horizons.

Horizons (``HORIZONS``, overridden for every dataset by ``--horizons``): a day and a week of
steps; ETTh adds the four LTSF horizons. For monthly sunspots and weekly co2 a day is less than a
step, so they keep issue 10's 96 and 192 steps: 8 and 16 years of sunspots (most of an 11-year
cycle, and more than one), 1.8 and 3.7 years of CO2 (more than one seasonal cycle).

Each finished run is one row of ``--results`` (``benchmarks/results.py``: the run's metrics with
the commit, machine and command); a rerun skips it. A run with ``--max-steps`` (a training
override for smoke runs) is recorded with it, and neither skips nor reports as a full run.

    python benchmarks/generalization.py --jobs 2        # what is missing
    python benchmarks/generalization.py --report        # the markdown table
    python benchmarks/generalization.py --describe      # the dataset table above
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from results import append_row, read_figures

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "generalization.jsonl"
SEEDS = (0, 1, 2)
TUNE_TRIALS = 8
BASELINES = ("repeat_last", "seasonal_naive")
MODELS = ("repeat_last", "seasonal_naive", "dlinear", "lstm_last", "lstm", "lstm_tuned")
# Opt-in variants of the LSTM: their backtest model and the shape they change.
VARIANTS = {"lstm_tuned": ("lstm", {}), "lstm_last": ("lstm", {"norm": "last"})}
DEFAULT_MODELS = ("repeat_last", "seasonal_naive", "dlinear", "lstm")  # lstm_tuned is opt-in
LTSF_HORIZONS = (96, 192, 336, 720)
# Published test MSE (features M) at LTSF_HORIZONS: best of SegRNN, PatchTST/64 and TimeMixer,
# as in benchmarks/ltsf.py (issue 3).
PUBLISHED = {"ETTh1": (0.351, 0.392, 0.422, 0.440), "ETTh2": (0.271, 0.317, 0.329, 0.342)}
TMY3_FILE = "723170TYA.CSV"  # in pvlib/data: Greensboro Piedmont Triad International, NC
TMY3_YEAR = 1990  # the nominal (non-leap) year of the regular index put on the TMY3 hours

logger = logging.getLogger("generalization")


def taylor() -> pd.DataFrame:
    """Half-hourly electricity demand, England and Wales, 5 June - 27 August 2000 (4,032 steps).

    Taylor (2003), J. Oper. Res. Soc. 54; shipped by pmdarima (from R's forecast package).
    """
    from pmdarima.datasets import load_taylor

    demand = load_taylor()
    dates = pd.date_range("2000-06-05", periods=len(demand), freq="30min")
    return pd.DataFrame({"date": dates, "demand": demand})


def sunspots() -> pd.DataFrame:
    """Monthly mean sunspot numbers, January 1749 - December 1983 (2,820 steps).

    Andrews & Herzberg (1985), as in R's ``sunspots``; shipped by pmdarima.
    """
    from pmdarima.datasets import load_sunspots

    numbers = load_sunspots()
    dates = pd.date_range("1749-01-01", periods=len(numbers), freq="MS")
    return pd.DataFrame({"date": dates, "sunspots": numbers})


def co2() -> pd.DataFrame:
    """Weekly atmospheric CO2 at Mauna Loa, 1958-2001 (2,284 steps; 59 gaps interpolated).

    Keeling et al., Scripps; shipped by statsmodels.datasets.co2.
    """
    from statsmodels.datasets import co2 as source

    frame = source.load_pandas().data.interpolate()
    return frame.rename_axis("date").reset_index()


def _vega_temps(name: str) -> pd.DataFrame:
    """``vega_datasets``' local copy of ``name`` (no network), on a regular hourly index.

    The file has 8,759 rows for 2010: 03:00 on 14 March, the day US clocks went forward, is
    missing; it is filled by linear interpolation, giving 8,760 regular hours.
    """
    from vega_datasets import local_data

    frame = getattr(local_data, name)()[["date", "temp"]].set_index("date")
    hours = pd.date_range(frame.index[0], frame.index[-1], freq="h", name="date")
    return frame.reindex(hours).interpolate().reset_index()


def seattle() -> pd.DataFrame:
    """Hourly temperature (deg F), Seattle-Tacoma airport, labelled 2010 (8,760 steps).

    Not observations: NOAA's 1981-2010 hourly climate normals (NORMAL_HLY, station
    GHCND:USW00024233), i.e. 30-year averages per hour of the year, which vary smoothly (a
    seasonal-naive forecast with a daily period scores MSE 0.0005 at H=24, 0.003 at H=96).
    Source: vega-datasets' SOURCES.md (``seattle-temps.csv``), public-domain NOAA data;
    shipped by ``vega_datasets`` (``local_data.seattle_temps``).
    """
    return _vega_temps("seattle_temps")


def sf() -> pd.DataFrame:
    """Hourly temperature (deg F), San Francisco airport, labelled 2010 (8,760 steps).

    Like :func:`seattle`: NOAA's 1981-2010 hourly climate normals (NORMAL_HLY, station
    GHCND:USW00023234), not observations. Source: vega-datasets' SOURCES.md (``sf-temps.csv``),
    public-domain NOAA data; shipped by ``vega_datasets`` (``local_data.sf_temps``).
    """
    return _vega_temps("sf_temps")


def tmy3() -> pd.DataFrame:
    """Hourly dry-bulb temperature (deg C), Greensboro, NC (USAF 723170), a TMY3 year (8,760 steps).

    A typical meteorological year from NREL's TMY3 set (NSRDB 1976-2005): each calendar month is
    the observed weather of one real year chosen as typical (here Jan-Feb 1988, Mar 1996,
    Apr 1990, May 1980, Jun 1986, Jul 1989, Aug 1981, Sep 2001, Oct 2003, Nov 1980, Dec 1994),
    and NREL smoothed temperature over six hours at each month seam. The file's own timestamps
    therefore jump between years; this loader puts the 8,760 hours (local standard time, hour
    ending, 01:00 on 1 January to 24:00 on 31 December) on one regular hourly index of a nominal
    non-leap year, ``TMY3_YEAR``.

    ``temp_air`` rather than ``ghi``: temperature is the quantity of :func:`seattle` and
    :func:`sf`, so these three compare smoothed normals with real hourly weather, and it has
    weather from day to day; irradiance is zero half the time and its daily shape is set by the
    sun's position, which favours a seasonal-naive forecast for reasons that are not weather.

    Wilcox, S. & Marion, W. (2008), Users Manual for TMY3 Data Sets, NREL/TP-581-43156;
    the file ships in pvlib's data folder (``pvlib/data/723170TYA.CSV``, read with
    ``pvlib.iotools.read_tmy3``).
    """
    import pvlib

    path = Path(pvlib.__file__).parent / "data" / TMY3_FILE
    data, _ = pvlib.iotools.read_tmy3(path, map_variables=True)
    dates = pd.date_range(f"{TMY3_YEAR}-01-01 01:00", periods=len(data), freq="h", name="date")
    return pd.DataFrame({"date": dates, "temp_air": data["temp_air"].to_numpy(dtype=float)})


def etth(name: str) -> Callable[[], pd.DataFrame]:
    def load() -> pd.DataFrame:
        from pipeline.backtest import load_ltsf_csv

        return load_ltsf_csv(SHARED_DATA / f"{name}.csv")

    return load


@dataclass(frozen=True)
class Dataset:
    load: Callable[[], pd.DataFrame]
    horizons: tuple[int, ...]  # a day and a week of steps (see the module docstring)
    what: str
    source: str


DATASETS: dict[str, Dataset] = {
    "taylor": Dataset(
        taylor,
        (48, 336),
        "electricity demand, England and Wales, Jun-Aug 2000",
        "Taylor (2003); pmdarima",
    ),
    "sunspots": Dataset(
        sunspots,
        (96, 192),
        "monthly mean sunspot number, 1749-1983",
        "Andrews & Herzberg (1985); pmdarima",
    ),
    "co2": Dataset(
        co2, (96, 192), "CO2 at Mauna Loa, 1958-2001", "Keeling et al. (Scripps); statsmodels"
    ),
    "seattle": Dataset(
        seattle,
        (24, 168),
        "hourly temperature normals, Seattle-Tacoma airport",
        "NOAA NORMAL_HLY 1981-2010; vega_datasets",
    ),
    "sf": Dataset(
        sf,
        (24, 168),
        "hourly temperature normals, San Francisco airport",
        "NOAA NORMAL_HLY 1981-2010; vega_datasets",
    ),
    "tmy3": Dataset(
        tmy3,
        (24, 168),
        "hourly dry-bulb temperature, Greensboro NC, a TMY3 year",
        "NREL TMY3, Wilcox & Marion (2008); pvlib",
    ),
    "ETTh1": Dataset(
        etth("ETTh1"),
        (24, 96, 168, 192, 336, 720),
        "transformer oil temperature and loads, 7 channels",
        "Zhou et al. (2021)",
    ),
    "ETTh2": Dataset(
        etth("ETTh2"),
        (24, 96, 168, 192, 336, 720),
        "transformer oil temperature and loads, 7 channels",
        "Zhou et al. (2021)",
    ),
}
HORIZONS = {name: dataset.horizons for name, dataset in DATASETS.items()}


def describe(datasets: list[str]) -> str:
    """Rows, step, the split's row counts and horizons per dataset (a markdown table)."""
    from pipeline.backtest import ltsf_borders

    lines = [
        "| dataset | what | rows | step | train / val / test | horizons | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in datasets:
        dataset = DATASETS[name]
        frame = dataset.load()
        borders = ltsf_borders(len(frame), name)
        parts = (
            borders.train_end,
            borders.val_end - borders.train_end,
            borders.test_end - borders.val_end,
        )
        split = " / ".join(f"{n:,}" for n in parts)
        lines.append(
            f"| {name} | {dataset.what} | {len(frame):,} | {_step(frame['date'])} | {split} "
            f"| {', '.join(map(str, dataset.horizons))} | {dataset.source} |"
        )
    return "\n".join(lines)


def _step(dates: pd.Series) -> str:
    step = pd.Series(dates).diff().median()
    if step >= pd.Timedelta(days=28):
        return "month"
    if step == pd.Timedelta(weeks=1):
        return "week"
    if step >= pd.Timedelta(hours=1):
        return f"{step / pd.Timedelta(hours=1):g} h"
    return f"{step / pd.Timedelta(minutes=1):g} min"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One backtest (or one search) in a worker process with one torch thread."""
    import torch

    from pipeline.backtest import BacktestSpec, run_backtest

    if job.get("reuse"):
        return dict(job["reuse"])
    torch.set_num_threads(1)
    frame, dataset = DATASETS[job["dataset"]].load(), job["dataset"]
    if job["model"] == "search":
        return search_job(frame, dataset, job)
    model, variant = VARIANTS.get(job["model"], (job["model"], {}))
    tuned = job.get("candidate", {"model": dict(variant), "train": {}})
    spec = BacktestSpec(
        features="M",
        horizon=job["horizon"],
        model=model,
        seed=job["seed"],
        lookback=tuned["model"].get("lookback"),
        model_overrides={k: v for k, v in tuned["model"].items() if k != "lookback"},
        train_overrides={**tuned["train"], **_max_steps(job)},
        val_folds=job.get("val_folds"),
    )
    metrics = run_backtest(frame, dataset, spec).metrics
    return {**metrics, "model": job["model"], "candidate": tuned, **_tag(job)}


def _max_steps(job: dict[str, Any]) -> dict[str, Any]:
    """The training override of ``--max-steps`` (none for a full run)."""
    return {} if job.get("max_steps") is None else {"max_steps": job["max_steps"]}


def _tag(job: dict[str, Any]) -> dict[str, Any]:
    """What marks a row as a ``--max-steps`` run (nothing on a full run's row)."""
    return {} if job.get("max_steps") is None else {"max_steps_override": job["max_steps"]}


def search_job(frame: pd.DataFrame, dataset: str, job: dict[str, Any]) -> dict[str, Any]:
    """The Optuna search on the validation split; the best candidate is the row's result."""
    from pipeline.backtest import BacktestSpec, Borders, fitted_lookback, ltsf_borders, run_backtest
    from pipeline.tuning import Budget, Candidate, search

    horizon = job["horizon"]
    borders: Borders = ltsf_borders(len(frame), dataset)
    widest = BacktestSpec(horizon=horizon, model_overrides={"segment_len": 1})
    max_lookback = fitted_lookback(widest, borders)

    def evaluate(candidate: Candidate, on_eval: Any) -> tuple[float, None]:
        spec = BacktestSpec(
            features="M",
            horizon=horizon,
            split="val",
            lookback=candidate.model["lookback"],
            model_overrides={k: v for k, v in candidate.model.items() if k != "lookback"},
            train_overrides={**candidate.train, **_max_steps(job)},
        )
        return run_backtest(frame, dataset, spec, on_eval).metrics["mse"], None

    budget = Budget(trials=job["trials"], trial_timeout_s=job.get("trial_timeout_s"))
    result = search(evaluate, max_lookback, budget)
    best = result.best.candidate
    return {
        "dataset": dataset,
        "model": "search",
        "horizon": horizon,
        "seed": 0,
        "split": "val",
        "mse": result.best.val_mse,
        "candidate": {"model": best.model, "train": best.train},
        "trials": [
            {
                "state": t.state,
                "val_mse": t.val_mse,
                "seconds": round(t.seconds, 1),
                **t.candidate.as_params(),
            }
            for t in result.trials
        ],
        **_tag(job),
    }


def reusable(row: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """Whether ``row`` (a default LSTM run) trained exactly what ``candidate`` would, seed included.

    Training is seeded and deterministic on one machine: ETTh1 H=192's tuned seeds 1 and 2, which
    kept the defaults, gave the default rows' MSE to the last bit. So when a search keeps the
    defaults, its tuned rows are the default rows of the same configs, and are not trained again.
    """
    from dataclasses import asdict

    from pipeline.recipe import ForecasterConfig, TrainConfig

    would_run = {
        **asdict(ForecasterConfig(channels=())),
        **candidate["model"],
        **asdict(TrainConfig(seed=row["seed"])),
        **candidate["train"],
    }
    recorded = {**row["model_config"], **row["train_config"]}
    per_dataset = ("channels", "horizon", "freq", "season")
    # A setting the row predates (recorded.get falls back) had no effect then.
    return all(recorded.get(k, v) == v for k, v in would_run.items() if k not in per_dataset)


def reused_rows(
    rows: list[dict[str, Any]], search: dict[str, Any], extra_train: dict[str, Any]
) -> dict[int, dict[str, Any]]:
    """Per seed, a tuned row taken from a default row that trained the search's best candidate
    (with ``extra_train``, the ``--max-steps`` override, added to both)."""
    cell, tuned = (search["dataset"], search["horizon"]), {"candidate": search["candidate"]}
    trained = {**search["candidate"], "train": {**search["candidate"]["train"], **extra_train}}
    return {
        row["seed"]: {**row, "model": "lstm_tuned", **tuned, "reused": True}
        for row in rows
        if row["model"] == "lstm"
        and (row["dataset"], row["horizon"]) == cell
        and reusable(row, trained)
    }


def labelled_rows(path: Path) -> list[dict[str, Any]]:
    """The results' rows, named by what they ran: ``lstm`` rows without ``norm_val_mse`` ran
    the defaults before norm "auto" became one (issue 21), so they are ``lstm_last``; rows of
    the old opt-in ``lstm_auto`` ran today's defaults, so they are ``lstm``."""
    return [{**row, "model": _norm_label(row)} for row in read_figures(path)]


def _norm_label(row: dict[str, Any]) -> str:
    if row["model"] == "lstm_auto":
        return "lstm"
    if row["model"] == "lstm" and "norm_val_mse" not in row:
        return "lstm_last"
    return str(row["model"])


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["dataset"], row["model"], row["horizon"], row["seed"])


def same_run(
    rows: list[dict[str, Any]], max_steps: int | None, val_folds: int | None = None
) -> list[dict[str, Any]]:
    """The rows of full runs (``max_steps`` None), or of ``--max-steps max_steps`` runs, whose
    trained models validated on the blocks ``val_folds`` gives (None: the backtest's default)."""
    return [
        row
        for row in rows
        if row.get("max_steps_override") == max_steps
        and (
            row["model"] in BASELINES
            or row.get("val_blocks", 1) == blocks_for(row["dataset"], row["horizon"], val_folds)
        )
    ]


def folds_for(dataset: str, requested: int | None) -> int:
    """The validation folds a backtest of ``dataset`` asks for (``requested``; None: default)."""
    from pipeline.backtest import BacktestSpec, ltsf_borders, spec_folds

    return spec_folds(BacktestSpec(val_folds=requested), ltsf_borders(0, dataset))


@functools.cache
def blocks_for(dataset: str, horizon: int, requested: int | None) -> int:
    """The validation blocks those folds give at ``horizon`` (rows older than the folds had
    one): fewer where a block would hold under two horizons."""
    from pipeline.backtest import ltsf_borders, val_blocks

    borders = ltsf_borders(len(DATASETS[dataset].load()), dataset)
    return len(val_blocks(borders, horizon, folds_for(dataset, requested)))


def horizons_of(args: argparse.Namespace, dataset: str) -> tuple[int, ...]:
    return tuple(args.horizons) if args.horizons else HORIZONS[dataset]


def plan(
    args: argparse.Namespace, rows: list[dict[str, Any]], stale: int = 0
) -> list[dict[str, Any]]:
    """The jobs not yet in the results; tuned runs only once their search has finished.

    Baseline rows among the first ``stale`` rows do not count as done (``--rerun-baselines``).
    """
    done = {key(row) for i, row in enumerate(rows) if i >= stale or row["model"] not in BASELINES}
    searches = {(r["dataset"], r["horizon"]): r for r in rows if r["model"] == "search"}
    overrides = {"max_steps": args.max_steps} if args.max_steps is not None else {}
    jobs = []
    for dataset in args.datasets:
        for horizon in horizons_of(args, dataset):
            for model in args.models:
                seeds = (0,) if model in BASELINES else args.seeds
                if model == "lstm_tuned":
                    search = searches.get((dataset, horizon))
                    if search is None:
                        jobs.append(
                            {
                                "dataset": dataset,
                                "model": "search",
                                "horizon": horizon,
                                "seed": 0,
                                "trials": args.trials,
                                "trial_timeout_s": args.trial_timeout_s,
                                **overrides,
                            }
                        )
                        continue
                    extra = {"candidate": search["candidate"]}
                    reused = reused_rows(rows, search, overrides)
                else:
                    extra, reused = {}, {}
                folds = {"val_folds": folds_for(dataset, args.val_folds)}
                for seed in seeds:
                    job = {"dataset": dataset, "model": model, "horizon": horizon, "seed": seed}
                    if key(job) not in done:
                        jobs.append(
                            {**job, **extra, **overrides, **folds, "reuse": reused.get(seed)}
                        )
    return [job for job in jobs if key(job) not in done]


def run(args: argparse.Namespace) -> None:
    """Run the plan until nothing is left (searches first unlock the tuned runs)."""
    stale = len(labelled_rows(args.results)) if args.rerun_baselines else 0
    while jobs := plan(args, same_run(labelled_rows(args.results), *_run_of(args)), stale):
        logger.info("%d jobs to run", len(jobs))
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(run_job, dict(job)): job for job in jobs}
            for future in as_completed(futures):
                row = future.result()
                append_row(args.results, "generalization", row)
                logger.info(
                    "%s: %s mse %.4f in %s s",
                    key(row),
                    row.get("split"),
                    row["mse"],
                    row.get("wall_s"),
                )
        stale = 0


def _run_of(args: argparse.Namespace) -> tuple[int | None, int | None]:
    return args.max_steps, args.val_folds


def season_of(row: dict[str, Any]) -> str:
    """The seasonal-naive period a row used: its name and steps where the metrics carry them."""
    season = row.get("season", row.get("model_config", {}).get("season"))
    name = row.get("season_name", row.get("model_config", {}).get("season_name"))
    if name and season:
        return f"{name} ({season})"
    return str(name or season or "")


def report(
    rows: list[dict[str, Any]],
    datasets: list[str],
    horizons: list[int] | None,
    max_steps: int | None = None,
    val_folds: int | None = None,
) -> str:
    """Test MSE per dataset and horizon (mean ± std over seeds), each row's best in bold.

    The last row of a configuration counts (a rerun baseline replaces the old one). ✓/✗ say
    whether the default LSTM's mean is at or below DLinear's and the best seasonal naive's; for
    ETTh (features M) the best published MSE and whether the LSTM met it. Horizons: ``horizons``,
    else those of ``HORIZONS`` and any others the results hold.
    """
    runs = same_run(rows, max_steps, val_folds)
    latest = {key(row): row for row in runs if row.get("split") == "test"}
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    periods: dict[tuple[str, int], str] = {}
    for row in latest.values():
        cells[(row["dataset"], row["horizon"], row["model"])].append(row["mse"])
        if row["model"] == "seasonal_naive":
            periods[(row["dataset"], row["horizon"])] = season_of(row)
    models = [m for m in MODELS if any(m == model for (_, _, model) in cells)]
    published = any(d in PUBLISHED for (d, _, _) in cells if d in datasets)
    names = {"seasonal_naive": "best seasonal-naive"}
    header = ["dataset", "H", *(names.get(m, m) for m in models)]
    if "seasonal_naive" in models:
        header.insert(header.index("best seasonal-naive") + 1, "period")
    header += ["lstm ≤ dlinear", "lstm ≤ seasonal-naive"]
    if published:
        header += ["best published (M)", "lstm met it"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset in datasets:
        present = {h for (d, h, _) in cells if d == dataset}
        shown = horizons or sorted(set(HORIZONS.get(dataset, ())) | present)
        for horizon in shown:
            means = {
                m: statistics.mean(cells[(dataset, horizon, m)])
                for m in models
                if cells.get((dataset, horizon, m))
            }
            if not means:
                continue
            best = min(means.values())
            values = []
            for m in models:
                values.append(_cell(cells.get((dataset, horizon, m), []), best))
                if m == "seasonal_naive":
                    values.append(periods.get((dataset, horizon), ""))
            lstm = means.get("lstm")
            values += [_mark(lstm, means.get("dlinear")), _mark(lstm, means.get("seasonal_naive"))]
            if published:
                target = _published(dataset, horizon)
                values += ["" if target is None else f"{target:.3f}", _mark(lstm, target)]
            lines.append(f"| {dataset} | {horizon} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _published(dataset: str, horizon: int) -> float | None:
    if dataset not in PUBLISHED or horizon not in LTSF_HORIZONS:
        return None
    return PUBLISHED[dataset][LTSF_HORIZONS.index(horizon)]


def _mark(value: float | None, bound: float | None) -> str:
    """✓ when ``value`` is at or below ``bound`` (at the table's 3 decimals), ✗ above it."""
    if value is None or bound is None:
        return ""
    return "✓" if value <= bound or np.isclose(round(value, 3), round(bound, 3)) else "✗"


def _cell(values: list[float], best: float) -> str:
    if not values:
        return ""
    mean = statistics.mean(values)
    small = 0 < mean < 0.01  # the temperature normals' baselines: two significant digits
    text = f"{mean:.2g}" if small else f"{mean:.3f}"
    if len(values) > 1:
        std = statistics.stdev(values)
        text += f"±{std:.2g}" if small else f"±{std:.3f}"
    return f"**{text}**" if np.isclose(mean, best) else text


def _ints(text: str | None) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument(
        "--horizons", help="comma-separated, for every dataset (default: each one's HORIZONS)"
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated, of {', '.join(MODELS)} (lstm_tuned is opt-in: hours)",
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="trained models'")
    parser.add_argument("--trials", type=int, default=TUNE_TRIALS, help="search trials per cell")
    parser.add_argument(
        "--trial-timeout-s", type=float, help="stop a search trial (not the defaults) after this"
    )
    parser.add_argument(
        "--max-steps", type=int, help="a training override for smoke runs (recorded in the row)"
    )
    parser.add_argument(
        "--rerun-baselines",
        action="store_true",
        help="run the naive models again (after a change to the backtest's seasonal naive)",
    )
    parser.add_argument(
        "--val-folds",
        type=int,
        help="validation blocks of the trained models (default: the backtest's, 1 on ETT)",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--describe", action="store_true", help="print the dataset table and exit")
    args = parser.parse_args()
    args.datasets = args.datasets.split(",")
    unknown = sorted(set(args.datasets) - set(DATASETS))
    args.models = args.models.split(",")
    unknown += sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown dataset or model: {', '.join(unknown)}")
    args.horizons = _ints(args.horizons)
    args.seeds = _ints(args.seeds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.describe:
        print(describe(args.datasets))
        return
    if args.report:
        rows = labelled_rows(args.results)
        print(report(rows, args.datasets, args.horizons, *_run_of(args)))
        return
    run(args)


if __name__ == "__main__":
    main()

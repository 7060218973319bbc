"""The recurrent cells side by side: training throughput, and accuracy on ETTh1.

    python benchmarks/cells.py                                # speed, default shape, 1 thread
    python benchmarks/cells.py --rounds 5 --steps 4
    python benchmarks/cells.py --accuracy --max-steps 1000    # also the ETTh1 S H=96 backtest

Speed: for each cell (``lstm``: torch's fused LSTM, ``gru``, ``peephole``:
:class:`pipeline.cells.PeepholeLSTM`) a :class:`pipeline.model.StackedLSTMForecaster` of the
default shape (:class:`pipeline.recipe.ForecasterConfig`: lookback 720, segment 48, hidden 256,
one channel, horizon ``--horizon``) runs ``--steps`` forward and backward passes of the
training loss on a random batch of ``--batch`` windows. The cells take turns within each of
``--rounds`` rounds, so a machine's drift hits them alike; the median round is reported, and
its ratio to ``lstm``.

Accuracy (``--accuracy``): :func:`pipeline.backtest.run_backtest` on ``--data`` (ETTh1), the
univariate (S) setting, horizon ``--horizon``, seed ``--seed``, one backtest per cell with the
cell as the only model override and at most ``--max-steps`` optimizer steps, on the CPU.

Prints a markdown table, then the figures as JSON (``--results FILE`` also appends them there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from results import add_results_option, append_if_asked, machine

from pipeline.backtest import BacktestSpec, load_ltsf_csv, run_backtest
from pipeline.model import CELLS, StackedLSTMForecaster
from pipeline.recipe import ForecasterConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ETTh1.csv"
BASELINE = "lstm"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds, cells interleaved")
    parser.add_argument("--steps", type=int, default=3, help="timed passes per cell per round")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--accuracy", action="store_true", help="also run the ETTh1 backtests")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    add_results_option(parser)
    return parser.parse_args()


def training_pass(model: StackedLSTMForecaster, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward and backward pass of the training loss (no optimizer step)."""
    model.zero_grad(set_to_none=True)
    model.loss(model(x), y).backward()


def speed(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Samples per second of each cell's training passes: the median of interleaved rounds."""
    generator = torch.Generator().manual_seed(0)
    shape = ForecasterConfig(channels=("OT",), horizon=args.horizon)
    x = torch.randn(args.batch, shape.lookback, 1, generator=generator)  # (B, L, 1)
    y = torch.randn(args.batch, args.horizon, 1, generator=generator)  # (B, H, 1)
    models = {}
    for cell in args.cells:
        torch.manual_seed(0)
        models[cell] = StackedLSTMForecaster(dataclasses.replace(shape, cell=cell))
        models[cell].train()
        training_pass(models[cell], x, y)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {cell: [] for cell in args.cells}
    for _ in range(args.rounds):
        for cell, model in models.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                training_pass(model, x, y)
            rates[cell].append(args.steps * args.batch / (time.perf_counter() - started))
    baseline = rates.get(BASELINE)
    return {cell: speed_figures(cell_rates, baseline) for cell, cell_rates in rates.items()}


def speed_figures(rates: list[float], baseline: list[float] | None) -> dict[str, float]:
    median = statistics.median(rates)
    figures = {"samples_per_s": round(median, 1), "min": round(min(rates), 1)}
    figures["max"] = round(max(rates), 1)
    if baseline:
        figures["ratio_to_lstm"] = round(median / statistics.median(baseline), 3)
    return figures


def accuracy(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One ETTh1 S backtest per cell: test MSE and MAE, steps, wall time."""
    frame = load_ltsf_csv(args.data)
    figures = {}
    for cell in args.cells:
        spec = BacktestSpec(
            features="S",
            horizon=args.horizon,
            model="lstm",
            seed=args.seed,
            model_overrides={"cell": cell},
            train_overrides={"max_steps": args.max_steps, "device": "cpu"},
        )
        metrics = run_backtest(frame, args.data.stem, spec).metrics
        kept = ("mse", "mae", "val_loss", "steps", "best_step", "parameters", "wall_s")
        figures[cell] = {name: metrics[name] for name in kept}
        print(f"{cell}: {json.dumps(figures[cell])}", flush=True)
    return figures


def table(figures: dict[str, Any]) -> str:
    """The markdown table: one row per cell, speed then (if run) accuracy."""
    runs = figures.get("accuracy", {})
    head, rule = "| cell | samples/s | ratio to lstm |", "|---|---:|---:|"
    if runs:
        head, rule = head + " test MSE | test MAE | steps |", rule + "---:|---:|---:|"
    rows = [head, rule]
    for cell, fast in figures["speed"].items():
        row = f"| {cell} | {fast['samples_per_s']:.0f} | {fast.get('ratio_to_lstm', 'n/a')} |"
        if cell in runs:
            run = runs[cell]
            row += f" {run['mse']:.4f} | {run['mae']:.4f} | {run['steps']} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "batch": args.batch,
        "horizon": args.horizon,
        "speed": speed(args),
    }
    if args.accuracy:
        figures["dataset"], figures["seed"] = args.data.stem, args.seed
        figures["max_steps"] = args.max_steps
        figures["accuracy"] = accuracy(args)
    print(table(figures))
    print(json.dumps(figures, indent=2))
    append_if_asked(args, "cells", figures)


if __name__ == "__main__":
    main()

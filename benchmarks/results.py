"""The one row schema of ``benchmarks/results/``: each figure with where, when and how it was made.

Every line of a results file is one JSON object, the same envelope for every benchmark::

    {"benchmark": "ltsf", "date": "2026-11-25", "commit": "13a2c77", "dirty": true,
     "machine": "2 vCPU AMD EPYC, 24 GiB, no GPU",
     "command": ".venv/bin/python benchmarks/ltsf.py --jobs 2",
     "figures": {...the benchmark's own fields...}}

* ``benchmark``: the script's name (``ltsf``, ``generalization``, ``serve``, ...);
* ``date``: the UTC date the row was written (ISO 8601);
* ``commit``: ``git rev-parse --short HEAD`` of the checkout that ran (null outside a checkout);
* ``dirty``: whether tracked files differed from that commit (null where not recorded);
* ``machine``: logical CPUs and model, memory, GPUs (:func:`machine`);
* ``command``: the command line exactly as typed (``sys.orig_argv``);
* ``figures``: what the benchmark measured, in its own fields;
* ``note`` (optional): how a row converted from an older file got its commit and command.

Rows converted from the files that predate this schema say in ``note`` where their commit
(the commit that added the row) and command (BENCHMARKS.md) came from; the files that were not
converted are under ``results/history/``, described in its README.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENVELOPE = ("benchmark", "date", "commit", "dirty", "machine", "command", "figures")


class ResultsFormatError(ValueError):
    """A results file holds a line that is not a row of this schema."""


def append_row(
    path: Path, benchmark: str, figures: dict[str, Any], command: str | None = None
) -> dict[str, Any]:
    """Append one row (the envelope around ``figures``) to ``path`` and return it.

    ``command`` defaults to this process's command line. Numpy scalars in ``figures`` are
    written as floats. Costs one appended line; the git and machine facts are read once per
    process, at its first row, so every row of one run names the same commit.
    """
    row = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        **checkout(),
        "machine": machine(),
        "command": command or shlex.join(sys.orig_argv),
        "figures": figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(row, default=float) + "\n")
    return row


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """``--results FILE``, for the scripts that print their figures: also append them as a row."""
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also append the figures to FILE as one row"
    )


def append_if_asked(args: argparse.Namespace, benchmark: str, figures: dict[str, Any]) -> None:
    """:func:`append_row` to ``args.results`` if ``--results`` was given; nothing otherwise."""
    if args.results is not None:
        append_row(args.results, benchmark, figures)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of ``path`` (none if it does not exist); reads the whole file.

    Raises :class:`ResultsFormatError` on a line without the envelope, such as one of the files
    under ``results/history/``.
    """
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [field for field in ENVELOPE if field not in row]
        if missing:
            raise ResultsFormatError(
                f"{path}:{number} lacks {', '.join(missing)}: not a row of benchmarks/results.py's "
                "schema (files older than it are under benchmarks/results/history/)"
            )
        rows.append(row)
    return rows


def read_figures(path: Path) -> list[dict[str, Any]]:
    """The ``figures`` of every row of ``path``, in file order (see :func:`read_rows`)."""
    return [row["figures"] for row in read_rows(path)]


@functools.cache
def checkout() -> dict[str, Any]:
    """``commit`` and ``dirty`` of the checkout this file is in; both null outside git."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


@functools.cache
def machine() -> str:
    """E.g. ``"2 vCPU AMD EPYC, 24 GiB, no GPU"``: logical CPUs, memory, GPUs; torch not loaded."""
    return f"{os.cpu_count()} vCPU {_cpu_model()}, {_memory_gib()} GiB, {_gpus()}"


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> int:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    kib = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0])
    # MemTotal leaves out what the kernel reserves, so it is a little under the machine's size.
    return math.ceil(kib / 2**20)


def _gpus() -> str:
    """``nvidia-smi -L``'s GPUs, counted by name ("1x NVIDIA H200"), or "no GPU" without it."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):  # no driver: no GPU this process can use
        return "no GPU"
    names = Counter(
        line.split(":", 1)[1].split("(UUID")[0].strip()
        for line in listed.splitlines()
        if line.startswith("GPU ")
    )
    return ", ".join(f"{count}x {name}" for name, count in names.items()) or "no GPU"


# Read once, when a benchmark starts: a row records the commit of the code that ran, not the
# one checked out when it finished (a commit made while a long benchmark runs is not its code).
checkout()

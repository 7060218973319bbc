"""What an operator reads: a Rollcast error once, without tracebacks; no library noise.

The quick tests drive the filters of flows/quiet.py with plain log records; the others run a
fresh interpreter or a ``rollcast`` command, since the defaults act when ``flows`` is imported.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.quiet import LibraryWarningsAtDebug, OneLineRollcastErrors
from pipeline import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)  # renders a traceback, as a console handler would
        self.records.append(record)


@pytest.fixture
def run_logger() -> Iterator[tuple[logging.Logger, Recorder]]:
    """A logger like Prefect's task-run logger, with the filter, at INFO."""
    log = logging.getLogger("test_quiet.task_runs")
    recorder = Recorder()
    log.addHandler(recorder)
    log.addFilter(one_line := OneLineRollcastErrors())
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, recorder
    log.removeHandler(recorder)
    log.removeFilter(one_line)


def raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def test_a_rollcast_error_is_one_line_the_first_time_and_silent_after(
    run_logger: tuple[logging.Logger, Recorder],
) -> None:
    log, recorder = run_logger
    error = raised(ConfigurationError("set ROLLCAST_X"))

    log.error("Task run failed with exception: %r", error, exc_info=error)
    log.error("Encountered exception during execution: %r", error, exc_info=error)

    [record] = recorder.records
    assert record.levelno == logging.ERROR
    assert "set ROLLCAST_X" in record.getMessage()
    assert record.exc_info is None and not record.exc_text


def test_any_other_exception_keeps_its_traceback(
    run_logger: tuple[logging.Logger, Recorder],
) -> None:
    log, recorder = run_logger
    error = raised(KeyError("a bug"))

    log.error("Task run failed", exc_info=error)
    log.error("Flow run failed", exc_info=error)

    assert len(recorder.records) == 2
    assert all("Traceback" in (record.exc_text or "") for record in recorder.records)


@pytest.mark.parametrize(("level", "shown"), [(logging.INFO, False), (logging.DEBUG, True)])
def test_a_library_warning_is_shown_only_when_debugging(level: int, shown: bool) -> None:
    log = logging.getLogger("test_quiet.py.warnings")
    recorder = Recorder()
    log.addHandler(recorder)
    log.addFilter(demote := LibraryWarningsAtDebug())
    log.setLevel(level)
    try:
        log.warning("%s", "site-packages/lib.py:1: UserWarning: a hint")
    finally:
        log.removeHandler(recorder)
        log.removeFilter(demote)

    assert [r.levelname for r in recorder.records] == (["DEBUG"] if shown else [])


def fresh_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_warnings_reach_the_log_at_debug_only() -> None:
    code = (
        "import logging, warnings, flows\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "warnings.warn('quiet hint')\n"
        "logging.getLogger().setLevel(logging.DEBUG)\n"
        "warnings.warn('debugging hint')\n"
    )
    done = fresh_python(code)

    assert done.returncode == 0, done.stderr
    assert "quiet hint" not in done.stderr
    assert "DEBUG:py.warnings:" in done.stderr and "debugging hint" in done.stderr


def test_the_defaults_quiet_mlflow_and_yield_to_the_environment() -> None:
    code = (
        "import os, flows\n"
        "print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])\n"
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'])\n"
        "import mlflow, logging\n"
        "print(logging.getLevelName(logging.getLogger('mlflow').level))\n"
    )
    done = fresh_python(code, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="true")

    assert done.stdout.split() == ["true", "true", "WARNING"], done.stderr


def test_library_lines_outside_a_flow_run_give_no_prefect_warning() -> None:
    code = (
        "import logging, flows\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from prefect import flow  # configures Prefect's logging: its API handler on pipeline\n"
        "logging.getLogger().setLevel(logging.DEBUG)  # shows the warnings flows/quiet routes\n"
        "logging.getLogger('pipeline.broker').info('outside any flow run')\n"
    )
    done = fresh_python(code)

    assert done.returncode == 0, done.stderr
    assert "outside any flow run" in done.stderr
    assert "without a flow run id" not in done.stderr, done.stderr


@pytest.mark.integration
def test_a_failed_flow_says_why_once_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ROLLCAST_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "ROLLCAST_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "train"],  # an empty store: nothing to train on
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert [line for line in lines if "ERROR" in line and "is empty" in line][:1], done.stderr
    assert sum("Encountered exception" in line for line in lines) == 0, done.stderr
    [said] = [line for line in lines if line.startswith("rollcast: ")]
    assert said.startswith("rollcast: the series store") and "is empty" in said

"""What reaches the console: Rollcast's errors once, libraries' warnings only when debugging.

A Rollcast error raised in a task is logged by Prefect three times, each with its traceback:
by the task run, by the flow run and (in a deployment's process) by the engine; the ``rollcast``
command then prints its own one-line message. These are operator errors whose message says what
to do, so :class:`OneLineRollcastErrors` keeps the first report as one ERROR line, without the
traceback, and logs the traceback and the repeats at DEBUG (``rollcast -v`` shows them). Prefect
sends a record to its API after the filter, so the run's log in the UI reads the same. Any other
exception keeps its tracebacks: it is a bug.

Python warnings go to the log (``py.warnings``) at DEBUG: Rollcast itself reports through its
log and never warns, so each one is a library's (a deprecation, a hint), not the operator's.
"""

from __future__ import annotations

import logging
import weakref

from pipeline import RollcastError

logger = logging.getLogger(__name__)

# The loggers that report a failed task or flow run with its traceback (prefect 3.8).
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")
WARNINGS_LOGGER = "py.warnings"  # where logging.captureWarnings sends warnings
SLOW_TASK_LOGGER = "kafka.net.selector"


class OneLineRollcastErrors(logging.Filter):
    """A logger filter: a :class:`RollcastError`'s first report is one line, without traceback.

    Later reports of the same exception (the flow's, after its task's) are logged at DEBUG only.
    Other records pass unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reported: weakref.WeakSet[BaseException] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, RollcastError):
            return True
        first = error not in self._reported
        if first:
            self._reported.add(error)
            logger.debug("%s: the traceback of %r", record.name, error, exc_info=record.exc_info)
        record.exc_info, record.exc_text = None, None
        if not first:
            logger.debug("%s: %s", record.name, record.getMessage())
        return first


class LibraryWarningsAtDebug(logging.Filter):
    """A filter for ``py.warnings``: its records are DEBUG records, dropped unless DEBUG is on.

    ``logging.captureWarnings`` logs every warning at WARNING; the logger's level was checked
    for that level, so a record demoted here is dropped unless its logger takes DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def route_library_noise() -> None:
    """Attach the filters above and send Python warnings to the log; calling it again is a no-op.

    Cost: one ``isinstance`` per record of the Prefect run loggers and per warning.
    """
    one_line = OneLineRollcastErrors()
    for name in PREFECT_RUN_LOGGERS:
        run_logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineRollcastErrors) for f in run_logger.filters):
            run_logger.addFilter(one_line)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger(WARNINGS_LOGGER)
    if not any(isinstance(f, LibraryWarningsAtDebug) for f in warnings_logger.filters):
        warnings_logger.addFilter(LibraryWarningsAtDebug())
    # kafka-python warns when a network task takes over 0.1 s: a busy machine, not a fault.
    logging.getLogger(SLOW_TASK_LOGGER).setLevel(logging.ERROR)

"""Thin Prefect flows over ``pipeline``: each one calls the stages in order."""

import logging
import os

from flows.quiet import route_library_noise
from pipeline import ConfigurationError

# These defaults are set before Prefect or MLflow is imported (every entry point imports this
# package first), and only where unset: a user's environment overrides each one.

# Route the library's log lines (training progress, ingest progress) to the Prefect UI too.
# Set before a runner or worker starts a flow run's process, which inherits it.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
# Prefect's temporary API server must answer within this many seconds (20 by default). A first
# start migrates a new database: 29 s measured on a quiet 2-core VM, more on a loaded one.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The library logs outside flow runs too (the demo's broker, serve's progress): those lines go to
# the console only, without Prefect's warning that they have no flow run to go to.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# The temporary server's telemetry heartbeat has nowhere to go on a closed network, and on a
# fresh sqlite database it raced the first flow run ("database is locked", a traceback).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# MLflow 3's usage telemetry: off, like Prefect's, so a closed network costs no time or errors.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow draws a progress bar (tqdm) for each model it downloads, between the log's lines.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow sets its loggers' level when it is imported, after the commands set theirs: its INFO
# lines ("Validating input example against model signature") are not the operator's.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

# A Rollcast error's tracebacks, and libraries' Python warnings, only at DEBUG (flows/quiet.py).
route_library_noise()

# Prefect leaves the root logger at WARNING, which would drop the library's progress lines
# (INFO) before they reach a run's log. ROLLCAST_LOG_LEVEL changes it (e.g. DEBUG, WARNING).
LIBRARY_LOGGER = logging.getLogger("pipeline")


def asked_log_level() -> str:
    """``ROLLCAST_LOG_LEVEL`` (default INFO); ConfigurationError for anything else than a level."""
    asked = os.environ.get("ROLLCAST_LOG_LEVEL", "INFO")
    # ASCII only: a dotless i (U+0131) upper-cases to I, so "\u0131nfo" would pass as INFO.
    if not asked.isascii() or asked.upper() not in logging.getLevelNamesMapping():
        raise ConfigurationError(
            f"ROLLCAST_LOG_LEVEL={asked!r} is not a log level: use DEBUG, INFO, WARNING or ERROR"
        )
    return asked.upper()


def require_log_level() -> None:
    """Raise the refusal of ``ROLLCAST_LOG_LEVEL``, if any: the entry points call this first, so
    that it is one line and exit code 2, not a traceback at import."""
    asked_log_level()


try:
    LIBRARY_LOGGER.setLevel(asked_log_level())
except ConfigurationError:
    LIBRARY_LOGGER.setLevel(logging.INFO)  # until an entry point refuses to start

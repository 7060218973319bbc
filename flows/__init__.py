"""Thin Prefect flows over ``pipeline``: each one calls the stages in order."""

import logging
import os

from pipeline import ConfigurationError

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

# Prefect leaves the root logger at WARNING, which would drop the library's progress lines
# (INFO) before they reach a run's log. ROLLCAST_LOG_LEVEL changes it (e.g. DEBUG, WARNING).
LIBRARY_LOGGER = logging.getLogger("pipeline")
LOG_LEVEL = os.environ.get("ROLLCAST_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in logging.getLevelNamesMapping():
    raise ConfigurationError(
        f"ROLLCAST_LOG_LEVEL={LOG_LEVEL!r} is not a log level: use DEBUG, INFO, WARNING or ERROR"
    )
LIBRARY_LOGGER.setLevel(LOG_LEVEL)

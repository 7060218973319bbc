"""Thin Prefect flows over ``pipeline``: each one calls the stages in order."""

import os

# Route the library's log lines (training progress, ingest progress) to the Prefect UI too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")

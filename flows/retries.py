"""Which failed task runs Prefect may retry: outages yes, configuration errors no."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline import ConfigurationError

# A wrong or missing setting fails the same way every time.
NOT_TRANSIENT: tuple[type[BaseException], ...] = (ConfigurationError, ValidationError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry unless the task failed on its configuration."""
    return not isinstance(state.data, NOT_TRANSIENT)

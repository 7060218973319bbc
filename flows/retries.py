"""Which failed task runs Prefect may retry: outages, and nothing else.

An allow-list: a retry is wasted (and delays the one clear error line) on anything that fails
the same way every time: a wrong setting or file (:class:`~pipeline.ConfigurationError`,
pydantic's ``ValidationError``), what the machine lacks (:class:`~pipeline.ResourceError`: a
full disk, no GPU), bad data or a diverged training, or a bug. Only a service that did not
answer (:class:`~pipeline.OutageError`) or a connection that broke may answer on a later try.
"""

from __future__ import annotations

from typing import Any

import requests
from pydantic import ValidationError

from pipeline import ConfigurationError, OutageError, ResourceError

# A service that did not answer, or a network call cut off: a later try may succeed (MLflow's
# REST client raises its own error while handling one of requests', so causes are looked at).
TRANSIENT: tuple[type[BaseException], ...] = (
    OutageError,
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
)
# Fails the same way every time, whatever it wraps (checked first: an error may be both).
NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    ConfigurationError,
    ResourceError,
    ValidationError,
)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry an outage, never anything else."""
    return is_transient(state.data)


def is_transient(error: object) -> bool:
    """Whether ``error``, or what it was raised from, is an outage, so a retry may help.

    The first known kind along the chain of causes decides; an error of no known kind is not
    retried.
    """
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        if isinstance(error, NOT_TRANSIENT):
            return False
        if isinstance(error, TRANSIENT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False

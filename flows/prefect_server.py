"""Prefect's temporary API server, tied to the life of the process that starts it (Linux).

With no ``PREFECT_API_URL``, Prefect 3 runs flows against a temporary API server in a child
process and stops it at exit. A process killed with SIGKILL (or SIGTERM, which skips ``atexit``)
never stops it: the server lives on, holding a port and about 230 MB. Here the child is started
early, from the main thread, with ``pipeline.children.dies_with_parent``: the kernel sends it
SIGTERM when its parent dies, however it dies. Prefect reuses that one server for every later
flow call.

This leans on two internals of ``prefect.server.api.server`` (3.8): it starts the child with its
module's ``subprocess.Popen``, and ``SubprocessASGIServer`` is a per-port singleton.
``tests/test_prefect_server.py`` checks both, so an upgrade that changes them fails a test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

from pipeline import OutageError
from pipeline.children import dies_with_parent

STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# The start of Prefect's message when the server did not answer in time (prefect 3.8).
TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API server"


class TemporaryServerError(OutageError):
    """Prefect's temporary API server did not answer in time: a busy machine, or a slow disk."""


def tie_temporary_server() -> bool:
    """Start the temporary server now, as a child that dies with us; False if there is none.

    Call from the main thread before the first flow (the death signal follows the thread that
    started the child). Does nothing off Linux, or when an API URL or no temporary server is set.
    Raises :class:`TemporaryServerError`, naming the setting to raise, when the server does not
    answer within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (flows/__init__: 180 s).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if not sys.platform.startswith("linux") or PREFECT_API_URL.value():
        return False
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    from prefect.server.api import server

    server.subprocess = _DyingWithParent()  # type: ignore[assignment]
    temporary = server.SubprocessASGIServer()
    try:
        temporary.start()
    except RuntimeError as err:
        if not str(err).startswith(TIMED_OUT):
            raise
        temporary.stop()
        raise TemporaryServerError(startup_timeout_message()) from err
    return True


def startup_timeout_message() -> str:
    """The one line that says the temporary server was too slow, and which setting to raise."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    seconds = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    return (
        f"Prefect's temporary API server did not answer within {seconds} s "
        f"({STARTUP_SETTING}={seconds}): on a busy machine raise {STARTUP_SETTING}, "
        "or set PREFECT_API_URL to a Prefect server that is already running"
    )


class _DyingWithParent:
    """``subprocess`` as Prefect's server module sees it: children die with their parent."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802
        kwargs.setdefault("preexec_fn", dies_with_parent())
        return subprocess.Popen(*args, **kwargs)

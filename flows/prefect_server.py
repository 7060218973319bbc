"""Prefect's temporary API server, tied to the life of the process that starts it (Linux).

With no ``PREFECT_API_URL``, Prefect 3 runs flows against a temporary API server in a child
process and stops it at exit. A process killed with SIGKILL (or SIGTERM, which skips ``atexit``)
never stops it: the server lives on, holding a port and about 230 MB. Here the child is started
early, from the main thread, with ``PR_SET_PDEATHSIG``: the kernel sends it SIGTERM when its
parent dies, however it dies. Prefect reuses that one server for every later flow call.

This leans on two internals of ``prefect.server.api.server`` (3.8): it starts the child with its
module's ``subprocess.Popen``, and ``SubprocessASGIServer`` is a per-port singleton.
``tests/test_prefect_server.py`` checks both, so an upgrade that changes them fails a test.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def tie_temporary_server() -> bool:
    """Start the temporary server now, as a child that dies with us; False if there is none.

    Call from the main thread before the first flow (the death signal follows the thread that
    started the child). Does nothing off Linux, or when an API URL or no temporary server is set.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if not sys.platform.startswith("linux") or PREFECT_API_URL.value():
        return False
    if not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    from prefect.server.api import server

    server.subprocess = _DyingWithParent(os.getpid())  # type: ignore[assignment]
    server.SubprocessASGIServer().start()
    return True


class _DyingWithParent:
    """``subprocess`` as Prefect's server module sees it: children die with their parent."""

    def __init__(self, parent: int) -> None:
        self._parent = parent

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802
        kwargs.setdefault("preexec_fn", dies_with(self._parent))
        return subprocess.Popen(*args, **kwargs)


def dies_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies, however it dies (Linux)."""

    def arrange() -> None:  # runs in the child between fork and exec
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return arrange

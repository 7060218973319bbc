"""Child processes that die with the process that starts them, however it dies (Linux).

Rollcast starts servers as child processes: the embedded broker (``broker``), Prefect's temporary
API server (``flows/prefect_server.py``) and the stack's MLflow and Prefect servers
(``flows/stack.py``). A parent stopped by SIGKILL, or by SIGTERM (which skips ``finally`` and
``atexit``), never stops them: they would live on with parent 1, holding ports and memory. Each is
started with :func:`dies_with_parent` as its ``preexec_fn``, which asks the kernel
(``PR_SET_PDEATHSIG``) to send it a signal when its parent goes.

The kernel sends it when the *thread* that started the child exits, not the process: start a
child that should outlive a worker thread (a Prefect task's, a thread pool's) from the main
thread, or from a thread that lives as long as the child should.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def dies_with_parent(death_signal: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``death_signal`` when its
    parent dies (strictly, the thread that called ``Popen``: see above); None off Linux.

    SIGTERM lets a server stop cleanly; pass SIGKILL for a child that ignores SIGTERM. A parent
    that died between the fork and the ``prctl`` is noticed: the child exits with status 1.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    # Looked up here, in the parent: a dlopen in the child, after a fork from a threaded
    # process, could wait forever on a lock another thread held at the fork.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arrange() -> None:  # runs in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, int(death_signal))
        if os.getppid() != parent:
            os._exit(1)

    return arrange

"""Prefect's temporary API server dies with the process that started it, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# A CLI-like process: ties the server, says the server's pid, then works until killed.
CHILD = """
from flows.prefect_server import tie_temporary_server
from prefect.server.api.server import SubprocessASGIServer
assert tie_temporary_server()
print(SubprocessASGIServer().server_process.pid, flush=True)
import time; time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_temporary_server_dies_with_a_sigkilled_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    cli = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        server_pid = int(cli.stdout.readline())  # type: ignore[union-attr]
        assert alive(server_pid)
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=30)

    deadline = time.monotonic() + 15
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    still = alive(server_pid)
    if still:
        os.kill(server_pid, signal.SIGKILL)
    assert not still, "the temporary Prefect server outlived the process that started it"

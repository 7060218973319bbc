"""Prefect's temporary API server dies with the process that started it, even by SIGKILL, and a
server too slow to start is one line that names the setting to raise."""

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


# A CLI-like process whose temporary server cannot answer in time: what does it say?
TOO_SLOW = """
from flows.prefect_server import TemporaryServerError, tie_temporary_server
from prefect.server.api.server import SubprocessASGIServer
try:
    tie_temporary_server()
except TemporaryServerError as err:
    print(err)
    print(SubprocessASGIServer().server_process)
"""


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp_path), **settings}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_temporary_server_dies_with_a_sigkilled_cli(tmp_path: Path) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=clean_env(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        server_pid = int(cli.stdout.readline())  # type: ignore[union-attr]
        assert alive(server_pid)
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=30)

    deadline = time.monotonic() + 60  # generous: a loaded machine reaps slowly
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    still = alive(server_pid)
    if still:
        os.kill(server_pid, signal.SIGKILL)
    assert not still, "the temporary Prefect server outlived the process that started it"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is tied on Linux")
def test_a_temporary_server_too_slow_to_start_names_the_setting(tmp_path: Path) -> None:
    env = clean_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    done = subprocess.run(
        [sys.executable, "-c", TOO_SLOW], env=env, capture_output=True, text=True, timeout=300
    )

    message, server = done.stdout.splitlines()
    assert message.startswith("Prefect's temporary API server did not answer within 1 s")
    assert "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in message
    assert server == "None", "the server that did not answer was left running"

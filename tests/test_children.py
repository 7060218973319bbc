"""Rollcast's child processes die with the process that started them, however it dies (Linux).

Each test starts a ``rollcast`` command as a child, kills it as a supervisor or the OOM killer
would, and reads /proc until the command's own children are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.broker import free_port, tansu_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"),
]

ROOT = Path(__file__).resolve().parents[1]
# Generous: a loaded machine imports torch and MLflow slowly, and takes a while to reap.
START_DEADLINE_S, DEATH_DEADLINE_S = 180.0, 60.0


def command_log(tmp_path: Path) -> Path:
    """Where :func:`rollcast` writes the command's output."""
    return tmp_path / "command.log"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def children(parent: int) -> dict[int, str]:
    """``pid -> executable path`` of the live processes whose parent is ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            executable = os.readlink(entry / "exe")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found[int(entry.name)] = executable
    return found


def wait_for_broker(command: subprocess.Popen[bytes], log: Path) -> int:
    """The pid of the tansu broker ``command`` started, once it runs."""
    tansu = str(tansu_binary())
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if command.poll() is not None:
            raise AssertionError(f"exited with {command.returncode}: {log.read_text()[-2000:]}")
        brokers = [pid for pid, exe in children(command.pid).items() if exe == tansu]
        if brokers:
            return brokers[0]
        time.sleep(0.2)
    raise AssertionError(f"no tansu broker started within {START_DEADLINE_S:.0f} s")


def outlived(pids: list[int]) -> list[int]:
    """Those of ``pids`` still alive after the deadline; each is killed, so none leaks."""
    deadline = time.monotonic() + DEATH_DEADLINE_S
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    still = [pid for pid in pids if alive(pid)]
    for pid in still:
        os.kill(pid, signal.SIGKILL)
    return still


@contextmanager
def rollcast(tmp_path: Path, *arguments: str) -> Iterator[subprocess.Popen[bytes]]:
    """``rollcast ARGUMENTS`` in a fresh data dir and Prefect home; killed at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ROLLCAST_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "ROLLCAST_DATA_DIR": str(tmp_path)}
    env["ROLLCAST_METRICS_PORT"] = "0"
    with command_log(tmp_path).open("wb") as log:
        command = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *arguments],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield command
    finally:
        command.kill()
        command.wait(timeout=30)


def test_the_broker_dies_with_a_sigkilled_rollcast_broker(tmp_path: Path) -> None:
    with rollcast(tmp_path, "broker", "--port", str(free_port())) as command:
        broker = wait_for_broker(command, command_log(tmp_path))
        command.send_signal(signal.SIGKILL)
        command.wait(timeout=30)

    assert not outlived([broker]), "the tansu broker outlived `rollcast broker` (SIGKILL)"


def test_the_broker_dies_with_a_sigtermed_demo(tmp_path: Path) -> None:
    with rollcast(tmp_path, "demo", "--series", "2", "--records", "400") as command:
        broker = wait_for_broker(command, command_log(tmp_path))
        others = list(children(command.pid))  # Prefect's temporary server, if it started
        command.send_signal(signal.SIGTERM)  # Python's default: exit at once, no `finally`
        command.wait(timeout=30)

    assert not outlived([broker]), "the tansu broker outlived `rollcast demo` (SIGTERM)"
    assert not outlived(others), "a child process outlived `rollcast demo` (SIGTERM)"

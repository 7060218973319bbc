"""The production stack on one machine: MLflow and Prefect servers on PostgreSQL databases.

``rollcast stack`` (``make stack``) runs what docker-compose.yml runs, minus Kafka: a database
each for MLflow and Prefect on one PostgreSQL server (created when missing), ``mlflow server``
with proxied artifacts, and ``prefect server``. It prints the variables that point the other
commands at them, then runs until stopped. Both servers die with the process that started them,
however it dies (``pipeline.children``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import URL, make_url

from pipeline import ConfigurationError
from pipeline.children import dies_with_parent
from pipeline.config import StackSettings

START_TIMEOUT_S = 180.0  # Prefect migrates an empty database on its first start


class Stack:
    """The two servers as child processes; ``with Stack(...) as stack`` waits until both answer."""

    def __init__(self, settings: StackSettings, root: Path) -> None:
        self.settings, self.root = settings, root
        self._servers: list[subprocess.Popen[bytes]] = []

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.settings.stack_host}:{self.settings.stack_mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.settings.stack_host}:{self.settings.stack_prefect_port}/api"

    def env(self) -> dict[str, str]:
        """What the Rollcast commands, flows and runners need to use this stack."""
        return {
            "ROLLCAST_MLFLOW_TRACKING_URI": self.mlflow_uri,
            "PREFECT_API_URL": self.prefect_api,
        }

    def __enter__(self) -> Stack:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in (self.settings.stack_mlflow_db, self.settings.stack_prefect_db):
            create_database(self.settings, name)
        try:
            self._start_mlflow()
            self._start_prefect()
            _wait_until_up(f"{self.mlflow_uri}/health", self.root / "mlflow.log")
            _wait_until_up(f"{self.prefect_api}/health", self.root / "prefect.log")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self._servers:
            server.terminate()
        for server in self._servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        self._servers.clear()

    def _start_mlflow(self) -> None:
        host, port = self.settings.stack_host, self.settings.stack_mlflow_port
        env = {
            # From the environment, not the command line, so `ps` does not show a password.
            "MLFLOW_BACKEND_STORE_URI": database_url(self.settings, "mlflow"),
            "MLFLOW_SERVER_ALLOWED_HOSTS": f"{host},{host}:{port},localhost,localhost:{port}",
        }
        artifacts = (self.root / "mlartifacts").resolve().as_uri()
        command = ["server", "--host", host, "--port", str(port)]
        command += ["--artifacts-destination", artifacts, "--serve-artifacts"]
        self._spawn([sys.executable, "-m", "mlflow", *command], env, "mlflow.log")

    def _start_prefect(self) -> None:
        env = {
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url(self.settings, "prefect"),
            "PREFECT_HOME": str(self.root / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        command = ["server", "start", "--host", self.settings.stack_host]
        command += ["--port", str(self.settings.stack_prefect_port)]
        self._spawn([sys.executable, "-m", "prefect", *command], env, "prefect.log")

    def _spawn(self, command: list[str], env: dict[str, str], log_name: str) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        with (self.root / log_name).open("ab") as log:
            self._servers.append(
                subprocess.Popen(
                    command,
                    env={**inherited, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=dies_with_parent(),
                )
            )


def database_url(settings: StackSettings, server: str) -> str:
    """The SQLAlchemy URL of one server's database: psycopg for MLflow, asyncpg for Prefect."""
    name = settings.stack_mlflow_db if server == "mlflow" else settings.stack_prefect_db
    driver = "postgresql+psycopg" if server == "mlflow" else "postgresql+asyncpg"
    url = make_url(settings.postgres_url.get_secret_value())
    return url.set(drivername=driver, database=name).render_as_string(hide_password=False)


def create_database(settings: StackSettings, name: str) -> None:
    """Create the database unless it exists; a clear error when PostgreSQL does not answer."""
    import psycopg
    from psycopg import sql

    admin = _admin_url(settings)
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as err:
        raise ConfigurationError(
            f"cannot reach PostgreSQL at {admin.render_as_string()}: {err}. "
            "Set ROLLCAST_POSTGRES_URL to a server where this user may create databases"
        ) from err


def postgres_reachable(settings: StackSettings) -> bool:
    import psycopg

    admin = _admin_url(settings).render_as_string(hide_password=False)
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def _admin_url(settings: StackSettings) -> URL:
    """The connection that creates databases, as psycopg takes it."""
    return make_url(settings.postgres_url.get_secret_value()).set(drivername="postgresql")


def _wait_until_up(url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ConfigurationError(
        f"{url} did not answer within {START_TIMEOUT_S:.0f} s ({log}):\n{tail}"
    )

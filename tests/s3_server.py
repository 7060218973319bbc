"""A real S3-compatible HTTP server for the store's object-storage tests: moto in server mode.

Fixtures (import them explicitly, ``from s3_server import s3_server, s3_store_uri``):

- ``s3_server`` (session): a running :class:`S3Server` on a free 127.0.0.1 port; stopped at the end
  of the session. ``.endpoint_url``, ``.storage_options()``, ``.create_bucket()``.
- ``s3_store_uri`` (function): a fresh bucket; yields :class:`S3Store` ``(uri, storage_options)``,
  ``uri`` being ``s3://<bucket>/series``.
- ``s3_store_env`` (function): the same store, also set for the test only (monkeypatch) as
  ``ROLLCAST_STORE_URI`` and ``ROLLCAST_STORE_OPTIONS`` (JSON), the settings Rollcast reads.

Nothing is put in ``os.environ`` outside ``s3_store_env``'s monkeypatch: delta-rs gets the endpoint
and credentials from the returned storage options.

Why moto runs in a child process, not in a thread of the test process: some deltalake calls hold
the GIL while they wait on the network (``DeltaTable.history()`` in deltalake 1.6), so a server
thread in the same interpreter cannot answer them and the call hangs until object_store's request
timeout. See notes/s3.md.

Run directly (``python tests/s3_server.py``), this file is that child: it prints the port, serves
until its stdin closes (so it also ends when the test process dies), then stops.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; delta-rs still needs some to sign its requests.
ACCESS_KEY_ID = "rollcast-test"
SECRET_ACCESS_KEY = "rollcast-test-secret"
TABLE_PATH = "series"
# The machine running the suite may be loaded: starting moto (importing every backend) can be slow.
STARTUP_TIMEOUT_S = 120.0


class S3Store(NamedTuple):
    """One Delta table location on the server: unpack as ``uri, storage_options = store``."""

    uri: str
    storage_options: dict[str, str]

    @property
    def bucket(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[0]


class S3Server:
    """moto's S3 over HTTP in a child process; see the module docstring."""

    def __init__(self, log_path: Path, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self.endpoint_url = ""

    def start(self) -> S3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._log = self.log_path.open("w")
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        try:
            port = self._read_port()
            self.endpoint_url = f"http://{HOST}:{port}"
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(self._process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(self.startup_timeout_s)
        if not line or not line[0].strip().isdigit():
            raise RuntimeError(
                f"moto server did not say its port within {self.startup_timeout_s:.0f} s "
                f"(exit code {self._process.poll()}); see {self.log_path}"
            )
        return int(line[0])

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # an S3 error document is an answer
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto server at {self.endpoint_url} did not answer within "
                        f"{self.startup_timeout_s:.0f} s; see {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()  # the child's signal to stop
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def storage_options(self) -> dict[str, str]:
        """delta-rs storage options for this server (any bucket): what ``ROLLCAST_STORE_OPTIONS``
        would hold. Conditional put (``If-None-Match: *`` on each commit file) is what makes
        concurrent writers safe; it is deltalake 1.x's default and is spelt out anyway."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
            "AWS_CONDITIONAL_PUT": "etag",
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (test set-up and inspection only)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (a random name unless given); returns its name."""
        bucket = name or f"rollcast-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def store(self, bucket: str | None = None, path: str = TABLE_PATH) -> S3Store:
        """The table location ``s3://<bucket>/<path>`` (in a new bucket unless given)."""
        return S3Store(f"s3://{bucket or self.create_bucket()}/{path}", self.storage_options())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store_uri(s3_server: S3Server) -> S3Store:
    """A fresh bucket per test: ``(uri, storage_options)`` with ``uri = s3://<bucket>/series``."""
    return s3_server.store()


@pytest.fixture
def s3_store_env(s3_store_uri: S3Store, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """``s3_store_uri``, also set as ``ROLLCAST_STORE_URI`` / ``ROLLCAST_STORE_OPTIONS`` for the
    test only."""
    monkeypatch.setenv("ROLLCAST_STORE_URI", s3_store_uri.uri)
    monkeypatch.setenv("ROLLCAST_STORE_OPTIONS", json.dumps(s3_store_uri.storage_options))
    return s3_store_uri


# --- the child process -------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ConditionalWritesOneAtATime:
    """WSGI middleware: requests carrying ``If-None-Match`` / ``If-Match`` run one at a time.

    moto checks the precondition and then stores the object in two steps, with no lock between
    them, so two concurrent ``If-None-Match: *`` PUTs of the same key could both succeed; real S3
    and MinIO decide atomically. Serialising conditional requests gives moto S3's guarantee, so a
    lost commit in a test is delta-rs's or Rollcast's fault, never the test server's.
    """

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ:
            with self.lock:
                return self.app(environ, start_response)
        return self.app(environ, start_response)


def _serve() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    # ThreadedMotoServer has no hook for middleware; its werkzeug server reads .app per request.
    wsgi = getattr(server, "_server", None)
    if wsgi is not None:
        wsgi.app = ConditionalWritesOneAtATime(wsgi.app)
    else:
        print("moto changed: conditional writes are not serialised", file=sys.stderr)
    port = server.get_host_and_port()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    sys.stdout = sys.stderr  # nothing else on the pipe nobody reads any more
    sys.stdin.read()  # until the parent closes stdin or dies
    server.stop()


if __name__ == "__main__":
    _serve()

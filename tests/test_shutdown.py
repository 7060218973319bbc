"""SIGTERM is a stop request the loops read, not an exception raised wherever the process is."""

from __future__ import annotations

import os
import signal
import time

from pipeline import shutdown


def test_sigterm_inside_the_scope_requests_a_stop_and_the_old_handler_comes_back() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with shutdown.stop_on_sigterm() as stopping:
            assert not shutdown.requested()
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not stopping.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert shutdown.requested()
            started = time.monotonic()
            assert shutdown.wait(60)  # a wait ends at once once a stop is requested
            assert time.monotonic() - started < 1
        os.kill(os.getpid(), signal.SIGTERM)  # outside: the handler from before
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert received == [signal.SIGTERM]


def test_a_request_is_forgotten_when_its_scope_ends() -> None:
    with shutdown.stop_on_sigterm():
        shutdown.request("test")
        assert shutdown.requested()
    assert not shutdown.requested()  # the next stage, or a test, starts afresh
    with shutdown.stop_on_sigterm():
        assert not shutdown.requested()
        assert not shutdown.wait(0.01)

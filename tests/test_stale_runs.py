"""Runs left RUNNING by a process that ended without finishing them are marked failed, with the
reason, by the next training or search: on a real MLflow sqlite store, with a real killed child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline import runs
from pipeline.config import MlflowSettings, StoreSettings
from pipeline.tracking import (
    FAILED_REASON,
    HEARTBEAT,
    OWNER_HOST,
    OWNER_PID,
    OWNER_START,
    Owner,
    Tracking,
    connect,
    fail_abandoned_runs,
    process_start,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HOUR_MS = 3_600_000
# A child that opens a run through Rollcast, says its id, and waits to be killed.
OPEN_AND_WAIT = textwrap.dedent(
    """
    import sys, time
    from pipeline import runs
    from pipeline.config import MlflowSettings, StoreSettings
    from pipeline.tracking import connect

    settings = MlflowSettings(mlflow_tracking_uri=sys.argv[1])
    tracking = connect(settings, StoreSettings(data_dir=sys.argv[2]))
    with runs.open_run(tracking, "killed while training") as run_id:
        print(run_id, flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return connect(MlflowSettings(mlflow_tracking_uri=uri), StoreSettings(data_dir=tmp_path))


def run_killed_by_sigkill(tracking: Tracking, data_dir: Path) -> str:
    """The id of a run opened by a child process that was then SIGKILLed (and reaped)."""
    child = subprocess.Popen(
        [sys.executable, "-c", OPEN_AND_WAIT, tracking.uri, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert run_id, "the child opened no run"
    return run_id


def test_a_run_whose_process_was_killed_is_marked_failed_with_the_reason(
    tracking: Tracking, tmp_path: Path
) -> None:
    killed = run_killed_by_sigkill(tracking, tmp_path)
    assert tracking.client.get_run(killed).info.status == "RUNNING"

    with runs.open_run(tracking, "alive") as alive:
        marked = fail_abandoned_runs(tracking, "run next")
        alive_status = tracking.client.get_run(alive).info.status

    run = tracking.client.get_run(killed)
    assert marked == [killed]
    assert run.info.status == "FAILED"
    reason = run.data.tags[FAILED_REASON]
    assert "ended without finishing it (killed?)" in reason
    assert "marked failed by run next" in reason
    assert run.info.end_time is not None
    assert alive_status == "RUNNING"  # this process's own open run is left alone


def test_a_search_marks_the_runs_of_a_killed_training_failed(tracking: Tracking) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    here = Owner.this_process()
    boot_id = (here.start or "boot/0").split("/")[0]
    gone = Owner(here.host, int(ended.stdout), f"{boot_id}/1")
    left = tracking.client.create_run(tracking.experiment(), tags=gone.tags()).info.run_id

    with runs.search_run(tracking, "tune", {}) as search_id:
        pass

    run = tracking.client.get_run(left)
    assert run.info.status == "FAILED"
    assert f"marked failed by run {search_id}" in run.data.tags[FAILED_REASON]
    assert tracking.client.get_run(search_id).info.status == "FINISHED"


def test_a_run_from_another_host_fails_only_after_its_heartbeat_goes_silent(
    tracking: Tracking,
) -> None:
    now_ms = int(time.time() * 1000)
    elsewhere = {OWNER_HOST: "another-host", OWNER_PID: "1", OWNER_START: "boot/1"}

    def run_with_heartbeat(beat_ms: int) -> str:
        tags = {**elsewhere, HEARTBEAT: str(beat_ms)}
        run = tracking.client.create_run(tracking.experiment(), start_time=beat_ms, tags=tags)
        return run.info.run_id

    silent, beating = run_with_heartbeat(now_ms - 3 * HOUR_MS), run_with_heartbeat(now_ms)

    marked = fail_abandoned_runs(tracking, "run next", stale_after_s=2 * 3600)

    assert marked == [silent]
    assert "no heartbeat for 3.0 h" in tracking.client.get_run(silent).data.tags[FAILED_REASON]
    assert tracking.client.get_run(silent).info.end_time == now_ms - 3 * HOUR_MS
    assert tracking.client.get_run(beating).info.status == "RUNNING"


def test_an_open_run_keeps_its_heartbeat_fresh(
    tracking: Tracking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "HEARTBEAT_S", 0.05)
    with runs.open_run(tracking, "beating") as run_id:
        first = int(tracking.client.get_run(run_id).data.tags[HEARTBEAT])
        time.sleep(0.5)
        later = int(tracking.client.get_run(run_id).data.tags[HEARTBEAT])

    tags = tracking.client.get_run(run_id).data.tags
    assert later > first
    assert tags[OWNER_PID] == str(os.getpid())
    assert tags[OWNER_START] == process_start(os.getpid())


@pytest.mark.skipif(process_start(os.getpid()) is None, reason="needs /proc")
def test_a_pid_reused_by_another_process_or_a_reboot_is_an_ended_owner() -> None:
    here = Owner.this_process()
    assert here.start is not None
    boot_id, ticks = here.start.split("/")

    assert here.has_ended(here) is False
    assert Owner(here.host, here.pid, f"{boot_id}/1").has_ended(here) is True  # pid reused
    assert Owner(here.host, here.pid, f"rebooted/{ticks}").has_ended(here) is True
    assert Owner("another-host", here.pid, here.start).has_ended(here) is None

"""A `mira run` killed while its steps held concurrency-pool slots: the next `mira run` frees them instead of
waiting for them for ever (found by tests/e2e/test_kill_run.py, where the resumed run hung)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster.cli import HOST_TAG, PID_TAG, release_dead_runs
from mira_dagster.definitions import ALL_ASSETS
from mira_dagster.defs.resources import MiraResource

pytestmark = pytest.mark.e2e


def _run(instance: dg.DagsterInstance, pid: int, host: str | None = None) -> str:
    defs = dg.Definitions(assets=ALL_ASSETS, resources={"mira": MiraResource()})
    job = defs.resolve_implicit_global_asset_job_def()
    tags = {"mira/entry": "mira run", PID_TAG: str(pid), **({HOST_TAG: host} if host else {})}
    run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags=tags)
    return run.run_id


def test_slots_of_a_dead_mira_run_are_freed_and_its_run_failed(tmp_path: Path) -> None:
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    storage = instance.event_log_storage
    storage.set_concurrency_slots("student", 2)
    dead = subprocess.Popen(["true"])
    dead.wait()
    dead_run = _run(instance, dead.pid)
    live_run = _run(instance, os.getpid())  # this test's own process: alive
    for run_id, step in ((dead_run, "student_scores"), (dead_run, "teacher_labels"), (live_run, "student_scores")):
        storage.claim_concurrency_slot("student", run_id, step)
    assert storage.get_concurrency_info("student").active_slot_count == 2

    assert release_dead_runs(instance) == [dead_run]
    assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live_run).status == dg.DagsterRunStatus.STARTED
    info = storage.get_concurrency_info("student")
    assert dead_run not in {s.run_id for s in info.claimed_slots}
    # the live run's step, which was waiting for a slot, gets one now
    assert storage.claim_concurrency_slot("student", live_run, "student_scores").is_claimed


def test_runs_of_another_machine_are_left_alone(tmp_path: Path) -> None:
    """On a shared instance (PostgreSQL) a process id of another machine means nothing here: its run is not failed,
    even when no process of that id lives on this machine."""
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    elsewhere = _run(instance, dead.pid, host="another-machine")
    here = _run(instance, dead.pid, host=socket.gethostname())
    assert release_dead_runs(instance) == [here]
    assert instance.get_run_by_id(elsewhere).status == dg.DagsterRunStatus.STARTED


def test_daemon_runs_whose_worker_died_are_released(tmp_path: Path) -> None:
    """Dagster's default run launcher has no worker health check: a run the daemon launched whose worker process
    died would stay "started" (holding its pool slots, and a following `mira run` waiting). Its worker's pid is in
    the run's "Started process for run" event, as Dagster's run worker writes it."""
    from dagster._core.events import EngineEventData  # the event the run worker itself reports

    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"))
    defs = dg.Definitions(assets=ALL_ASSETS, resources={"mira": MiraResource()})
    job = defs.resolve_implicit_global_asset_job_def()
    dead = subprocess.Popen(["true"])
    dead.wait()
    runs = {}
    for name, pid in (("dead", dead.pid), ("alive", os.getpid()), ("unknown", None)):
        run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/sensor_name": "x"})
        if pid is not None:
            data = EngineEventData(metadata={"pid": dg.MetadataValue.text(str(pid))})
            instance.report_engine_event(f"Started process for run (pid: {pid}).", run, engine_event_data=data)
        runs[name] = run.run_id
    assert release_dead_runs(instance) == [runs["dead"]]
    assert instance.get_run_by_id(runs["dead"]).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(runs["alive"]).status == dg.DagsterRunStatus.STARTED
    assert instance.get_run_by_id(runs["unknown"]).status == dg.DagsterRunStatus.STARTED

"""`mira run` on an instance whose daemon is running launches nothing itself: the daemon's automation runs every
step (through the run queue), `mira run` asks it to retry incomplete work and follows its runs. A real
`dagster-daemon run`, started by `mira run --daemon`; a source whose file went missing fails, waits (the daemon does
not retry it at every tick), and is retried when `mira run` asks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.e2e.test_commands import BIN, user_env
from tests.e2e.test_fresh_clone import open_instance

pytestmark = pytest.mark.e2e
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@pytest.fixture
def daemon_project(small_config: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A project folder with the small registry; the daemon a `mira run --daemon` there starts is stopped after."""
    tmp_path = small_config.parent
    env = {**user_env(tmp_path), "MIRA_CONFIG": str(small_config), "MIRA_HOME": str(tmp_path / ".mira")}
    try:
        yield tmp_path, env
    finally:
        pid_file = tmp_path / ".mira" / "dagster" / "daemon.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    os.kill(pid, 0)  # raises once it is gone
                    time.sleep(1)
                os.killpg(pid, signal.SIGKILL)


def _runs(project: Path) -> list[dg.DagsterRun]:
    with open_instance(project / ".mira" / "dagster") as inst:
        return list(inst.get_runs())


def _mira_run(project: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [BIN / "mira", "run", *flags]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)


def test_mira_run_hands_the_work_to_the_running_daemon(daemon_project: tuple[Path, dict[str, str]]) -> None:
    project, env = daemon_project
    first = _mira_run(project, env, "--daemon")  # starts the daemon, which stays; later `mira run`s find it
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "mira: started the Dagster daemon (pid" in first.stdout
    assert "the Dagster daemon of this instance runs the work" in first.stdout
    assert "| TOTAL " in first.stdout
    runs = _runs(project)
    assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    # every run was launched by the daemon's automation sensor, through the queue; none in mira's own process
    assert all("mira/entry" not in r.tags for r in runs), [r.tags for r in runs]
    assert {r.tags.get("dagster/sensor_name") for r in runs} == {"default_automation_condition_sensor"}
    assert {a.to_user_string() for r in runs for a in r.asset_selection or ()} >= {"raw_records", "selection_report"}
    chosen = [{a.to_user_string() for a in r.asset_selection or ()} for r in runs]
    assert all("teacher_judgments" in c for c in chosen if "anchor_rubric" in c), chosen  # a stage's steps: one run
    # no asset partition ran twice (a run ending while the sensor evaluated once looked stale and not in progress)
    twice = Counter((a, r.tags.get("dagster/partition")) for r, c in zip(runs, chosen, strict=True) for a in c)
    assert set(twice.values()) == {1}, twice
    with duckdb.connect(str(project / ".mira" / "mira.duckdb"), read_only=True) as con:
        lean = con.execute("SELECT count(*) FROM raw_records WHERE source = 'lean_qa'").fetchone()[0]
        assert con.execute("SELECT count(*) FROM selected_subset").fetchone()[0] > 0

    # a new line in lean_qa's file, and the file gone: the daemon's ingest fails and then waits
    data = project / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    record = json.loads(data.read_text(encoding="utf-8").splitlines()[0])
    record["formal_proof"] += "\n  -- a new record"
    with data.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    away = data.with_suffix(".away")
    data.rename(away)
    before = {r.run_id for r in runs}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        failed = [r for r in _runs(project) if r.run_id not in before and r.status == dg.DagsterRunStatus.FAILURE]
        if failed:
            break
        time.sleep(3)
    assert failed, "the daemon did not try the changed source"
    assert failed[0].tags.get("dagster/partition") == "lean_qa"

    # `mira run` asks for a retry: the daemon tries again, fails again; mira run says so and exits 1
    again = _mira_run(project, env)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "mira: FAILED lean_qa" in again.stderr and data.name in again.stderr, again.stderr[-3000:]

    # the file back (its mtime older than the failure): the daemon waits, it does not retry at every tick
    away.rename(data)
    seen = {r.run_id for r in _runs(project)}
    time.sleep(20)  # four ticks of the automation sensor
    assert {r.run_id for r in _runs(project)} == seen

    # `mira run` asks again: the daemon retries the ingest and follows it through to the selection
    last = _mira_run(project, env)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    new = [r for r in _runs(project) if r.run_id not in seen]
    assert new and {r.status for r in new} == {dg.DagsterRunStatus.SUCCESS}
    assert any("selection_report" in {a.to_user_string() for a in r.asset_selection or ()} for r in new)
    with duckdb.connect(str(project / ".mira" / "mira.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw_records WHERE source = 'lean_qa'").fetchone()[0] == lean + 1

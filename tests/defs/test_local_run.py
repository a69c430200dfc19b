"""`mira run` without a daemon (local_run.py): Dagster's automation evaluator decides what runs, as the daemon's
sensor does; --source scopes the conditions; what they leave stale is never reported as success."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.cli import main
from mira_dagster.defs.automation import refresh_sources_job
from mira_dagster.defs.freshness import Evaluation, local
from mira_dagster.defs.resources import MiraResource


@pytest.fixture
def project(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The variables `mira run` sets (restored after the test), a DAGSTER_HOME of the test's own."""
    for var in ("MIRA_CONFIG", "MIRA_HOME"):
        monkeypatch.setenv(var, "unset")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return small_config, tmp_path / "home"


def _done(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> bool:
    """Whether asset[partition] was materialised."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return bool(records)


def _ran_then_lean_qa_edited_and_held(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str], status: dg.DagsterRunStatus, tags: dict[str, str]
) -> dg.DagsterRun:
    """A whole run; then lean_qa's file edited (stale) and a refresh_sources run of raw_records[agent_openhands] in
    the instance with this status and tags, which holds back everything that reads both sources."""
    config, home = project
    assert main(["run", "--config", str(config), "--home", str(home)]) == 0
    capsys.readouterr()
    (config.parent / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl").open("a").write("\n")
    mira = MiraResource(config_path=str(config), home=str(home))
    with dg.DagsterInstance.get() as instance:
        defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
        return instance.create_run_for_job(
            defs.resolve_job_def("refresh_sources"),
            status=status,
            tags={"dagster/partition": "agent_openhands", **tags},
            asset_selection=frozenset({dg.AssetKey("raw_records")}),
        )


def test_a_scoped_run_runs_its_sources_alone_and_the_rest_stays_stale(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--source lean_qa` on a fresh instance: lean_qa's partitions, its unit and the unpartitioned assets run;
    agent_openhands (never ingested) holds nothing back and is not run; a plain run then does it."""
    config, home = project
    assert main(["run", "--config", str(config), "--home", str(home), "--source", "lean_qa"]) == 0, capsys.readouterr()
    capsys.readouterr()
    with dg.DagsterInstance.get() as instance:
        assert not _done(instance, "raw_records", "agent_openhands")
        unit = MiraResource(config_path=str(config), home=str(home)).config().unit_of("lean_qa").key
        for asset, partition in [("raw_records", "lean_qa"), ("student_scores", "lean_qa"), ("source_groups", None)]:
            assert _done(instance, asset, partition), (asset, partition)
        assert _done(instance, "anchor_rubric", unit) and _done(instance, "selection_report")
        mira = MiraResource(config_path=str(config), home=str(home))
        with local(None):
            assert Evaluation(instance, mira, retry=False).reason("raw_records", "agent_openhands") is not None
        with local(["lean_qa"]):
            assert Evaluation(instance, mira, retry=False).reason("raw_records", "agent_openhands") is None
    assert main(["run", "--config", str(config), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "ingest: 1 run, ok" in out, out
    with dg.DagsterInstance.get() as instance:
        assert _done(instance, "raw_records", "agent_openhands") and _done(
            instance, "student_scores", "agent_openhands"
        )


def test_work_held_by_a_run_nothing_launches_fails_the_command(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A run created and never launched (as one queued for a daemon that is not running) holds everything downstream
    of it: the conditions request nothing more, and the command says what stayed stale and why, with exit code 1,
    instead of a success."""
    config, home = project
    _ran_then_lean_qa_edited_and_held(project, capsys, dg.DagsterRunStatus.NOT_STARTED, {})
    code = main(["run", "--config", str(config), "--home", str(home)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "mira: FAILED source_groups: " in err and "in progress upstream" in err, err


def test_a_run_of_another_machine_in_progress_upstream_is_waited_for(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A run another machine is executing upstream holds the rest: the command says it waits for it, waits, and
    goes on when it ends."""
    import threading
    import time

    config, home = project
    foreign = {"mira/host": "machine-2", "mira/pid": "1"}
    run = _ran_then_lean_qa_edited_and_held(project, capsys, dg.DagsterRunStatus.STARTED, foreign)

    def end_it() -> None:
        time.sleep(6)
        with dg.DagsterInstance.get() as other:
            other.report_run_canceled(other.get_run_by_id(run.run_id))

    ender = threading.Thread(target=end_it)
    ender.start()
    try:
        code = main(["run", "--config", str(config), "--home", str(home)])
    finally:
        ender.join()
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"mira: waiting for run {run.run_id[:8]} of machine-2, in progress" in out.out, out.out
    assert "grouping: 1 run, ok" in out.out  # after the wait: the source's change followed through


def test_a_run_of_another_machine_that_stopped_beating_is_failed_and_redone(
    project: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The machine running it died: its heartbeat stops changing. After SILENT_BEATS beats (watched on this
    machine's clock) the command marks that run failed, says so, and the source is ingested again here."""
    import threading

    from mira_dagster import local_run

    config, home = project
    every = 0.5  # the dead machine said it beats every half second: silent for 5 s here means dead
    foreign = {"mira/host": "machine-2", "mira/pid": "1", local_run.HEARTBEAT_EVERY_TAG: str(every)}
    foreign[local_run.HEARTBEAT_TAG] = "2026-12-07T09:00:00+00:00"
    run = _ran_then_lean_qa_edited_and_held(project, capsys, dg.DagsterRunStatus.STARTED, foreign)

    def backstop() -> None:  # without the heartbeat check the command would wait for ever: end it, and fail below
        if not stop.wait(90):
            with dg.DagsterInstance.get() as other:
                other.report_run_canceled(other.get_run_by_id(run.run_id))

    stop = threading.Event()
    ender = threading.Thread(target=backstop)
    ender.start()
    try:
        code = main(["run", "--config", str(config), "--home", str(home)])
    finally:
        stop.set()
        ender.join()
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"mira: waiting for run {run.run_id[:8]} of machine-2, in progress" in out.out, out.out
    assert f"mira: run {run.run_id[:8]} marked failed: its `mira run` on machine-2 sent no heartbeat" in out.out
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert "ingest: " in out.out and "grouping: 1 run, ok" in out.out, out.out


def test_a_mira_run_beats_on_its_executing_runs(project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the waiting machine watches: this process's executing runs get a fresh heartbeat tag, others none."""
    import os
    import socket
    import time

    from mira_dagster import local_run

    monkeypatch.setattr(local_run, "HEARTBEAT_S", 0.2)
    mine = {"mira/pid": str(os.getpid()), "mira/host": socket.gethostname()}
    with dg.DagsterInstance.ephemeral() as instance:
        job = dg.GraphDefinition(name="nothing", node_defs=[]).to_job()
        ours = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags=mine)
        theirs = instance.create_run_for_job(
            job, status=dg.DagsterRunStatus.STARTED, tags={**mine, "mira/host": "machine-2"}
        )
        with local_run.Heartbeat(instance, mine):
            time.sleep(1.0)
        first = instance.get_run_by_id(ours.run_id).tags.get(local_run.HEARTBEAT_TAG)
        assert first is not None
        assert local_run.HEARTBEAT_TAG not in instance.get_run_by_id(theirs.run_id).tags

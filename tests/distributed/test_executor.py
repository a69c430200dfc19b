"""The project's job on a distributed executor: refresh_sources with MIRA_EXECUTOR=celery, two source partitions
(two runs of `dagster job execute`, in their own processes, at once) whose steps run on two Celery worker processes
(`celery -A mira_dagster.worker worker`), then an asset materialised with `dagster asset materialize` on them too
(the executor is the code location's), Redis the broker, the instance on PostgreSQL; every server and worker is
started here on loopback and stopped by its process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from tests.distributed.servers import PostgresServer, RedisServer, celery_workers, stop_group
from tests.helpers import run_ok

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
BIN = Path(sys.executable).parent
SOURCES = ("lean_qa", "agent_openhands")  # the small registry's two sources, one per scorer group
STEPS = {"raw_records", "teacher_labels", "student_scores"}


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker (its -n name) that executed it, from the run's engine events."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.engine_event_data if event else None
        if event and data and "Celery worker" in (data.metadata or {}):
            found[event.step_key] = str(data.metadata["Celery worker"].value).split("@")[0]
    return found


def test_refresh_sources_partitions_run_on_two_celery_workers(
    postgres: PostgresServer,
    redis: RedisServer,
    small_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the `distributed` extra)")
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (the `distributed` extra)")
    postgres.create_database("executor")
    mira_home, dagster_home = tmp_path / "mira", tmp_path / "dagster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "VIRTUAL_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MIRA_CONFIG=str(small_config),
        MIRA_HOME=str(mira_home),
        DAGSTER_HOME=str(dagster_home),
        # Dagster's own commands read the URL as written (dagster-postgres.yaml): name the psycopg2 driver
        MIRA_DAGSTER_PG_URL=f"postgresql+psycopg2://{postgres.user}@127.0.0.1:{postgres.port}/executor",
        MIRA_EXECUTOR="celery",
        MIRA_CELERY_BROKER=redis.url(),
        DAGSTER_MODULE_NAME="mira_dagster.definitions",  # what a project's .env names (mira_dagster/project.py)
    )
    # the instance as `mira init` / `make setup` leave it: the project's PostgreSQL settings, schema and pools
    setup = [BIN / "python", "-c", "from mira_dagster.instance import ensure_instance; ensure_instance()"]
    run_ok(setup, env, tmp_path, 300)
    started = time.monotonic()
    runs: list[subprocess.Popen] = []
    with celery_workers(redis.url(), ["w1", "w2"], env, tmp_path, app="mira_dagster.worker") as workers:
        ready = time.monotonic()
        try:
            for source in SOURCES:  # two runs at once, each its own process, as the daemon would launch them
                log = (tmp_path / f"run-{source}.log").open("w")
                runs.append(
                    subprocess.Popen(
                        [
                            BIN / "dagster",
                            "job",
                            "execute",
                            "-j",
                            "refresh_sources",
                            "--tags",
                            json.dumps({"dagster/partition": source}),
                        ],
                        env=env,
                        cwd=tmp_path,  # a folder without a .env: the environment above is the project's
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            for source, proc in zip(SOURCES, runs, strict=True):
                code = proc.wait(timeout=900)
                assert code == 0, (tmp_path / f"run-{source}.log").read_text()[-4000:]
            # an asset materialised from the CLI (as from the UI) goes to the workers too: the executor is the
            # code location's, not only refresh_sources'
            run_ok([BIN / "dagster", "asset", "materialize", "--select", "source_groups"], env, tmp_path, 600)
        finally:
            for proc in runs:
                stop_group(proc)
        done = time.monotonic()
        pids = [w.proc.pid for w in workers]
        logs = {w.name: w.log for w in workers}
    # every worker and every run process is gone, with its children
    assert not any(_alive(pid) for pid in pids + [p.pid for p in runs])

    monkeypatch.setenv("MIRA_DAGSTER_PG_URL", postgres.url("executor"))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name="refresh_sources"))
        by_partition = {r.dagster_run.tags["dagster/partition"]: r.dagster_run for r in records}
        assert set(by_partition) == set(SOURCES)
        used: list[str] = []
        for source, run in by_partition.items():
            assert run.status == dg.DagsterRunStatus.SUCCESS, source
            steps = _step_workers(instance, run.run_id)
            assert set(steps) == STEPS, (source, steps)  # every step of the partition ran on a Celery worker
            used += steps.values()
            for table in ("raw_records", "teacher_labels", "student_scores"):
                assert source in instance.get_materialized_partitions(dg.AssetKey(table)), (source, table)
        assert set(used) == {"w1", "w2"}, used  # the two partitions' steps were shared by the two workers
        (asset_run,) = instance.get_run_records(dg.RunsFilter(job_name="__ASSET_JOB"))
        assert asset_run.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        assert set(_step_workers(instance, asset_run.dagster_run.run_id)) == {"source_groups"}

    # the tables are written, where every worker and the runs read them
    from mira_dagster.settings import Settings

    store = Settings.from_env(env).store()
    for source in SOURCES:
        assert store.read("raw_records", source).height > 0
        assert store.read("student_scores", source).height == store.read("raw_records", source).height
    for name, log in logs.items():
        assert "succeeded in" in log.read_text(errors="replace"), name  # Celery's line for a finished task
    print(
        f"celery executor: workers ready in {ready - started:.1f} s, refresh_sources of {len(SOURCES)} partitions "
        f"on 2 workers in {done - ready:.1f} s; steps per worker: {dict(Counter(used))}"
    )

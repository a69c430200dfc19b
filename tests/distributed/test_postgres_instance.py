"""The Dagster instance on PostgreSQL (MIRA_DAGSTER_PG_URL, the shipped dagster-postgres.yaml): `mira run` and Dagster's
own commands against a throwaway PostgreSQL, the instance set up once for every machine with the project's run
queue, per-group limit and pools (mira_dagster/instance.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster.core.config import ConfigError
from mira_dagster.instance import POOLS, POSTGRES_SETTINGS, ensure_instance
from mira_dagster.package_data import DAGSTER_YAML
from mira_dagster.settings import Deployment
from tests.distributed.servers import PostgresServer
from tests.helpers import run_ok

BIN = Path(sys.executable).parent
distributed = [pytest.mark.distributed, pytest.mark.slow]


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no MIRA_* or DAGSTER_* but those given, the venv's commands on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_", "VIRTUAL_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def bare_url(postgres: PostgresServer, db: str) -> str:
    """What a user writes: no driver (the bootstrap names psycopg2)."""
    return f"postgresql://{postgres.user}@127.0.0.1:{postgres.port}/{db}"


def open_instance(home: Path, postgres: PostgresServer, db: str, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    monkeypatch.setenv("MIRA_DAGSTER_PG_URL", postgres.url(db))
    return dg.DagsterInstance.from_config(str(home))


def test_the_deployment_settings() -> None:
    deploy = Deployment.from_env({"MIRA_DAGSTER_PG_URL": "postgresql://dagster:s3cret@db:5432/dagster"})
    assert deploy.pg_url() == "postgresql+psycopg2://dagster:s3cret@db:5432/dagster"
    assert "s3cret" not in repr(deploy) and deploy.executor == "multiprocess"
    assert Deployment.from_env({"MIRA_DAGSTER_PG_URL": "postgres://u@h/d"}).pg_url() == "postgresql+psycopg2://u@h/d"
    given = "postgresql+pg8000://u@h/d"  # a driver named is kept
    assert Deployment.from_env({"MIRA_DAGSTER_PG_URL": given}).pg_url() == given
    assert Deployment.from_env({}).pg_url() is None
    celery = Deployment.from_env({"MIRA_EXECUTOR": "celery", "MIRA_CELERY_BROKER": "redis://:pw@r:6379/0"})
    assert celery.executor == "celery" and "pw" not in repr(celery)
    with pytest.raises(ConfigError, match="MIRA_CELERY_BROKER"):
        Deployment.from_env({"MIRA_EXECUTOR": "celery"})
    with pytest.raises(ConfigError, match="one of multiprocess, in_process, celery"):
        Deployment.from_env({"MIRA_EXECUTOR": "k8s"})


def test_the_pools_set_up_are_the_assets_pools() -> None:
    from mira_dagster.definitions import ALL_ASSETS

    assert {a.op.pool for a in ALL_ASSETS if a.op.pool} == set(POOLS)


def test_an_instance_folder_on_sqlite_is_not_silently_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An untouched SQLite dagster.yaml gives way to the PostgreSQL one; an edited one is refused, not used."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_bytes(DAGSTER_YAML.read_bytes() + b"# edited\n")
    monkeypatch.setenv("MIRA_DAGSTER_PG_URL", "postgresql://u@127.0.0.1:9/none")
    with pytest.raises(ConfigError, match="storage: postgres"):
        ensure_instance(home)
    monkeypatch.delenv("MIRA_DAGSTER_PG_URL")
    (home / "dagster.yaml").write_bytes(POSTGRES_SETTINGS.read_bytes())
    with pytest.raises(ConfigError, match="set MIRA_DAGSTER_PG_URL"):
        ensure_instance(home)


@pytest.mark.distributed
@pytest.mark.slow
def test_first_commands_of_two_machines_set_the_instance_up_once(postgres: PostgresServer, tmp_path: Path) -> None:
    """Two machines (two instance folders) set up one database at the same time: the schema and the pools once,
    under the database's advisory lock; the untouched SQLite dagster.yaml of one gives way to the PostgreSQL one."""
    postgres.create_database("two_machines")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "dagster.yaml").write_bytes(DAGSTER_YAML.read_bytes())

    def setup(name: str) -> subprocess.CompletedProcess:
        env = plain_env(DAGSTER_HOME=str(tmp_path / name), MIRA_DAGSTER_PG_URL=bare_url(postgres, "two_machines"))
        cmd = [sys.executable, "-m", "mira_dagster.instance"]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(setup, ["a", "b"]))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    for name in ("a", "b"):
        assert (tmp_path / name / "dagster.yaml").read_bytes() == POSTGRES_SETTINGS.read_bytes()
        assert not list((tmp_path / name).rglob("*.db"))  # no SQLite storage was created
    limits = postgres.psql('SELECT concurrency_key, "limit" FROM concurrency_limits ORDER BY 1', db="two_machines")
    assert limits.split() == ["student|2", "teacher|2"]


@pytest.mark.distributed
@pytest.mark.slow
def test_mira_run_on_postgres(
    postgres: PostgresServer, small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mira run --source lean_qa` with MIRA_DAGSTER_PG_URL: its runs and materialisations are in PostgreSQL, the
    instance folder holds no storage, and `dagster instance info` shows the PostgreSQL storages, the run queue,
    the per-group limit and the pools."""
    postgres.create_database("mira_run")
    home = tmp_path / "dagster"
    env = plain_env(
        MIRA_CONFIG=str(small_config),
        MIRA_HOME=str(tmp_path / "mira"),
        DAGSTER_HOME=str(home),
        MIRA_DAGSTER_PG_URL=bare_url(postgres, "mira_run"),
    )
    started = time.monotonic()
    run_ok([BIN / "mira", "run", "--source", "lean_qa"], env, tmp_path, 900)
    took = time.monotonic() - started
    assert (home / "dagster.yaml").read_bytes() == POSTGRES_SETTINGS.read_bytes()
    assert not list(home.rglob("*.db"))

    with open_instance(home, postgres, "mira_run", monkeypatch) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"  # the project's run queue
        runs = instance.get_runs()
        assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert instance.get_materialized_partitions(dg.AssetKey("raw_records")) == {"lean_qa"}
        assert instance.get_materialized_partitions(dg.AssetKey("student_scores")) == {"lean_qa"}
        assert instance.get_latest_materialization_event(dg.AssetKey("selection_report")) is not None
        assert {"student", "teacher"} <= instance.event_log_storage.get_concurrency_keys()
        assert instance.event_log_storage.get_concurrency_info("student").slot_count == 2
        n_runs = len(runs)
    # ... and they are rows of PostgreSQL's tables, what every other machine reads
    assert postgres.psql("SELECT count(*) FROM runs", db="mira_run") == str(n_runs)
    materialised = postgres.psql(
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'", db="mira_run"
    )
    assert int(materialised) >= 3

    # Dagster's own command in a plain shell reads the URL as written (dagster-postgres.yaml): the psycopg2 driver named
    env = {
        **env,
        "MIRA_DAGSTER_PG_URL": bare_url(postgres, "mira_run").replace("postgresql://", "postgresql+psycopg2://"),
    }
    out = run_ok([BIN / "dagster", "instance", "info"], env, tmp_path)
    for name in ("run_storage: PostgresRunStorage", "event_log_storage: PostgresEventLogStorage"):
        assert name in out, out
    assert "schedule_storage: PostgresScheduleStorage" in out, out
    for setting in ("max_concurrent_runs: 4", "key: mira/scorer_group", "applyLimitPerUniqueValue: true"):
        assert setting in out, out
    assert "default_limit: 2" in out, out
    pools = run_ok([BIN / "dagster", "instance", "concurrency", "get", "--all"], env, tmp_path)
    assert "student" in pools and "teacher" in pools, pools
    print(f"mira run --source lean_qa on PostgreSQL: {took:.1f} s, {n_runs} runs")

"""The loopback servers of the distributed tests, each proven on its own: a Dagster instance on PostgreSQL with the
project's run queue and pools, Redis, moto's S3 with conditional writes, and the Celery executor of dagster-celery
(on a toy code location, tests/distributed/toy_defs.py) running one partition's steps on two worker processes and
moving a step to the other worker when its worker is killed. The project's own job on them: test_executor.py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.instance import POSTGRES_SETTINGS
from tests.distributed.servers import PostgresServer, RedisServer, S3Server, celery_workers

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

POSTGRES_YAML = POSTGRES_SETTINGS


def _pg_instance(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str) -> Path:
    """DAGSTER_HOME with the shipped dagster-postgres.yaml, its database a new one on the server."""
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed (the `distributed` extra)")
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(POSTGRES_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MIRA_DAGSTER_PG_URL", postgres.create_database(db))
    return home


def _celery_env(
    postgres: PostgresServer, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str, **extra: str
) -> dict[str, str]:
    """The environment of the toy code location's runs and workers (set here too): the instance on PostgreSQL
    (database `db`), Redis the broker, the toy assets writing under tmp_path/out."""
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (the `distributed` extra)")
    home = _pg_instance(postgres, tmp_path, monkeypatch, db)
    env = {
        "DAGSTER_HOME": str(home),
        "MIRA_DAGSTER_PG_URL": postgres.url(db),
        "MIRA_CELERY_BROKER": redis.url(),
        "MIRA_TOY_OUT": str(tmp_path / "out"),
        "PYTHONPATH": str(PROJECT_ROOT),
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_postgres_instance(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pg_instance(postgres, tmp_path, monkeypatch, "instance_test")

    @dg.asset(pool="student")
    def scored() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"  # the project's run queue
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2  # the project's pools
        assert dg.materialize([scored], instance=instance).success
    # a second process-like instance (another machine) sees the run and the materialisation in PostgreSQL
    with dg.DagsterInstance.get() as other:
        runs = other.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        assert other.get_latest_materialization_event(dg.AssetKey("scored")) is not None
    assert postgres.psql("SELECT count(*) FROM runs", db="instance_test") == "1"


def test_redis(redis: RedisServer) -> None:
    assert redis.ping()
    assert redis.url().startswith("redis://127.0.0.1:")


def test_s3_conditional_writes(s3: S3Server) -> None:
    """What a two-writer reply cache on object storage relies on: a create-only PUT fails on an existing key."""
    s3.create_bucket("mira-test")
    fs = s3.filesystem()
    fs.pipe_file("mira-test/manifest.json", b"1", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file("mira-test/manifest.json", b"2", mode="create")
    assert fs.cat_file("mira-test/manifest.json") == b"1"
    # compare-and-swap on the ETag: the write of a stale reader is refused
    etag = fs.info("mira-test/manifest.json")["ETag"]
    fs.call_s3("put_object", Bucket="mira-test", Key="manifest.json", Body=b"3", IfMatch=etag)
    with pytest.raises(Exception, match="PreconditionFailed|pre-conditions"):
        fs.call_s3("put_object", Bucket="mira-test", Key="manifest.json", Body=b"4", IfMatch=etag)
    assert fs.cat_file("mira-test/manifest.json") == b"3"


def test_celery_executor_two_workers(
    postgres: PostgresServer, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One partition's two independent steps run at once on two Celery worker processes, the instance on
    PostgreSQL shared by the run (this process) and the workers, Redis the broker and result backend."""
    env = _celery_env(postgres, redis, tmp_path, monkeypatch, "celery_test")
    out = tmp_path / "out"

    started = time.monotonic()
    with celery_workers(redis.url(), ["w1", "w2"], env, tmp_path) as workers:
        ready = time.monotonic()
        recon = dg.build_reconstructable_job(
            "tests.distributed.toy_defs", "job", ("toy_celery",), reconstructor_working_directory=str(PROJECT_ROOT)
        )
        with dg.DagsterInstance.get() as instance:
            # p1 under the project's pool limit (default_limit 2), p2 with the pool `toy` set to 1 slot
            for partition, slots in (("p1", None), ("p2", 1)):
                if slots:
                    instance.event_log_storage.set_concurrency_slots("toy", slots)
                with dg.execute_job(recon, instance, tags={"dagster/partition": partition}) as result:
                    assert result.success, partition
            done = time.monotonic()
            ran = {path.name: path.read_text().split() for path in out.iterdir()}
            assert set(ran) == {"left-p1", "right-p1", "left-p2", "right-p2"}
            assert {worker.split("@")[0] for worker in _celery_hosts(instance)} == {w.name for w in workers}

    def overlap(a: list[str], b: list[str]) -> bool:
        return float(a[1]) < float(b[2]) and float(b[1]) < float(a[2])

    assert ran["left-p1"][0] != ran["right-p1"][0] and overlap(ran["left-p1"], ran["right-p1"])  # both workers
    assert not overlap(ran["left-p2"], ran["right-p2"])  # the pool's one slot: one step at a time across workers
    print(f"celery: workers ready in {ready - started:.1f} s, 2 runs of 2 steps in {done - ready:.1f} s")


def _celery_hosts(instance: dg.DagsterInstance) -> set[str]:
    """The Celery workers that reported executing a step, from the engine events in the event log."""
    hosts = set()
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            data = entry.dagster_event.engine_event_data if entry.dagster_event else None
            if data and "Celery worker" in (data.metadata or {}):
                hosts.add(str(data.metadata["Celery worker"].value))
    return hosts


def test_celery_step_moves_to_the_other_worker_when_its_worker_dies(
    postgres: PostgresServer, redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the worker (main process and pool) running a step: the broker hands the unacknowledged task to the
    other worker once the visibility timeout has passed, and the run still succeeds."""
    import threading

    env = _celery_env(
        postgres, redis, tmp_path, monkeypatch, "celery_kill_test", MIRA_CELERY_VISIBILITY_S="5", MIRA_TOY_SLOW="8"
    )
    out = tmp_path / "out"

    with celery_workers(redis.url(), ["w1", "w2"], env, tmp_path, visibility_timeout_s=5) as workers:
        recon = dg.build_reconstructable_job(
            "tests.distributed.toy_defs", "job", ("toy_slow",), reconstructor_working_directory=str(PROJECT_ROOT)
        )
        outcome: dict = {}

        def run() -> None:
            with (
                dg.DagsterInstance.get() as instance,
                dg.execute_job(recon, instance, tags={"dagster/partition": "p1"}) as result,
            ):
                outcome["success"] = result.success

        thread = threading.Thread(target=run, daemon=True)
        started = time.monotonic()
        thread.start()
        deadline = time.monotonic() + 60
        while not (out.exists() and any(out.glob("*.started"))):
            assert time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        first = next(out.glob("*.started")).name.removesuffix(".started")
        victim = next(w for w in workers if w.name == first)
        victim.kill()
        killed = time.monotonic()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the run did not finish after its worker was killed"
        other = next(w.name for w in workers if w.name != first)
        assert outcome.get("success") is True
        assert (out / "slow-p1").read_text() == other
        moved = time.monotonic() - killed
        print(f"killed {first} {killed - started:.1f} s in; the run finished on {other} {moved:.1f} s later")


def test_postgres_first_claim_of_a_pool_races(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Canary of a dagster-postgres 0.29.27 race: two runs that first claim a pool at once both INSERT its default
    limit; the loser catches the IntegrityError inside the same transaction, which PostgreSQL has aborted, and its
    run fails (InFailedSqlTransaction; seen with two refresh_sources runs launched together). Hence every pool of
    the code location is initialised once, serially, when the instance is set up; then concurrent claims are safe.
    When this canary fails, Dagster fixed the race and the set-up step may go."""
    import threading

    _pg_instance(postgres, tmp_path, monkeypatch, "pool_race_test")
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage

        def together(call, key: str) -> list[str]:  # noqa: ANN001
            barrier, errors = threading.Barrier(2), []

            def one(i: int) -> None:
                barrier.wait()
                try:
                    call(key, i)
                except Exception as exc:  # the loser's error, whatever its class
                    errors.append(type(exc).__name__)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            return errors

        def initialise(key: str, _i: int) -> None:  # what a step's first claim of an unknown pool does
            storage.initialize_concurrency_limit_to_default(key)

        def claim(key: str, i: int) -> None:  # what it does once the pool exists
            assert storage.claim_concurrency_slot(key, f"run{i}", "step").is_claimed

        assert any(together(initialise, f"fresh{i}") for i in range(5))  # racing on a pool nobody set up
        storage.initialize_concurrency_limit_to_default("student")  # the set-up step, once
        assert not together(claim, "student")
        assert storage.get_concurrency_info("student").slot_count == 2  # dagster.yaml's default_limit

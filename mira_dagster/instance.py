"""The project's Dagster instance: where it is, and making it ready before any command uses it.

`mira init` and `make setup` make it (the project's dagster.yaml in DAGSTER_HOME, the storage created once), and
`mira run` checks it at every start. Dagster's own commands (`dagster dev`, `dagster asset materialize`, ...) find it
through the project's `.env`, which Dagster's CLI loads from the working folder (mira_dagster/project.py writes it);
nothing runs at interpreter start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

from mira_dagster.core.config import ConfigError
from mira_dagster.package_data import DAGSTER_YAML, POSTGRES_YAML

CODE_LOCATION = "mira_dagster.definitions"
READY = ".mira-instance-ready"  # written once the storage's schema exists
LOCK = ".mira-instance.lock"
POSTGRES_SETTINGS = POSTGRES_YAML
# the pools of the assets (`pool=`), set up once on PostgreSQL: dagster-postgres 0.29 fails one of two runs that
# first claim a pool at the same time (tests/distributed/test_servers.py::test_postgres_first_claim_of_a_pool_races)
POOLS = ("student", "teacher")
PG_LOCK_KEY = 0x6D697261  # pg_advisory_lock key of the schema's creation ("mira")


def dagster_home() -> Path:
    """The instance folder: DAGSTER_HOME when set, else `<MIRA_HOME>/dagster` (what `mira run` uses)."""
    explicit = os.environ.get("DAGSTER_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    from mira_dagster.settings import mira_home

    return (Path(mira_home()) / "dagster").resolve()


def ensure_instance(home: Path | None = None) -> Path:
    """Make `home` (default `dagster_home()`) a ready Dagster instance: the folder, the project's dagster.yaml when
    it has none (an edited copy is kept; delete it to take the project's again), and the storage's schema. The
    schema is created once, under a file lock: Dagster's SQLite storages race on a fresh folder ("alembic_version
    has more than one head") when several processes open it first at the same time. Returns the folder."""
    home = Path(home or dagster_home()).resolve()
    if {"?", "#"} & set(str(home)):
        # Dagster opens its SQLite storage through a URL, where these start a query or a fragment
        raise ConfigError(
            f"DAGSTER_HOME {home} contains '?' or '#', which Dagster's SQLite storage cannot open; "
            "set DAGSTER_HOME to a folder without them (MIRA_HOME itself may keep them)"
        )
    home.mkdir(parents=True, exist_ok=True)
    pg_url = use_postgres()
    _copy_settings(home, pg_url is not None)
    ready = home / (READY if pg_url is None else f"{READY}-pg-{hashlib.sha256(pg_url.encode()).hexdigest()[:12]}")
    if ready.exists():
        return home
    import fcntl

    with open(home / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            if pg_url is None:
                _create_storage(home)
            else:
                _create_pg_storage(home, pg_url)
            ready.touch()
    return home


def use_postgres() -> str | None:
    """With MIRA_DAGSTER_PG_URL set: its psycopg2 form (settings.Deployment.pg_url) put back into the environment,
    where docs/dagster-postgres.yaml's `env:` reads it, in this process and the ones it starts; returned. None
    without it (the instance on SQLite in DAGSTER_HOME)."""
    from mira_dagster.settings import DEPLOY_VARS, Deployment

    url = Deployment.from_env().pg_url()
    if url:
        os.environ[DEPLOY_VARS["dagster_pg_url"]] = url
    return url


def _storage_kind(path: Path) -> str | None:
    import yaml

    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        storage = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("storage") or {}
        return "postgres" if "postgres" in storage else next(iter(storage), None)
    return None


def _copy_settings(home: Path, postgres: bool = False) -> None:
    """The project's dagster.yaml (docs/dagster-postgres.yaml with `postgres`) into `home` when it has none. An
    untouched copy of the SQLite one gives way to the PostgreSQL one; any other file is kept, but one whose storage
    disagrees with MIRA_DAGSTER_PG_URL (set or not) is refused rather than silently used."""
    target = home / "dagster.yaml"
    source = POSTGRES_SETTINGS if postgres else DAGSTER_YAML
    if target.exists():
        on_pg = _storage_kind(target) == "postgres"
        if postgres and not on_pg:
            if target.read_bytes() != (DAGSTER_YAML).read_bytes():
                raise ConfigError(
                    f"MIRA_DAGSTER_PG_URL is set but {target} keeps the instance elsewhere (an edited copy): "
                    f"give it `storage: postgres` (as in {POSTGRES_SETTINGS}) or delete it"
                )
            _replace(target, source)
        elif not postgres and on_pg and "MIRA_DAGSTER_PG_URL" in target.read_text(encoding="utf-8"):
            raise ConfigError(f"{target} keeps the instance on PostgreSQL: set MIRA_DAGSTER_PG_URL")
        return
    tmp = home / f".dagster.yaml.{os.getpid()}"
    tmp.write_bytes(source.read_bytes())
    try:
        os.link(tmp, target)  # never replaces a file another process put there meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _replace(target: Path, source: Path) -> None:
    tmp = target.with_name(f".dagster.yaml.{os.getpid()}")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, target)


def _create_storage(home: Path, pools: tuple[str, ...] = ()) -> None:
    """Open the instance once and touch each storage, so that every table and index exists; set up `pools` that
    the instance does not have yet (at its default limit; a limit someone set is kept)."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("sources")
        known = instance.event_log_storage.get_concurrency_keys()
        instance.all_instigator_state()
        instance.get_backfills(limit=1)
        for pool in pools:
            if pool not in known:
                instance.event_log_storage.initialize_concurrency_limit_to_default(pool)


def _create_pg_storage(home: Path, url: str) -> None:
    """The schema and the pools on PostgreSQL, once for every machine: under an advisory lock of the database (the
    file lock covers one folder), which dagster-postgres' own creation and the pools' first claims need."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            try:
                _create_storage(home, POOLS)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
    except sa.exc.OperationalError as exc:
        raise ConfigError(f"the Dagster instance's PostgreSQL (MIRA_DAGSTER_PG_URL): {exc.orig}") from None
    finally:
        engine.dispose()


if __name__ == "__main__":  # `python -m mira_dagster.instance` (make setup): the checkout as a project
    from mira_dagster.project import write_env
    from mira_dagster.settings import load_project_env

    root = Path.cwd()
    try:
        load_project_env(write_env(root, root / "anchors" / "groups.yaml").parent)
        print(f"Dagster instance ready: {ensure_instance()}")
    except ConfigError as exc:
        print(f"mira: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

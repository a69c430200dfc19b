"""The project's Dagster instance: where it is, and making it ready before any command uses it.

One bootstrap for every way in: `make setup`, `mira run`, and Dagster's own commands (`dagster dev`, `dagster asset
materialize`, `dagster-daemon run`, ...) started from a checkout with the project's venv. For those, `make setup`
puts `mira_dagster.pth` into the venv: at interpreter start it calls `dagster_cli_defaults()`, which does nothing
unless the process is one of Dagster's console scripts started in a mira-dagster checkout, and then

- sets `DAGSTER_HOME` to `<MIRA_HOME>/dagster` (default `.mira/dagster`) unless it is set: an exported `DAGSTER_HOME`
  (or one in the checkout's `.env`) wins;
- makes the instance ready (`ensure_instance`): the folder, the project's `dagster.yaml` (run queue, per-group run
  limit, pools) and the storage's schema, created once under a file lock so that first commands started together
  do not race on the schema; with `MIRA_DAGSTER_PG_URL` set, docs/dagster-postgres.yaml instead (storage on
  PostgreSQL), its schema created once under a PostgreSQL advisory lock and the project's pools set up;
- gives `dagster asset ...` and `dagster job ...` the code location (`DAGSTER_MODULE_NAME`; Dagster 1.13 reads
  neither workspace.yaml nor [tool.dagster] there, and `dagster dev` must not see that variable), and turns the two
  `dagster asset materialize` calls that cannot work here into one line that says what to run instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

from mira_dagster.core.config import PROJECT_ROOT, ConfigError

CODE_LOCATION = "mira_dagster.definitions"
READY = ".mira-instance-ready"  # written once the storage's schema exists
LOCK = ".mira-instance.lock"
POSTGRES_SETTINGS = PROJECT_ROOT / "docs" / "dagster-postgres.yaml"
# the pools of the assets (`pool=`), set up once on PostgreSQL: dagster-postgres 0.29 fails one of two runs that
# first claim a pool at the same time (tests/distributed/test_servers.py::test_postgres_first_claim_of_a_pool_races)
POOLS = ("student", "teacher")
PG_LOCK_KEY = 0x6D697261  # pg_advisory_lock key of the schema's creation ("mira")
DAGSTER_SCRIPTS = {"dagster", "dagster-daemon", "dagster-webserver", "dg"}
# options of `dagster asset|job` that name a code location themselves
POINTER_OPTIONS = {
    "-m",
    "--module-name",
    "-f",
    "--python-file",
    "--package-name",
    "--autoload-defs-module-name",
    "-w",
    "--workspace",
    "--grpc-port",
    "--grpc-socket",
    "--grpc-host",
}
POINTER_VARS = ("DAGSTER_MODULE_NAME", "DAGSTER_PYTHON_FILE", "DAGSTER_PACKAGE_NAME")
BACKFILL_HINT = (
    "backfill source partitions with `dagster job backfill -j refresh_sources --from <first> --to <last> "
    "--noprompt` (or --partitions a,b,c; one run per partition, run by the daemon of `dagster dev` or "
    "`dagster-daemon run`)"
)


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
    source = POSTGRES_SETTINGS if postgres else PROJECT_ROOT / "dagster.yaml"
    if target.exists():
        on_pg = _storage_kind(target) == "postgres"
        if postgres and not on_pg:
            if target.read_bytes() != (PROJECT_ROOT / "dagster.yaml").read_bytes():
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
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
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


def _is_checkout(folder: Path) -> bool:
    """A mira-dagster checkout (or a copy of its top-level files): its pyproject names our code location."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return CODE_LOCATION in text and "[tool.dagster]" in text


def dagster_cli_defaults(argv: list[str] | None = None) -> None:
    """Called by mira_dagster.pth at interpreter start: see the module's docstring. Never raises."""
    argv = list(sys.orig_argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[1]).name not in DAGSTER_SCRIPTS or not _is_checkout(Path.cwd()):
        return
    try:
        _apply(argv[1:])
    except Exception as exc:  # a broken default must not break Dagster's own command
        print(f"mira: instance set-up skipped: {exc}", file=sys.stderr)


def _apply(args: list[str]) -> None:
    script, rest = Path(args[0]).name, args[1:]
    env_file = _dotenv_home()
    if env_file:
        home = Path(env_file)  # Dagster loads the checkout's .env over the environment
    else:
        home = dagster_home()
        os.environ.setdefault("DAGSTER_HOME", str(home))
    try:
        ensure_instance(home)
    except ConfigError as exc:
        _refuse(str(exc))
    if script != "dagster" or not rest or rest[0] not in ("asset", "job"):
        return
    if {a.split("=", 1)[0] for a in rest} & POINTER_OPTIONS:
        return  # the command names its code location itself
    if any(os.environ.get(v) for v in POINTER_VARS) and os.environ.get("DAGSTER_MODULE_NAME") != CODE_LOCATION:
        return  # ... or the environment does
    os.environ["DAGSTER_MODULE_NAME"] = CODE_LOCATION
    if rest[:2] == ["asset", "materialize"]:
        _check_materialize(rest[2:])


def _dotenv_home() -> str | None:
    if not Path(".env").is_file():
        return None
    from dotenv import dotenv_values

    return dotenv_values(".env").get("DAGSTER_HOME") or None


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _check_materialize(args: list[str]) -> None:
    """The two `dagster asset materialize` calls Dagster 1.13 answers with a traceback here, as one line each."""
    if _option(args, "--partition-range") is not None:
        _refuse(
            "--partition-range runs a range in one run, and the partitioned assets here run one partition per "
            f"run (BackfillPolicy.multi_run(1)); {BACKFILL_HINT}"
        )
    select, partition = _option(args, "--select"), _option(args, "--partition")
    if select is None:
        return
    import dagster as dg

    from mira_dagster.definitions import ALL_ASSETS
    from mira_dagster.settings import load_registry

    with contextlib.suppress(Exception):  # a selection Dagster refuses itself: leave it Dagster's message
        keys = dg.AssetSelection.from_coercible(select.split(",")).resolve(ALL_ASSETS)
        partitions = {k: a.partitions_def for a in ALL_ASSETS for k in a.keys}
        by_def: dict[str, list[str]] = {}
        for key in sorted(keys):
            if partitions.get(key) is not None:
                by_def.setdefault(getattr(partitions[key], "name", None) or "", []).append(key.to_user_string())
        if partition is not None and not by_def:
            _refuse(f"--partition {partition}: none of {select} is partitioned; leave --partition out")
        if partition is None and by_def:
            cfg = load_registry()
            known = {"sources": cfg.source_names(), "scorer_units": list(cfg.scorer_units())}
            name, assets = next(iter(by_def.items()))
            _refuse(
                f"{', '.join(assets)} {'is' if len(assets) == 1 else 'are'} partitioned ({name}): add --partition "
                f"<key> (one of: {', '.join(known.get(name, [])) or 'see the UI'}), or {BACKFILL_HINT}"
            )


def _refuse(message: str) -> None:
    """Print one line and exit 2. This runs while the interpreter starts (site's .pth processing), where a raised
    SystemExit would be reported as a failed site import: leave at once instead."""
    print(f"mira: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


if __name__ == "__main__":  # `python -m mira_dagster.instance` (make setup): the instance of this checkout
    try:
        print(f"Dagster instance ready: {ensure_instance()}")
    except ConfigError as exc:
        print(f"mira: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

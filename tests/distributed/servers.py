"""Throwaway servers on loopback for the distributed tests: PostgreSQL (Debian's server binaries), Redis (Debian's
redis-server), an S3-compatible server (moto's, from the test extra) and Celery workers of dagster-celery.

Each fixture starts its own server on a free loopback port in a fresh temporary folder, skips the test with the
reason and the make target to run when the binary or package is missing, and stops the server and removes its
folder afterwards, whatever the test did. `make servers` installs the system packages on a fresh Debian machine.

Every process here is started in a new session and stopped by its own process group id: never by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "run `make servers` (Debian's postgresql and redis-server)"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on 127.0.0.1:{port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def stop_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group of a process started with start_new_session=True, SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):  # children left behind by a leader that exited
        os.killpg(proc.pid, signal.SIGKILL)


# -- PostgreSQL --------------------------------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (/usr/lib/postgresql/<major>/bin), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class PostgresServer:
    bindir: Path
    folder: Path
    port: int
    user: str = "postgres"  # the database superuser (trust authentication on loopback only)
    run_as: list[str] = field(default_factory=list)  # ["runuser", "-u", "postgres", "--"] when we are root

    def url(self, db: str = "postgres", driver: str = "psycopg2") -> str:
        """A SQLAlchemy URL. The driver is explicit: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which
        dagster-postgres does not install (it depends on psycopg2-binary)."""
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [self.bindir / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", db, "-tAc", sql],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a new temporary folder, on a free loopback port, durability off (fsync, full page
    writes, synchronous commit): about 1 s to initdb and 0.15 s to start on 2 cores. As root, the server runs as
    the `postgres` user that Debian's package creates (initdb refuses root)."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl): {INSTALL_HINT}")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(f"running as root and no `postgres` user to run the server as: {INSTALL_HINT}")
        # util-linux's runuser lives in /usr/sbin, which a plain user's PATH (and `env -i`) may not hold
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
        run_as = [runuser, "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="mira-pg-"))  # not under pytest's tmp_path: 0700 folders of root
    server = None
    try:
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        data = folder / "data"
        subprocess.run(
            [*run_as, bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        options = (
            f"-h 127.0.0.1 -p {port} -k {folder} -F -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=200"
        )
        subprocess.run(
            [
                *run_as,
                bindir / "pg_ctl",
                "-D",
                data,
                "-l",
                folder / "server.log",
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        server = PostgresServer(bindir=bindir, folder=folder, port=port, run_as=run_as)
        yield server
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            subprocess.run(
                [*run_as, bindir / "pg_ctl", "-D", folder / "data", "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL per test session; each test takes its own database (`create_database`)."""
    with postgres_server() as server:
        yield server


# -- Redis -------------------------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Debian's redis-server on a free loopback port, no persistence, in a new temporary folder (about 20 ms)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"no redis-server: {INSTALL_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="mira-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--protected-mode",
            "yes",
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, 30, "redis-server")
        yield RedisServer(port=port, proc=proc)
    finally:
        stop_group(proc)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


# -- S3 (moto) ---------------------------------------------------------------------------------------------------

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint_url: str
    proc: subprocess.Popen

    def filesystem(self):  # noqa: ANN201 (s3fs is an optional import)
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_ENV["AWS_ACCESS_KEY_ID"],
            secret=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": S3_ENV["AWS_DEFAULT_REGION"]},
            use_listings_cache=False,
        )

    def create_bucket(self, name: str) -> str:
        self.filesystem().call_s3("create_bucket", Bucket=name)  # us-east-1: no LocationConstraint
        return f"s3://{name}"

    def env(self) -> dict[str, str]:
        """The variables a process (a second "machine") needs to reach this server."""
        return {**S3_ENV, "MIRA_S3_ENDPOINT_URL": self.endpoint_url}


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server (moto[server], in the test extra) on a free loopback port: about 1 s. It keeps
    objects in memory and honours conditional writes (If-None-Match: *, If-Match: <etag>) with 412."""
    binary = VENV_BIN / "moto_server"
    if not binary.exists():
        pytest.skip("no moto_server in this venv: pip install -e '.[test]' (moto[server])")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc, 60, "moto_server")
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}", proc=proc)
    finally:
        stop_group(proc)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


# -- Celery workers (dagster-celery) ------------------------------------------------------------------------------


@dataclass
class CeleryWorker:
    name: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once: a machine that died."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def celery_settings(broker_url: str, visibility_timeout_s: int = 3600) -> dict:
    """The Celery settings of the workers and of `celery_executor`'s config_source: a task is acknowledged only
    once it has finished, so the broker hands a task whose worker died to another worker (at once for a killed pool
    process; for a whole worker that vanished, once `visibility_timeout_s` has passed, at the next sweep of the
    surviving workers). kombu's Redis transport sweeps every unacked_restore_interval x unacked_restore_throttle
    seconds (10 x 10 by default: a killed worker's step moved after about 110 s in a test with a 5 s timeout; 1 x 1
    here). The visibility timeout must exceed the longest step: a step still running past it is handed out again."""
    return {
        "broker_url": broker_url,
        "result_backend": broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    }


@contextlib.contextmanager
def celery_workers(
    broker_url: str,
    names: Sequence[str],
    env: Mapping[str, str],
    folder: Path,
    *,
    concurrency: int = 1,
    visibility_timeout_s: int = 3600,
    timeout_s: float = 90,
    app: str = "dagster_celery.app",
) -> Iterator[list[CeleryWorker]]:
    """`celery -A <app> worker` processes, each with its own environment on top of `env` (DAGSTER_HOME, the
    instance's database, MIRA_HOME, the code's PYTHONPATH), ready when this yields (about 8 s for two on 2 cores).
    `dagster_celery.app` (what `dagster-celery worker start` runs, without its wrapper process) reads the settings
    from a `dagster_celery_config` module written here; `mira_dagster.worker` (the project's) from the environment."""
    if not (VENV_BIN / "celery").exists() or shutil.which("dagster-celery", path=str(VENV_BIN)) is None:
        pytest.skip("dagster-celery is not installed in this venv (the `distributed` extra)")
    config_dir = folder / "celery-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    settings = celery_settings(broker_url, visibility_timeout_s)
    # dagster_celery.app reads this module when it is importable, as `dagster-celery worker start -y` arranges
    (config_dir / "dagster_celery_config.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in settings.items()), encoding="utf-8"
    )
    workers: list[CeleryWorker] = []
    try:
        for name in names:
            log = folder / f"celery-{name}.log"
            worker_env = {**os.environ, **env, "MIRA_WORKER_NAME": name}
            worker_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(config_dir), worker_env.get("PYTHONPATH")]))
            worker_env["PATH"] = os.pathsep.join([str(VENV_BIN), worker_env.get("PATH", "")])
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [
                        VENV_BIN / "celery",
                        "-A",
                        app,
                        "worker",
                        "-n",
                        f"{name}@%h",
                        f"--concurrency={concurrency}",
                        "--prefetch-multiplier=1",
                        "--loglevel=INFO",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=worker_env,
                    cwd=folder,
                    start_new_session=True,
                )
            workers.append(CeleryWorker(name=name, proc=proc, log=log))
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            while " ready." not in worker.log.read_text(errors="replace"):
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"celery worker {worker.name} exited: {worker.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"celery worker {worker.name} not ready in {timeout_s:.0f} s")
                time.sleep(0.1)
        yield workers
    finally:
        for worker in workers:
            stop_group(worker.proc)

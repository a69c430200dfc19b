"""Two machines on one host (issue 14): two `mira run` processes with their own, empty MIRA_HOME folders, sharing
one S3-compatible server (moto) and one PostgreSQL (the Dagster instance), both on loopback, scoring against a
loopback OpenAI-compatible server that counts every request.

- A partition scored through machine 1 costs machine 2 nothing: machine 2 sees from PostgreSQL that it is up to
  date, scores the other source, and its corpus assets read machine 1's partition objects on S3; re-run from an
  empty home with `--force`, not one request.
- Machine 1 is SIGKILLed in the middle of a partition's scoring; machine 2, with an empty home, resumes it without
  re-asking what was answered. The registry sets pipeline.reply_publish_seconds: 0, so a machine PUTs each answer
  to S3 as it arrives (io/reply_cache.py, ObjectReplyCache): what machine 2 asks again is exactly what machine 1 had
  not published (answered - published), and of what machine 1 was answered before the kill only the answers whose
  PUT had not completed, at most the requests it can have in flight (pipeline.max_in_flight).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.offline_judge import OfflineJudge
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import records_from
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.registry import load_config
from mira_dagster.io.store import Store
from mira_dagster.io.templates import load_templates
from tests.distributed.servers import S3_ENV, PostgresServer, S3Server, stop_group
from tests.distributed.test_postgres_instance import BIN, bare_url, plain_env
from tests.loopback import ChatServer, Reply, completion, serve, user_key

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

BUCKET = "mira-two"
TEACHER_MODEL = "teacher-two"
QA_STUDENT = "whw06/MIRA-QA-Group3"  # lean_qa's student (group 2 of small_config)
SLOW_STUDENT = "slow-student"  # a new student model: a new scorer_version of lean_qa, nothing of it cached
SLOW_S = 0.5  # per request of SLOW_STUDENT while machine 1 scores
IN_FLIGHT = 2  # pipeline.max_in_flight: machine 1 answers about IN_FLIGHT / SLOW_S = 4 records a second
PUBLISH_S = 0  # pipeline.reply_publish_seconds: each answer is PUT to S3 as it arrives
LEAN_RECORDS = 67


class Scorer:
    """The loopback scorer: contract replies for either role (the offline stand-in's, by the request's model),
    every request logged as (model, user_key, time answered), SLOW_STUDENT's delayed by `slow_s`."""

    def __init__(self) -> None:
        self.server = ChatServer(responder=self.reply)
        self.log: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()
        self.slow_s = SLOW_S
        self.backends = {role: OfflineBackend(role, [4, 9, 14]) for role in ("teacher", "student")}
        self.judge = OfflineJudge()

    def reply(self, body: dict, attempt: int) -> Reply:
        role = "teacher" if body["model"] == TEACHER_MODEL else "student"
        delay = self.slow_s if body["model"] == SLOW_STUDENT else 0.0
        with self.lock:
            self.log.append((body["model"], user_key(body), time.monotonic() + delay))
        user = body["messages"][-1]["content"]
        # rubric discovery's free-form judging (teacher_judgments) or the scoring contract
        text = self.judge.reply(user) if "\nJudge this record freely" in user else self.backends[role].reply(user)
        return Reply(payload=completion(body, text), delay_s=delay)

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int, model: str | None = None) -> list[tuple[str, str, float]]:
        with self.lock:
            return [e for e in self.log[mark:] if model is None or e[0] == model]


@pytest.fixture
def scorer() -> Iterator[tuple[Scorer, str]]:
    s = Scorer()
    with serve(s.server) as url:
        yield s, url


class Machine:
    """One "machine": its own MIRA_HOME (and so its own Dagster instance folder, <home>/dagster) and working
    folder; the store URL, the S3 server, the PostgreSQL instance and the endpoints shared with the other."""

    def __init__(self, name: str, root: Path, shared: dict[str, str]) -> None:
        self.name, self.home, self.cwd = name, root / f"{name}-home", root / f"{name}-cwd"
        self.cwd.mkdir(parents=True)
        self.shared = shared
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return plain_env(**self.shared, MIRA_HOME=str(self.home), **extra)

    def start(self, *args: str, **extra: str) -> subprocess.Popen:
        log = (self.cwd / f"run-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            [BIN / "mira", "run", *args],
            env=self.env(**extra),
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole, like a machine
        )
        log.close()
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return (self.cwd / f"run-{self.procs.index(proc)}.log").read_text(errors="replace")

    def run(self, *args: str, **extra: str) -> tuple[str, int]:
        """`mira run ...` to the end: (its output, its pid)."""
        proc = self.start(*args, **extra)
        started = time.monotonic()
        try:
            proc.wait(timeout=600)
        finally:
            stop_group(proc)
        out = self.output(proc)
        assert proc.returncode == 0, f"{self.name}: mira run {' '.join(args)}\n{out[-4000:]}"
        print(f"{self.name}: mira run {' '.join(args)}: {time.monotonic() - started:.1f} s")
        return out, proc.pid

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc)


def _keys(entries: list[tuple[str, str, float]]) -> list[str]:
    return [key for _, key, _ in entries]


def _asked(entries: list[tuple[str, str, float]]) -> list[tuple[str, str]]:
    """(model, prompt): a student's and the teacher's request for one record share the prompt."""
    return [(model, key) for model, key, _ in entries]


def test_two_machines_share_the_store_and_the_instance(
    postgres: PostgresServer,
    s3: S3Server,
    scorer: tuple[Scorer, str],
    small_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = scorer
    started = time.monotonic()
    small_config.write_text(
        small_config.read_text().replace(
            "pipeline: {", f"pipeline: {{max_in_flight: {IN_FLIGHT}, reply_publish_seconds: {PUBLISH_S}, "
        ),
        encoding="utf-8",
    )
    db = f"two_{uuid.uuid4().hex[:8]}"
    postgres.create_database(db)
    s3.create_bucket(BUCKET)
    store_url = f"s3://{BUCKET}/store"
    shared = {
        **s3.env(),
        "MIRA_STORE_URL": store_url,
        "MIRA_DAGSTER_PG_URL": bare_url(postgres, db),
        "MIRA_CONFIG": str(small_config),
        "MIRA_STUDENT_BASE_URL": url,
        "MIRA_TEACHER_BASE_URL": url,
        "MIRA_TEACHER_MODEL": TEACHER_MODEL,
    }
    for key, value in S3_ENV.items():  # this process reads the store too
        monkeypatch.setenv(key, value)
    fs = s3.filesystem()
    root = f"{BUCKET}/store"

    def reader() -> Store:
        """A third home, empty each time: what is on S3, nothing local."""
        return Store(tmp_path / f"reader-{uuid.uuid4().hex[:6]}", store_url=store_url, s3_endpoint_url=s3.endpoint_url)

    def etags(partition: str) -> dict[str, str]:
        return {p: fs.info(p)["ETag"] for p in fs.glob(f"{root}/tables/*/{partition}.parquet", refresh=True)}

    def versions() -> set[str]:
        try:
            return {p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/replies", detail=False, refresh=True)}
        except FileNotFoundError:
            return set()

    m1 = Machine("m1", tmp_path, shared)
    m2 = Machine("m2", tmp_path, shared)
    try:
        # -- 1. machine 1 scores lean_qa ---------------------------------------------------------------------
        _, pid1 = m1.run("--source", "lean_qa")
        first = server.since(0)
        lean_keys = set(_asked(first))
        assert len(server.since(0, QA_STUDENT)) == LEAN_RECORDS
        assert len(lean_keys) == len(first)  # each prompt asked once
        assert not (m1.home / "tables").exists()  # the tables are on S3, the home holds caches
        lean_objects = etags("lean_qa")
        assert {p.split("/")[-2] for p in lean_objects} >= {"raw_records", "teacher_labels", "student_scores"}

        # -- 2. machine 2, empty home: lean_qa up to date (the instance in PostgreSQL says so), agent_openhands
        # scored here, the corpus assets computed here over both partitions
        assert not m2.home.exists()
        mark = server.mark()
        out, pid2 = m2.run()
        assert "up to date, not run" in out and "lean_qa" in out.split("up to date, not run", 1)[1], out[-3000:]
        second = server.since(mark)
        assert second, "agent_openhands sent no request"
        assert not server.since(mark, QA_STUDENT) and not set(_asked(second)) & lean_keys  # nothing of lean_qa
        assert etags("lean_qa") == lean_objects  # machine 1's partition objects, read, not rewritten
        store = reader()
        for table in ("aggregated_scores", "selected_subset"):
            assert set(store.read(table)["source"].unique()) == {"lean_qa", "agent_openhands"}, table
        scores = store.read("student_scores")
        aggregated = store.read("aggregated_scores")
        for source in ("lean_qa", "agent_openhands"):
            ids = set(scores.filter(pl.col("source") == source)["record_id"])
            assert ids and ids == set(aggregated.filter(pl.col("source") == source)["record_id"]), source
        assert not (m2.home / "tables").exists()
        pids = set(postgres.psql("SELECT DISTINCT value FROM run_tags WHERE key = 'mira/pid'", db=db).split())
        assert pids == {str(pid1), str(pid2)}  # one instance: the runs of both machines
        statuses = postgres.psql("SELECT DISTINCT status FROM runs", db=db).split()
        assert statuses == ["SUCCESS"], statuses

        # -- 3. machine 2's home deleted (a cache): lean_qa forced through an empty home, not one request ------
        shutil.rmtree(m2.home)
        mark = server.mark()
        m2.run("--source", "lean_qa", "--force")
        assert server.since(mark) == []
        scores = reader().read("student_scores", "lean_qa")
        assert scores.height == LEAN_RECORDS and scores["from_cache"].sum() == LEAN_RECORDS
        print(f"sharing part: {time.monotonic() - started:.1f} s")

        # -- 4. machine 1 scores lean_qa with a new student model (nothing cached), killed mid-partition -------
        before = versions()
        mark = server.mark()
        proc = m1.start("--source", "lean_qa", MIRA_STUDENT_MODEL=SLOW_STUDENT)
        deadline = time.monotonic() + 240
        version, published_at = None, None
        while True:
            assert proc.poll() is None, f"machine 1 ended before the kill:\n{m1.output(proc)[-3000:]}"
            assert time.monotonic() < deadline, "no answer published to S3 in time"
            new = versions() - before
            if version is None and new:
                assert len(new) == 1, new  # the teacher's version is unchanged: only the student's is new
                version = new.pop()
            if version and published_at is None and fs.ls(f"{root}/replies/{version}", refresh=True):
                published_at = time.monotonic()
            # kill mid-partition, a few answers after the first: some answers on S3, requests (and PUTs) in flight
            if published_at is not None and time.monotonic() - published_at > 2.5:
                break
            time.sleep(0.1)
        killed_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        answered_1 = [e for e in server.since(mark, SLOW_STUDENT) if e[2] <= killed_at]
        asked_1 = server.since(mark, SLOW_STUDENT)
        assert not server.since(mark, QA_STUDENT) and not server.since(mark, TEACHER_MODEL)  # the teacher: cached
        raw = reader().read("raw_records", "lean_qa")
        rid_of = _record_of_key(small_config, raw)
        assert len(rid_of) == LEAN_RECORDS
        published = set(reader().replies.load(version, list(rid_of.values())))
        answered = {rid_of[k] for k in _keys(answered_1)}
        assert published and published <= answered and len(published) < LEAN_RECORDS
        assert not (m1.home / "tables").exists()

        # -- 5. machine 2, empty home again, resumes the partition -------------------------------------------
        shutil.rmtree(m2.home)
        server.slow_s = 0.02
        mark = server.mark()
        out, _ = m2.run("--source", "lean_qa", MIRA_STUDENT_MODEL=SLOW_STUDENT)
        asked_2 = [rid_of[k] for k in _keys(server.since(mark, SLOW_STUDENT))]
        assert not server.since(mark, QA_STUDENT) and not server.since(mark, TEACHER_MODEL)
        assert len(asked_2) == len(set(asked_2)) == LEAN_RECORDS - len(published)  # each at most once
        assert not set(asked_2) & published  # no answer published before the kill is asked again
        assert set(asked_2) | published == set(rid_of.values())
        lost = answered - published  # answered on machine 1 but not on S3 at the kill: asked again
        assert set(asked_2) & answered == lost
        # each answer is PUT as it arrives: only those not yet through machine 1's PUT at the kill are lost, and
        # machine 1 had at most max_in_flight requests out (answered by the server, not yet in S3)
        assert len(lost) <= IN_FLIGHT, (len(lost), sorted(lost))
        scores = reader().read("student_scores", "lean_qa")
        assert scores.height == LEAN_RECORDS and scores["record_id"].n_unique() == LEAN_RECORDS
        assert scores["status"].to_list() == ["ok"] * LEAN_RECORDS
        assert scores["from_cache"].sum() == len(published)
        assert set(scores["scorer_version"]) == {version}
        failed = postgres.psql("SELECT count(*) FROM runs WHERE status = 'FAILURE'", db=db)
        assert failed == "1", failed  # machine 1's killed run, released by machine 2's `mira run`
        print(
            f"kill: machine 1 asked {len(asked_1)}, answered {len(answered)} records, published {len(published)} "
            f"before the kill; machine 2 asked {len(asked_2)}, of which re-asks (answered but unpublished, at most "
            f"{IN_FLIGHT}): {len(lost)}; total {time.monotonic() - started:.1f} s"
        )
    finally:
        m1.stop()
        m2.stop()


def _record_of_key(config: Path, raw: pl.DataFrame) -> dict[str, str]:
    """user_key of each lean_qa record's student prompt -> its record_id (as tests/serving/test_kill.py)."""
    cfg = load_config(config)
    rubric, template = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think"), load_templates()
    return {
        user_key({"messages": [{"content": render_user(template, rubric, r)}]}): r.record_id for r in records_from(raw)
    }

"""One store URL shared by machines with their own MIRA_HOME (moto's S3 server on loopback): the reply cache's
writers never clobber each other, and a home is only a cache: deleted, or replaced by an empty one, nothing is lost
and nothing is asked again. A writer's publisher thread PUTs its answers within pipeline.reply_publish_seconds (0:
as soon as possible, one PUT in flight taking whatever arrived meanwhile), also when no answer follows, never in the
owner's `add`; a failed background PUT keeps its rows and logs and is raised by the writer's next call."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.core.config import ConfigError
from mira_dagster.core.scoring import Completion
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.registry import load_config
from mira_dagster.io.reply_cache import ObjectReplyCache, _read_wal
from mira_dagster.io.store import Store
from tests.defs.test_object_store import moto_s3, s3_environment

URL = "s3://mira-shared/store"
VERSION = "v-shared"


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server, its bucket, and MIRA_STORE_URL + MIRA_S3_ENDPOINT_URL pointing there."""
    with moto_s3("mira-shared") as endpoint:
        s3_environment(monkeypatch, endpoint, URL)
        yield endpoint


def _comp(text: str) -> Completion:
    return Completion(text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=2, cached_tokens=0)


def _store(home: Path, endpoint: str) -> Store:
    return Store(home, store_url=URL, s3_endpoint_url=endpoint)


def _small(cache: ObjectReplyCache) -> ObjectReplyCache:
    """Compaction after every few objects, so that the writers' compactions overlap."""
    cache.l0_max, cache.fanout, cache.flush_seconds = 3, 2, 0.2
    return cache


def _write(home: str, endpoint: str, writer: str, n: int) -> None:
    """One writer process: n answers (2 attempts for every 5th id), 3 ms apart (so that they take many PUTs: answers
    added during a PUT go together in the next), batches of 7, compacting as it goes."""
    cache = _small(_store(Path(home), endpoint).replies)  # type: ignore[arg-type]
    with cache.writer(VERSION, batch_size=7) as w:
        for i in range(n):
            w.add(f"{writer}-{i:04d}", _comp(f"{writer} says {i}"))
            if i % 5 == 0:
                w.add(f"{writer}-{i:04d}", _comp(f"{writer} again {i}"), attempt=1)
            time.sleep(0.003)


@pytest.mark.slow  # two processes, each about a dozen PUTs and 4 compactions against moto: about 10 s
def test_two_writers_with_their_own_homes_never_clobber(shared: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 150
    procs = [ctx.Process(target=_write, args=(str(tmp_path / w), shared, w, n)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ids = [f"{w}-{i:04d}" for w in ("a", "b") for i in range(n)]

    def check(cache: ObjectReplyCache) -> None:
        got = cache.load_attempts(VERSION, ids)
        assert sorted(got) == ids
        for rid, comps in got.items():
            w, i = rid.split("-")[0], int(rid.split("-")[1])
            expected = [f"{w} says {i}", *([f"{w} again {i}"] if i % 5 == 0 else [])]
            assert [c.text for c in comps] == expected, rid
        assert cache.count(VERSION) == 2 * n

    reader = _store(tmp_path / "reader", shared).replies
    assert isinstance(reader, ObjectReplyCache)
    check(reader)
    assert any(not name.startswith("L0-") for name in reader._names(VERSION))  # the writers compacted as they went
    assert reader.compact(VERSION, full=True)
    assert len(reader._names(VERSION)) == 1
    shutil.rmtree(tmp_path / "reader")  # the home is a cache: gone, the answers are still there
    check(_store(tmp_path / "reader", shared).replies)  # type: ignore[arg-type]


def test_a_killed_writers_log_is_published_by_the_next_writer(shared: str, tmp_path: Path) -> None:
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache)
    cache.flush_seconds = 3600  # no timer publishes it meanwhile: the process is dead
    w = cache.writer(VERSION, batch_size=100)
    w.add("r1", _comp("one"))
    w._fh.close()  # the process died: its lock is released, its log unpublished
    w.close()  # (its publisher too: it would publish in an hour)
    assert cache.load(VERSION, ["r1"])["r1"].text == "one"  # this machine reads its logs
    assert _store(tmp_path / "other", shared).replies.load(VERSION, ["r1"]) == {}
    cache.writer(VERSION).flush()  # the next writer on this machine publishes it
    assert _store(tmp_path / "other", shared).replies.load(VERSION, ["r1"])["r1"].text == "one"
    assert not list((tmp_path / "home" / "cache" / "replies" / VERSION).glob("*.wal.jsonl"))


def _wal_ids(home: Path) -> list[str]:
    """The record ids in the home's write-ahead logs (what a kill would leave unpublished)."""
    return sorted(row["record_id"] for wal in _reply_dir(home).glob("*.wal.jsonl") for row in _read_wal(wal))


def _reply_dir(home: Path) -> Path:
    return home / "cache" / "replies" / VERSION


def _until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _write_until_killed(home: str, endpoint: str, ready: str) -> None:
    """A writer process with reply_publish_seconds 0 whose second PUT never returns: answers keep arriving during
    it (a new log, the PUT's own rotated away), then it writes `ready` and waits for its SIGKILL."""
    cache = _store(Path(home), endpoint).replies
    assert isinstance(cache, ObjectReplyCache) and cache.flush_seconds == 0
    put, puts, stuck = cache._put, [], threading.Event()

    def slow(version: str, df: object) -> str:
        puts.append(df)
        if len(puts) >= 2:
            stuck.set()
            time.sleep(600)
        return put(version, df)  # type: ignore[arg-type]

    cache._put = slow  # type: ignore[method-assign]
    w = cache.writer(VERSION, batch_size=1000)
    i, after = 0, 0
    while after < 5:  # until a few answers came after the stuck PUT started (however slow the first PUT was)
        w.add(f"k{i:02d}", _comp(f"kept {i}"))
        i += 1
        after += stuck.is_set()
        time.sleep(0.02)
        assert i < 500, "the second PUT never started"
    Path(ready).write_text(str(i))
    time.sleep(600)


def test_a_killed_writers_rotated_logs_are_published_by_the_next_writer(shared: str, tmp_path: Path) -> None:
    """SIGKILLed during a PUT: the logs of that PUT and the log of the answers after it are left, all published by
    the next writer of the version on the machine (`_rescue`)."""
    home, ready = tmp_path / "home", tmp_path / "ready"
    proc = multiprocessing.get_context("spawn").Process(
        target=_write_until_killed, args=(str(home), shared, str(ready))
    )
    proc.start()
    try:
        _until(ready.exists, "the writer process did not get stuck in a PUT", timeout=60)
        n = int(ready.read_text())
        assert len(list(_reply_dir(home).glob("*.wal.jsonl"))) >= 2  # the stuck PUT's log(s), and the current one
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    ids = [f"k{i:02d}" for i in range(n)]
    published = set(_store(tmp_path / "other", shared).replies.load(VERSION, ids))
    assert published and published < set(ids)  # the first PUT went through, the second never did
    left = _wal_ids(home)
    assert len(list(_reply_dir(home).glob("*.wal.jsonl"))) >= 2
    assert set(left) == set(ids) - published  # each unpublished answer is in a log
    cache = _store(home, shared).replies
    cache.writer(VERSION).flush()  # the next writer on this machine publishes them
    got = _store(tmp_path / "other2", shared).replies.load(VERSION, ids)
    assert sorted(got) == ids and all(got[f"k{i:02d}"].text == f"kept {i}" for i in range(n))
    assert not list(_reply_dir(home).glob("*.wal.jsonl"))


def test_with_no_publish_window_each_answer_is_on_the_store_right_after_add(
    shared: str, small_config: Path, tmp_path: Path
) -> None:
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {reply_publish_seconds: 0, "))
    home = tmp_path / "home"
    cache = MiraResource(config_path=str(small_config), home=str(home)).store().replies  # the registry's setting
    assert isinstance(cache, ObjectReplyCache) and cache.flush_seconds == 0
    other = _store(tmp_path / "other", shared).replies
    w = cache.writer(VERSION, batch_size=1000)
    for i in range(3):
        w.add(f"r{i}", _comp(f"answer {i}"))
        # no further add, no flush: the publisher PUTs it at once, another machine sees it within a short poll
        _until(lambda i=i: f"r{i}" in other.load(VERSION, [f"r{i}"]), f"r{i} was not published")
        _until(lambda: _wal_ids(home) == [], "its log was not removed")  # nothing waits in this machine's log
    assert len(cache._names(VERSION)) == 3  # one object per answer
    w.close()
    assert w._thread is None


def test_the_default_publish_window_is_zero(tmp_path: Path) -> None:
    from mira_dagster.core.config import PipelineSettings

    assert PipelineSettings.model_fields["reply_publish_seconds"].default == 0
    assert ObjectReplyCache(None, "b/r", tmp_path).flush_seconds == 0


def test_add_never_waits_for_a_slow_put_and_answers_meanwhile_share_the_next(shared: str, tmp_path: Path) -> None:
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache) and cache.flush_seconds == 0
    put, rows_per_put, started = cache._put, [], threading.Event()

    def slow(version: str, df: object) -> str:
        started.set()
        time.sleep(1)
        rows_per_put.append(df.height)  # type: ignore[attr-defined]
        return put(version, df)  # type: ignore[arg-type]

    cache._put = slow  # type: ignore[method-assign]
    ids = [f"s{i:02d}" for i in range(21)]
    with cache.writer(VERSION, batch_size=1000) as w:
        w.add(ids[0], _comp(ids[0]))
        assert started.wait(5)  # its PUT is in flight (for 1 s) ...
        start = time.monotonic()
        for rid in ids[1:]:  # ... while 20 more answers arrive
            w.add(rid, _comp(rid))
        took = time.monotonic() - start
        assert took < 0.5, f"20 adds took {took:.3f} s: add waited for a PUT"
        w.flush()  # waits for the PUT in flight and the one after it
        assert _wal_ids(tmp_path / "home") == []
    print(f"20 adds during a 1 s PUT: {took * 1000:.1f} ms; {len(rows_per_put)} PUTs of {rows_per_put} rows")
    assert w._thread is None  # stopped by __exit__
    assert rows_per_put == [1, 20]  # group commit: the 20 answers that arrived during the first PUT, in one
    assert sorted(_store(tmp_path / "other", shared).replies.load(VERSION, ids)) == ids


def test_a_failed_put_keeps_its_rows_and_logs_until_a_later_flush(shared: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cache = _store(home, shared).replies
    assert isinstance(cache, ObjectReplyCache) and cache.flush_seconds == 0
    put, calls = cache._put, []

    def down(version: str, df: object) -> str:
        calls.append(df)
        raise OSError("the store is down")

    cache._put = down  # type: ignore[method-assign]
    w = cache.writer(VERSION, batch_size=1000)
    w.add("r1", _comp("one"))
    _until(lambda: w._error is not None, "the publisher did not try")
    time.sleep(0.3)
    assert len(calls) == 1  # after a failure the publisher waits for the owner, it does not retry in a loop
    assert _wal_ids(home) == ["r1"]  # the failed PUT's log is still there (rotated, still locked)
    with pytest.raises(OSError, match="the store is down"):
        w.add("r2", _comp("two"))  # raised by the next add, after its log write
    logs = list(_reply_dir(home).glob("*.wal.jsonl"))
    assert len(logs) == 2 and _wal_ids(home) == ["r1", "r2"]  # the failed PUT's log and the new one, both kept
    assert _store(tmp_path / "other", shared).replies.load(VERSION, ["r1", "r2"]) == {}
    cache.writer(VERSION).close()  # another writer's rescue leaves them: this writer holds their locks
    assert sorted(_reply_dir(home).glob("*.wal.jsonl")) == sorted(logs)

    cache._put = put  # type: ignore[method-assign]
    w.flush()  # raised once only: this flush publishes everything
    assert set(_store(tmp_path / "other", shared).replies.load(VERSION, ["r1", "r2"])) == {"r1", "r2"}
    assert not list(_reply_dir(home).glob("*.wal.jsonl"))  # every log of the writer removed
    assert len(calls) == 1 and len(cache._names(VERSION)) == 1  # r1 and r2 in one PUT
    w.close()
    assert w._thread is None


def test_an_answer_is_published_by_the_timer_without_another_answer(shared: str, tmp_path: Path) -> None:
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache)
    cache.flush_seconds = 0.2
    other = _store(tmp_path / "other", shared).replies
    w = cache.writer(VERSION, batch_size=1000)
    w.add("r1", _comp("one"))
    w.add("r2", _comp("two"))
    deadline = time.monotonic() + 5
    while set(other.load(VERSION, ["r1", "r2"])) != {"r1", "r2"}:  # no more answers, no flush: the timer's PUT
        assert time.monotonic() < deadline, "the timer did not publish the answers"
        time.sleep(0.05)
    # the log goes once the PUT and its local copy are done, just after the object is visible to others
    _until(lambda: _wal_ids(tmp_path / "home") == [], "the published answers' log stays")
    assert len(cache._names(VERSION)) == 1  # the answers of one window: one object
    w.flush()  # nothing left to publish
    assert len(cache._names(VERSION)) == 1


def test_a_failed_background_publish_is_raised_by_the_next_call(shared: str, tmp_path: Path) -> None:
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache)
    cache.flush_seconds = 0.2
    put = cache._put

    def down(version: str, df: object) -> str:
        raise OSError("the store is down")

    cache._put = down  # type: ignore[method-assign]
    w = cache.writer(VERSION, batch_size=1000)
    w.add("r1", _comp("one"))
    _until(lambda: w._error is not None, "the publisher did not try")
    with pytest.raises(OSError, match="the store is down"):
        w.add("r2", _comp("two"))  # the next call in the owner's thread: the publisher's failure
    assert _wal_ids(tmp_path / "home") == ["r1", "r2"]  # kept in the log, both

    w2 = cache.writer(VERSION, batch_size=1000)
    w2.add("r3", _comp("three"))
    _until(lambda: w2._error is not None, "the publisher did not try")
    with pytest.raises(OSError, match="the store is down"):
        w2.flush()  # ... or the next flush
    assert _wal_ids(tmp_path / "home") == ["r1", "r2", "r3"]
    assert _store(tmp_path / "other", shared).replies.load(VERSION, ["r1", "r2", "r3"]) == {}

    w3 = cache.writer(VERSION, batch_size=1000)
    w3.add("r4", _comp("four"))
    with pytest.raises(OSError, match="the store is down"):
        w3.flush()  # a flush whose own PUT fails raises it too
    assert _wal_ids(tmp_path / "home") == ["r1", "r2", "r3", "r4"]

    cache._put = put  # type: ignore[method-assign]
    w.flush()  # the store is back: the next flush publishes what the log kept
    w2.flush()
    w3.flush()
    ids = ["r1", "r2", "r3", "r4"]
    assert set(_store(tmp_path / "other", shared).replies.load(VERSION, ids)) == set(ids)
    assert _wal_ids(tmp_path / "home") == []


@pytest.mark.parametrize("value", ["-1", ".inf", ".nan"])
def test_the_publish_window_must_be_a_finite_non_negative_number(small_config: Path, value: str) -> None:
    small_config.write_text(
        small_config.read_text().replace("pipeline: {", f"pipeline: {{reply_publish_seconds: {value}, ")
    )
    with pytest.raises(ConfigError, match=r"(?s)pipeline\.reply_publish_seconds.*(greater than or equal to 0|finite)"):
        load_config(small_config)


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


@pytest.mark.slow
def test_a_partition_scored_from_one_home_costs_nothing_from_another(
    shared: str, small_config: Path, tmp_path: Path
) -> None:
    instance = in_process_instance()
    source = "lean_qa"

    def run(home: Path, selection: list) -> dg.ExecuteInProcessResult:
        mira = MiraResource(config_path=str(small_config), home=str(home))
        result = dg.materialize(
            d.ALL_ASSETS, selection=selection, partition_key=source, instance=instance, resources={"mira": mira}
        )
        assert result.success
        return result

    # in the pipeline's order: ingest, discovery (which also writes the configured rubric's generated calibration
    # references, part of the scorers' version), then scoring
    run(tmp_path / "a", d.INGEST_ASSETS)
    mira_a = MiraResource(config_path=str(small_config), home=str(tmp_path / "a"))
    found = dg.materialize(
        d.ALL_ASSETS, selection=d.DISCOVERY_ASSETS, partition_key="2", instance=instance, resources={"mira": mira_a}
    )
    assert found.success  # group 2's rubric, discovered through home A
    first = run(tmp_path / "a", [*d.INGEST_ASSETS, *d.SCORING_ASSETS])
    assert _meta(first, "student_scores")["requests_sent"] > 0
    rubric_a = (tmp_path / "a" / "anchors" / "group_2_dim_anchors.jsonl").read_text()
    shutil.rmtree(tmp_path / "a")  # home A is gone: only the store is left
    again = run(tmp_path / "b", [*d.INGEST_ASSETS, *d.SCORING_ASSETS])  # a new, empty home
    for asset in ("teacher_labels", "student_scores"):
        meta = _meta(again, asset)
        assert meta["requests_sent"] == 0, asset
        assert meta["from_cache"] == meta["dagster/row_count"], asset
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "b"))
    assert dg.materialize(d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}).success
    # the rubric discovered through home A, read through home B (a local copy fetched from the store)
    discovered = small_config.with_name("discovered.yaml")
    discovered.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {rubric_source: discovered, "))
    assert "rubric_source: discovered" in discovered.read_text()
    rubric = MiraResource(config_path=str(discovered), home=str(tmp_path / "b")).rubric("2")
    assert rubric.file_sha256 == hashlib.sha256(rubric_a.encode()).hexdigest()
    distilled = dg.materialize(
        d.ALL_ASSETS, selection=d.DISTILL_ASSETS, partition_key="2", instance=instance, resources={"mira": mira}
    )
    assert distilled.success

    # the export, read through a third home: the manifest on the store, its shards, the same rows
    store = Store(tmp_path / "c", store_url=URL, s3_endpoint_url=shared)
    root = store.location("exports/selected_subset").removeprefix("s3://")
    manifest = json.loads(store.fs.cat_file(f"{root}/manifest.json"))
    assert manifest["records"] == store.read("selected_subset").height > 0
    assert all(store.fs.exists(f"{root}/{f['file']}") for f in manifest["files"])
    assert not (tmp_path / "b" / "exports" / "selected_subset").exists()
    sft = store.fetch_file("exports/distillation/group_2.jsonl")
    assert (
        sft is not None and sft.read_text().count("\n") == _meta(distilled, "distillation_dataset")["dagster/row_count"]
    )
    assert store.fetch_file("anchors/group_2_dim_anchors.jsonl").read_text() == rubric_a  # type: ignore[union-attr]
    # home B holds only caches: the reply index (objects downloaded, sorted runs, ingested.txt, this machine's live
    # logs), copies of the rubric and of the distillation file it published, staging and spill folders
    assert set(os.listdir(tmp_path / "b")) <= {"anchors", "cache", "exports", "tmp", "duckdb_tmp"}
    assert os.listdir(tmp_path / "b" / "cache") == ["replies"]
    assert not (tmp_path / "b" / "tables").exists() and not (tmp_path / "b" / "mira.duckdb").exists()


def test_the_store_url_and_its_alias(tmp_path: Path) -> None:
    from mira_dagster.io.store import ParquetReplyCache
    from mira_dagster.settings import Settings

    home = {"MIRA_HOME": str(tmp_path)}
    both = Settings.from_env({**home, "MIRA_STORE_URL": "s3://a/x", "MIRA_TABLES_URL": "s3://b/y"}).store()
    assert both.url == "s3://a/x" and isinstance(both.replies, ObjectReplyCache)  # MIRA_STORE_URL wins
    alias = Settings.from_env({**home, "MIRA_TABLES_URL": "s3://b/y/"}).store()
    assert alias.url == "s3://b/y" and alias.location("anchors/x.jsonl") == "s3://b/y/anchors/x.jsonl"
    local = Settings.from_env(home).store()
    assert local.url is None and type(local.replies) is ParquetReplyCache
    assert local.location("exports/selected_subset") == str(tmp_path / "exports" / "selected_subset")
    assert MiraResource(home=str(tmp_path), store_url="s3://c/z").store().url == "s3://c/z"


def test_a_writer_of_few_objects_compacts_once_its_flush_has_published(shared: str, tmp_path: Path) -> None:
    """Compaction runs after every l0_max objects a writer published, and when its owner's flush has published
    everything, so that small writers (a judgment sample, a mostly cached re-run) still get objects merged."""
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache)
    calls: list[str] = []
    compact = cache.compact

    def spy(version: str, **kw: bool) -> bool:
        calls.append(version)
        return compact(version, **kw)

    cache.compact = spy  # type: ignore[method-assign]
    w = cache.writer(VERSION, batch_size=1000)
    w.add("r1", _comp("one"))
    w.flush()
    assert calls == [VERSION]  # one object published (< l0_max): compacted at the flush
    w.flush()
    assert calls == [VERSION]  # nothing published since: no LIST
    w.close()

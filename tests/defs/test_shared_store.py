"""One store URL shared by machines with their own MIRA_HOME (moto's S3 server on loopback): the reply cache's
writers never clobber each other, and a home is only a cache: deleted, or replaced by an empty one, nothing is lost
and nothing is asked again. A writer publishes its answers within pipeline.reply_publish_seconds, by a timer when
no answer follows, and a failed background PUT is raised by the writer's next call."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.core.config import ConfigError
from mira_dagster.core.scoring import Completion
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.registry import load_config
from mira_dagster.io.store import ObjectReplyCache, Store, _read_wal
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
    """One writer process: n answers (2 attempts for every 5th id), batches of 7, compacting as it goes."""
    cache = _small(_store(Path(home), endpoint).replies)  # type: ignore[arg-type]
    with cache.writer(VERSION, batch_size=7) as w:
        for i in range(n):
            w.add(f"{writer}-{i:04d}", _comp(f"{writer} says {i}"))
            if i % 5 == 0:
                w.add(f"{writer}-{i:04d}", _comp(f"{writer} again {i}"), attempt=1)


@pytest.mark.slow  # two processes, each about 50 PUTs and a dozen compactions against moto: about 25 s
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


def test_with_no_publish_window_each_answer_is_on_the_store_when_add_returns(
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
        assert f"r{i}" in other.load(VERSION, [f"r{i}"])  # another machine sees it at once
        assert _wal_ids(home) == []  # nothing waits in this machine's log
    assert len(cache._names(VERSION)) == 3  # one object per answer


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
    assert _wal_ids(tmp_path / "home") == []
    assert len(cache._names(VERSION)) == 1  # the answers of one window: one object
    w.flush()  # nothing left to publish
    assert len(cache._names(VERSION)) == 1


def test_a_failed_background_publish_is_raised_by_the_next_call(shared: str, tmp_path: Path) -> None:
    cache = _store(tmp_path / "home", shared).replies
    assert isinstance(cache, ObjectReplyCache)
    cache.flush_seconds = 0.2
    put, failed = cache._put, threading.Event()

    def down(version: str, df: object) -> str:
        failed.set()
        raise OSError("the store is down")

    cache._put = down  # type: ignore[method-assign]
    w = cache.writer(VERSION, batch_size=1000)
    w.add("r1", _comp("one"))
    assert failed.wait(5)  # the timer tried
    with pytest.raises(OSError, match="the store is down"):
        w.add("r2", _comp("two"))  # the next call in the owner's thread: the timer's failure
    assert _wal_ids(tmp_path / "home") == ["r1", "r2"]  # kept in the log, both

    w2, failed = cache.writer(VERSION, batch_size=1000), threading.Event()
    w2.add("r3", _comp("three"))
    assert failed.wait(5)
    with pytest.raises(OSError, match="the store is down"):
        w2.flush()  # ... or the next flush
    assert _wal_ids(tmp_path / "home") == ["r1", "r2", "r3"]
    assert _store(tmp_path / "other", shared).replies.load(VERSION, ["r1", "r2", "r3"]) == {}

    cache._put = put  # type: ignore[method-assign]
    w.flush()  # the store is back: the next flush publishes what the log kept
    w2.flush()
    assert set(_store(tmp_path / "other", shared).replies.load(VERSION, ["r1", "r2", "r3"])) == {"r1", "r2", "r3"}
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

    first = run(tmp_path / "a", [*d.INGEST_ASSETS, *d.SCORING_ASSETS])
    assert _meta(first, "student_scores")["requests_sent"] > 0
    mira_a = MiraResource(config_path=str(small_config), home=str(tmp_path / "a"))
    found = dg.materialize(
        d.ALL_ASSETS, selection=d.DISCOVERY_ASSETS, partition_key="2", instance=instance, resources={"mira": mira_a}
    )
    assert found.success  # group 2's rubric, discovered through home A
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

"""The indexed reply cache (ParquetReplyCache): lookups across buckets and compaction, attempts in order, crash
safety between compaction steps, the old flat layout, two writers of one version, and the writer's batches (on
disk in `add`; with `publish`, by a publisher thread that ends when idle)."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing as mp
import shutil
import subprocess
import sys
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.scoring import Completion
from mira_dagster.io.reply_cache import ParquetReplyCache, ReplyCacheUnreadable, ReplyWriter, _bucket, _read_wal

V = "v1"


def rid(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def comp(i: int, attempt: int = 0) -> Completion:
    return Completion(text=f"reply {i} attempt {attempt}", finish_reason="stop", prompt_tokens=i, completion_tokens=1)


def small(root: Path) -> ParquetReplyCache:
    """Compacts after 4 batch files and merges 2 runs of a level: every path runs on a few hundred replies."""
    return ParquetReplyCache(root, l0_max=4, fanout=2, unit=8)


def write(cache: ParquetReplyCache, ids: range, attempts: int = 1, batch: int = 10) -> None:
    with cache.writer(V, batch) as w:
        for a in range(attempts):
            for i in ids:
                w.add(rid(i), comp(i, a), a)


def texts(cache: ParquetReplyCache, ids) -> dict[str, list[str]]:
    return {r: [c.text for c in cs] for r, cs in cache.load_attempts(V, [rid(i) for i in ids]).items()}


def layout(root: Path) -> tuple[int, int]:
    """(level-0 files, run files) of the version."""
    d = root / V
    return len(list(d.glob("*.parquet"))), len(list(d.glob("runs/*/*.arrow")))


def test_lookups_across_buckets_and_compaction(tmp_path: Path) -> None:
    cache = small(tmp_path)
    write(cache, range(300))
    l0, runs = layout(tmp_path)
    assert l0 < 4 and runs > 0  # compacted as it went
    buckets = {p.parent.name for p in (tmp_path / V).glob("runs/*/*.arrow")}
    assert buckets == set("0123456789abcdef")
    asked = [*range(0, 300, 7), *range(1000, 1010)]  # present ones and absent ones
    got = texts(cache, asked)
    assert got == {rid(i): [f"reply {i} attempt 0"] for i in range(0, 300, 7)}
    assert cache.load(V, [rid(5)])[rid(5)] == comp(5)
    assert cache.count(V) == 300
    cache.compact(V, full=True)
    assert layout(tmp_path) == (0, 16)  # one run per bucket
    assert texts(cache, asked) == got and cache.count(V) == 300
    assert cache.load_attempts(V, []) == {} and cache.load_attempts("other", [rid(1)]) == {}


def test_attempts_kept_in_order_across_files(tmp_path: Path) -> None:
    cache = small(tmp_path)
    write(cache, range(100), attempts=3)  # attempt 2 of a record lands in another file than attempt 0
    expected = {rid(i): [f"reply {i} attempt {a}" for a in range(3)] for i in range(100)}
    assert texts(cache, range(100)) == expected
    assert cache.load(V, [rid(7)])[rid(7)].text == "reply 7 attempt 2"
    cache.compact(V, full=True)
    assert texts(cache, range(100)) == expected


def test_first_written_wins_within_and_across_runs(tmp_path: Path) -> None:
    cache = small(tmp_path)
    write(cache, range(50))
    with cache.writer(V, 10) as w:  # another run answered the same attempts later
        for i in range(50):
            w.add(rid(i), Completion(text="later"), 0)
    assert all(t == [f"reply {i} attempt 0"] for i, t in zip(range(50), texts(cache, range(50)).values(), strict=True))
    cache.compact(V, full=True)
    assert texts(cache, [3]) == {rid(3): ["reply 3 attempt 0"]}


def test_crash_between_compaction_steps_loses_nothing(tmp_path: Path) -> None:
    cache = small(tmp_path)
    write(cache, range(40), batch=10)  # 4 files: compacted into runs
    write(cache, range(40, 70), batch=10)  # 3 more level-0 files
    before = tmp_path / "before"
    shutil.copytree(tmp_path / V, before)
    expected = texts(cache, range(70))
    cache.compact(V, full=True)
    # killed after writing the new runs but before removing their inputs: old files and new ones together
    shutil.copytree(before, tmp_path / V, dirs_exist_ok=True)
    assert texts(cache, range(70)) == expected and cache.count(V) == 70
    # killed while writing a run: a temporary file, which readers ignore and the next compaction removes
    bucket = next((tmp_path / V / "runs").iterdir())
    (bucket / ".L3-x.arrow.tmp").write_bytes(b"torn")
    (tmp_path / V / ".batch.parquet.abc.tmp").write_bytes(b"torn")
    assert texts(cache, range(70)) == expected
    cache.compact(V, full=True)
    assert not list(bucket.glob(".*.tmp")) and layout(tmp_path) == (0, 16)
    assert texts(cache, range(70)) == expected and cache.count(V) == 70


def test_killed_writers_log_is_read_then_compacted(tmp_path: Path) -> None:
    cache = small(tmp_path)
    w = cache.writer(V, 1000)
    for i in range(5):
        w.add(rid(i), comp(i))
    # alive: its log is read, and compaction leaves it (the writer holds its lock)
    assert set(texts(cache, range(5))) == {rid(i) for i in range(5)}
    write(cache, range(100, 160))
    assert len(list((tmp_path / V).glob("*.wal.jsonl"))) == 1
    w._fh.close()  # the process dies: the kernel drops its lock, the log stays
    cache.compact(V, full=True)
    assert not list((tmp_path / V).glob("*.wal.jsonl"))
    assert texts(cache, range(5)) == {rid(i): [f"reply {i} attempt 0"] for i in range(5)}


OLD_SCHEMA = {k: v for k, v in ParquetReplyCache.SCHEMA.items() if k != "attempt"}


@pytest.mark.parametrize("with_attempt", [False, True])
def test_old_flat_layout_is_read_and_migrated(tmp_path: Path, with_attempt: bool) -> None:
    """Caches written before the index: flat batch files in the version folder (and, older, without `attempt`)."""
    folder = tmp_path / V
    folder.mkdir()
    now = datetime.now(UTC)
    schema = ParquetReplyCache.SCHEMA if with_attempt else OLD_SCHEMA
    for f in range(30):
        rows = [
            {"record_id": rid(i), "text": f"old {i}", "finish_reason": "stop", "prompt_tokens": 1,
             "completion_tokens": 1, "cached_tokens": None, "created_at": now - timedelta(days=1, seconds=-i)}
            for i in range(f * 10, f * 10 + 10)
        ]  # fmt: skip
        if with_attempt:
            rows = [{**row, "attempt": 0} for row in rows]
        pl.DataFrame(rows, schema=schema).write_parquet(folder / f"2025-{f:04d}.parquet")
    cache = small(tmp_path)
    assert texts(cache, [1, 299, 500]) == {rid(1): ["old 1"], rid(299): ["old 299"]}
    write(cache, range(295, 305), attempts=2)  # new replies (a second attempt for old records) start compaction
    assert layout(tmp_path)[0] < 4
    got = texts(cache, [1, 299, 303])
    assert got == {rid(1): ["old 1"], rid(299): ["old 299", "reply 299 attempt 1"], rid(303): [
        "reply 303 attempt 0", "reply 303 attempt 1"]}  # fmt: skip
    assert cache.count(V) == 305


def _writer_process(root: str, start: int) -> None:
    cache = small(Path(root))
    write(cache, range(start, start + 400), batch=7)


@pytest.mark.slow  # two writer processes and a compaction: about 10 s
def test_two_writers_of_one_version_do_not_clobber(tmp_path: Path) -> None:
    procs = [mp.get_context("spawn").Process(target=_writer_process, args=(str(tmp_path), s)) for s in (0, 400)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = small(tmp_path)
    assert cache.count(V) == 800
    assert texts(cache, range(800)) == {rid(i): [f"reply {i} attempt 0"] for i in range(800)}


def test_bucket_of_any_id() -> None:
    assert _bucket("a3f0") == "a"
    assert _bucket("r0") in "0123456789abcdef" and _bucket("r0") == _bucket("r0")
    assert _bucket("") in "0123456789abcdef"


def test_short_and_colliding_ids(tmp_path: Path) -> None:
    """Runs are searched on an 8-byte prefix: ids sharing it, or shorter, are told apart by the full id."""
    cache = small(tmp_path)
    ids = ["abcdefgh1", "abcdefgh2", "abcdefgh", "abc", "r0", "r0x", "ééé"]
    with cache.writer(V, 2) as w:
        for i, r in enumerate(ids):
            w.add(r, Completion(text=str(i)))
    cache.compact(V, full=True)
    got = cache.load_attempts(V, [*ids, "abcdefgh3", "ab"])
    assert {r: [c.text for c in cs] for r, cs in got.items()} == {r: [str(i)] for i, r in enumerate(ids)}


def test_local_writer_writes_each_batch_in_add_without_a_thread(tmp_path: Path) -> None:
    """No `publish` (local disk): each `batch_size` answers become a Parquet file inside `add`, as always."""
    cache = ParquetReplyCache(tmp_path)
    w = cache.writer(V, 3)
    for i in range(7):
        w.add(rid(i), comp(i))
        assert layout(tmp_path)[0] == (i + 1) // 3  # written by the add that completed the batch
    assert w._thread is None and len(list((tmp_path / V).glob("*.wal.jsonl"))) == 1
    w.flush()
    assert layout(tmp_path)[0] == 3 and not list((tmp_path / V).glob("*.wal.jsonl"))


def test_an_idle_publisher_ends_and_an_unflushed_writer_neither_hangs_nor_leaks(tmp_path: Path) -> None:
    published: list[int] = []
    w = ReplyWriter(tmp_path, 100, publish=lambda df: published.append(df.height), flush_seconds=0)
    w._IDLE_SECONDS = 0.2
    w.add(rid(1), comp(1))
    thread = w._thread
    assert thread is not None and thread.daemon
    thread.join(5)  # published, then idle: it ends
    assert not thread.is_alive() and w._thread is None and published == [1]
    assert not list(tmp_path.glob("*.wal.jsonl"))
    w.add(rid(2), comp(2))  # the next add starts another
    deadline = time.monotonic() + 5
    while published != [1, 1]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ref = weakref.ref(w)
    del w
    deadline = time.monotonic() + 5
    while ref() is not None:  # its publisher ended: nothing holds the writer
        assert time.monotonic() < deadline, "an idle writer stays referenced"
        gc.collect()
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith(f"reply-publisher-{tmp_path.name}")]

    # a process that exits with a PUT in flight and answers pending, without flush: it exits at once
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mira_dagster.core.scoring import Completion\n"
        "from mira_dagster.io.store import ReplyWriter\n"
        "w = ReplyWriter(Path(sys.argv[1]), 100, publish=lambda df: time.sleep(60), flush_seconds=0)\n"
        "for i in range(3):\n"
        "    w.add(str(i), Completion(text='x'))\n"
        "    time.sleep(0.1)\n"
    )
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "exit")], check=True, timeout=30)
    assert time.monotonic() - start < 20
    # the PUT's log and the one after (or one, if the publisher started only after the third answer): all kept
    logs = list((tmp_path / "exit").glob("*.wal.jsonl"))
    assert 1 <= len(logs) <= 2
    assert sorted(row["record_id"] for log in logs for row in _read_wal(log)) == ["0", "1", "2"]


def test_an_answer_added_as_the_publisher_goes_idle_is_published(tmp_path: Path) -> None:
    """The publisher decides to end (idle) and releases the lock; an `add` right then must start a new one, not
    wake the one that is leaving. The window is widened with a sleep after the lock is released."""

    class WideCondition(threading.Condition):
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            if getattr(threading.current_thread(), "leaving", False):
                threading.current_thread().leaving = False  # type: ignore[attr-defined]
                time.sleep(0.5)

    class Writer(ReplyWriter):
        _IDLE_SECONDS = 0.2

        def _wait_for_batch(self) -> bool:
            due = super()._wait_for_batch()
            threading.current_thread().leaving = not due  # type: ignore[attr-defined]
            return due

    published: list[list[str]] = []
    w = Writer(tmp_path, 100, publish=lambda df: published.append(df["record_id"].to_list()), flush_seconds=0)
    w._cond = WideCondition(threading.Lock())
    w.add("r1", Completion(text="one"))
    time.sleep(0.35)  # r1 published, 0.2 s idle: the publisher is now leaving, lock released
    w.add("r2", Completion(text="two"))  # reply_publish_seconds 0: as soon as possible, no flush needed
    deadline = time.monotonic() + 5
    while published != [["r1"], ["r2"]]:
        assert time.monotonic() < deadline, f"r2 not published without a flush: {published}"
        time.sleep(0.05)
    w.flush()
    w.close()
    assert not list(tmp_path.glob("*.wal.jsonl"))


@pytest.mark.parametrize("kind", ["*.parquet", "runs/*/*.arrow"])
def test_a_cache_file_cut_short_is_named_with_what_to_do(tmp_path: Path, kind: str) -> None:
    """A level-0 file or a run cut short (a disk fault, a copy stopped half way): lookups, counting and compaction
    fail naming the file and what to do (before: polars' "File out of specification: expected parquet magic
    bytes ... got <bytes>", naming no file); moved out, the rest of the cache reads again."""
    cache = ParquetReplyCache(tmp_path, l0_max=100, fanout=2, unit=8)
    write(cache, range(40))
    if kind.startswith("runs"):
        cache.compact(V, full=True)
    bad = sorted((tmp_path / V).glob(kind))[0]
    bad.write_bytes(bad.read_bytes()[:40])
    reads = [lambda: texts(cache, range(40)), lambda: cache.count(V)]
    if kind == "*.parquet":  # a bucket's one run is not read by a compaction (nothing to merge it with)
        reads.append(lambda: cache.compact(V, full=True))
    for read in reads:
        with pytest.raises(ReplyCacheUnreadable, match=f"reply cache file {bad} cannot be read .*move it out") as e:
            read()
        assert "\n" not in str(e.value)
    bad.rename(tmp_path / "aside")
    assert 0 < len(texts(cache, range(40))) < 40

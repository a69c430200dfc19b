"""The reply cache: scorer replies keyed by (record_id, scorer_version, attempt), a log-structured merge tree on this
machine's disk (ParquetReplyCache, under `<home>/cache/replies`), and, for a store apart from the home (object
storage, or a folder other machines share), the same replies as write-once objects in the store's filesystem
(ObjectReplyCache, with the on-disk cache as its local index). Writers append to a write-ahead log first, so a
killed process loses no answer (tests/e2e/test_kill_run.py)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from mira_dagster.core.scoring import Completion


def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    """`df` to `path` through a temporary file beside it: readers see no file or the whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)


class ParquetReplyCache:
    """Scorer replies keyed by (record_id, scorer_version, attempt), one directory per version, indexed by record_id.

    A record may hold several replies: `attempt` 0 is the first request, 1, 2, ... the re-asks of a reply that
    did not parse (see score_jobs). Files written before re-asking existed have no `attempt` column; their
    replies read as attempt 0.

    Layout of `<root>/<version>/` (a log-structured merge tree, so a lookup costs the same whatever the size):

    - `<uuid>.wal.jsonl`: each writer's write-ahead log. Every answer is appended at once, so even a SIGKILL
      loses none. The writer holds an exclusive `flock` on its log while alive: a log nobody holds belongs to a
      dead process.
    - `*.parquet` ("level 0"): one file per `batch_size` answers, written by the writers exactly as before (so
      the write path costs the same), and the flat files of caches written before the index existed.
    - `runs/<b>/L<level>-<time>-<uuid>.arrow`: sorted runs. `<b>` is the bucket, the first hex digit of
      record_id (which is a SHA-256 prefix, so uniform; ids that do not start with a hex digit get one from
      their BLAKE2 hash). A run is an uncompressed Arrow IPC file sorted by `key` (the first 8 bytes of
      record_id as a big-endian integer), then record_id and attempt.

    A lookup memory-maps the runs of the buckets asked for and binary-searches `key` (numpy `searchsorted` on the
    mapped column), then copies out only the matching rows (`take`): it touches O(ids x log rows) pages, never
    a whole column. Level 0 and live logs are scanned whole, but they are bounded (compaction keeps level 0
    under `l0_max` files). Why not sorted Parquet with row-group statistics: ids are hashes, so 10k of them
    fall in almost every row group of a 1.6M-row cache unless groups hold a handful of rows, and then the
    footers (parsed whole on open) grow with the cache; pyarrow, polars and DuckDB read no smaller unit than
    a row group. Arrow IPC read through a memory map gives row-level random access; the price is that runs
    are uncompressed (about 3x the disk of zstd Parquet for reply text).

    Compaction (`compact`, run by a writer after a flush once level 0 holds `l0_max` files, under an exclusive
    `flock` on `.compact.lock`, skipped if another process holds it): level-0 files and the logs of dead
    writers become one run per bucket; then, per bucket, whenever `fanout` runs share a level they are merged
    into one (size-tiered: level = log_fanout(rows / unit)). So each reply is rewritten about
    log_fanout(rows per bucket / unit) times, a bucket holds at most (fanout - 1) runs per level, and the
    largest merge is one bucket (1/16 of the cache). 16 buckets rather than 256: a lookup of 10k ids touches
    every bucket anyway, and each run it opens costs a few tens of microseconds.

    Crash safety: a run is written to a temporary name, fsync'd and renamed; only then are its inputs removed.
    Killed between the two, the same reply is in both, and readers keep the first written per
    (record_id, attempt), as they always did for a log and its batch file. Temporary files are ignored by
    readers and removed by the next compaction. Writers of one version in several processes never share a
    file (unique names) and compaction only removes the files it read (never a live writer's log). A reader
    that lists a file a compaction then removes lists again: the rename happened before the removal.
    """

    SCHEMA = {
        "record_id": pl.String,
        "text": pl.String,
        "finish_reason": pl.String,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "cached_tokens": pl.Int64,
        "created_at": pl.Datetime("us", "UTC"),
        "attempt": pl.Int64,
    }
    BUCKETS = "0123456789abcdef"
    takes_logs = True  # compaction merges the logs of dead writers

    def __init__(self, root: Path, *, l0_max: int = 16, fanout: int = 8, unit: int = 256) -> None:
        self.root = Path(root)
        self.l0_max = l0_max  # level-0 files that start a compaction
        self.fanout = fanout  # runs of one level that are merged into one
        self.unit = unit  # rows of a level-0 run

    def _dir(self, version: str) -> Path:
        return self.root / version

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriter:
        return ReplyWriter(self._dir(version), batch_size, after_flush=lambda: self.compact(version))

    # -- reading ---------------------------------------------------------------------------------------------
    def _runs(self, version: str, bucket: str) -> list[Path]:
        return sorted((self._dir(version) / "runs" / bucket).glob("*.arrow"))

    def _frame(self, version: str) -> pl.LazyFrame | None:
        """Every stored row (runs, level 0, logs), duplicates included: for counting and tests."""
        for attempt in range(_RETRIES):
            try:
                parts = [_run_rows(_open_run(path)) for bucket in self.BUCKETS for path in self._runs(version, bucket)]
                parts += self._unsorted(version, None)
                break
            except FileNotFoundError:  # a compaction removed a file listed: its rows are in a run by now
                if attempt == _RETRIES - 1:
                    raise
        return pl.concat(parts).lazy() if parts else None

    def _unsorted(self, version: str, ids: list[str] | None) -> list[pl.DataFrame]:
        """The rows of level 0 and the logs, of `ids` (all if None)."""
        d = self._dir(version)
        parts = []
        files = sorted(d.glob("*.parquet"))
        if files:
            # the schema is given, so files of the old format (no `attempt`) mix with new ones in any order
            frame = pl.scan_parquet(files, glob=False, schema=self.SCHEMA, missing_columns="insert")
            if ids is not None:
                frame = frame.filter(pl.col("record_id").is_in(ids))
            parts.append(_collect(frame, files))  # a file gone since the listing: FileNotFoundError
        wal_rows = [row for wal in sorted(d.glob("*.wal.jsonl")) for row in _read_wal(wal)]
        if ids is not None:
            wanted = set(ids)
            wal_rows = [row for row in wal_rows if row["record_id"] in wanted]
        if wal_rows:
            parts.append(pl.DataFrame(wal_rows, schema=self.SCHEMA))
        return [p.with_columns(pl.col("attempt").fill_null(0)) for p in parts]

    def _lookup(self, version: str, ids: list[str]) -> list[pl.DataFrame]:
        found: list[pa.Table] = []
        by_bucket: dict[str, list[str]] = {}
        for rid in ids:
            by_bucket.setdefault(_bucket(rid), []).append(rid)
        for bucket, rids in by_bucket.items():
            runs = self._runs(version, bucket)
            if not runs:
                continue
            wanted = np.unique(_keys(rids))
            for path in runs:
                table = _open_run(path)
                keys = table.column("key").chunk(0).to_numpy() if table.num_rows else np.empty(0, np.uint64)
                lo, hi = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
                n = hi - lo
                if not n.any():
                    continue
                starts = np.repeat(lo[n > 0], n[n > 0])
                offsets = np.arange(starts.size) - np.repeat(np.cumsum(n[n > 0]) - n[n > 0], n[n > 0])
                found.append(table.take(pa.array(starts + offsets)))
        parts = [_run_rows(pa.concat_tables(found))] if found else []
        return parts + self._unsorted(version, ids)

    def _replies(self, version: str, record_ids: Sequence[str]) -> pl.DataFrame | None:
        """One row per (record_id, attempt), in attempt order. A crash between compacting a log and removing it
        leaves the same reply twice, and two runs at once may answer the same attempt: the first written wins."""
        ids = sorted(set(record_ids))
        if not ids:
            return None
        for attempt in range(_RETRIES):
            try:
                parts = self._lookup(version, ids)
                break
            except FileNotFoundError:  # a compaction removed a file listed: its rows are in a run by now
                if attempt == _RETRIES - 1:
                    raise
        if not parts:
            return None
        return (
            pl.concat(parts)
            .filter(pl.col("record_id").is_in(ids))  # runs match on an 8-byte key prefix
            .sort(["attempt", "created_at"])
            .unique(subset=["record_id", "attempt"], keep="first", maintain_order=True)
        )

    def load(self, version: str, record_ids: Sequence[str]) -> dict[str, Completion]:
        """Each record's last attempt. score_jobs asks no more once a reply parses, so a record's `ok` reply, if
        it has one, is its last attempt: what readers of the replies behind `ok` scores need."""
        df = self._replies(version, record_ids)
        if df is None:
            return {}
        return {rid: comps[-1] for rid, comps in _by_record(df).items()}

    def load_attempts(self, version: str, record_ids: Sequence[str]) -> dict[str, list[Completion]]:
        """Every attempt of each record that has any, in attempt order (index i is attempt i when none is missing)."""
        df = self._replies(version, record_ids)
        return {} if df is None else _by_record(df)

    def count(self, version: str) -> int:
        frame = self._frame(version)
        return 0 if frame is None else frame.select(pl.col("record_id").n_unique()).collect().item()

    # -- compaction ------------------------------------------------------------------------------------------
    def compact(self, version: str, *, full: bool = False, wait: bool = False) -> bool:
        """Merge level 0 and dead writers' logs into runs, then runs of a level into the next. `full`: every
        level-0 file whatever their number, and each bucket into a single run. Returns False without doing
        anything when another process is compacting this version (unless `wait`) or there is nothing to do."""
        d = self._dir(version)
        if not full and _count_l0(d) < self.l0_max:
            return False
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".compact.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            for tmp in (d / "runs").glob("*/.*.tmp"):  # only compaction writes there, and we hold the lock
                tmp.unlink(missing_ok=True)
            self._compact_l0(d, full)
            if full:
                for bucket in self.BUCKETS:
                    self._merge_bucket(d / "runs" / bucket, full=True)
        return True

    def _compact_l0(self, d: Path, full: bool) -> None:
        files = sorted(d.glob("*.parquet"))
        if not full and len(files) < self.l0_max:
            return
        dead = _dead_logs(d) if self.takes_logs else []
        try:
            # in chunks of `l0_max` files (at most _CHUNK_ROWS rows), each followed by its merges, as the writers'
            # compactions go: an old flat cache is migrated in bounded memory into the shape the writers build
            chunk: list[Path] = []
            rows = 0
            for i, path in enumerate(files):
                chunk.append(path)
                rows += _footer(path).num_rows
                if rows >= _CHUNK_ROWS or len(chunk) >= self.l0_max or i == len(files) - 1:
                    for bucket in self._to_runs(d, chunk, [wal for wal, _ in dead] if i == len(files) - 1 else []):
                        self._merge_bucket(d / "runs" / bucket, full=False)
                    chunk, rows = [], 0
            if not files and dead:
                self._to_runs(d, [], [wal for wal, _ in dead])
        finally:
            for _, fh in dead:
                fh.close()

    def _to_runs(self, d: Path, files: list[Path], wals: list[Path]) -> set[str]:
        parts = []
        if files:
            scan = pl.scan_parquet(files, glob=False, schema=self.SCHEMA, missing_columns="insert")
            parts.append(_collect(scan, files))
        wal_rows = [row for wal in wals for row in _read_wal(wal)]
        if wal_rows:
            parts.append(pl.DataFrame(wal_rows, schema=self.SCHEMA))
        df = pl.concat(parts).with_columns(pl.col("attempt").fill_null(0)) if parts else None
        touched = set()
        if df is not None and df.height:
            df = df.with_columns(
                key=pl.Series(_keys(df["record_id"].to_list()), dtype=pl.UInt64),
                bucket=pl.Series(_buckets(df["record_id"].to_list()), dtype=pl.String),
            )
            for (bucket,), part in df.partition_by("bucket", as_dict=True, maintain_order=True).items():
                self._write_run(d / "runs" / bucket, part.drop("bucket"))
                touched.add(bucket)
        _fsync_dir(d / "runs", touched)
        for path in [*files, *wals]:  # only now: killed before this, the rows are in both (readers dedupe)
            path.unlink(missing_ok=True)
        return touched

    def _merge_bucket(self, bucket_dir: Path, full: bool) -> None:
        while True:
            runs = sorted(bucket_dir.glob("*.arrow"))
            by_level: dict[int, list[Path]] = {}
            for path in runs:
                by_level.setdefault(_level_of(path), []).append(path)
            if full:
                group = runs if len(runs) > 1 else []
            else:
                # the oldest `fanout` runs of the lowest level that has that many
                group = next(
                    (paths[: self.fanout] for _, paths in sorted(by_level.items()) if len(paths) >= self.fanout), []
                )
            if not group:
                return
            merged = pl.concat([_run_rows(_open_run(path), key=True) for path in group])
            # at least one level up, so that merging always progresses even when the sizes fall short
            self._write_run(bucket_dir, merged, min_level=1 + max(_level_of(path) for path in group))
            _fsync_dir(bucket_dir.parent, {bucket_dir.name})
            for path in group:
                path.unlink(missing_ok=True)

    def _write_run(self, bucket_dir: Path, df: pl.DataFrame, min_level: int = 0) -> None:
        """`df` with `key`: first written per (record_id, attempt), sorted, to an fsync'd run file."""
        df = (
            df.sort(["attempt", "created_at"])
            .unique(subset=["record_id", "attempt"], keep="first", maintain_order=True)
            .sort(["key", "record_id", "attempt"])
        )
        level, size = 0, self.unit * self.fanout
        while df.height >= size:
            level, size = level + 1, size * self.fanout
        level = max(level, min_level)
        bucket_dir.mkdir(parents=True, exist_ok=True)
        name = f"L{level}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.arrow"
        tmp = bucket_dir / f".{name}.tmp"
        table = df.select(list(_RUN_SCHEMA.names)).to_arrow().cast(_RUN_SCHEMA).combine_chunks()
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, _RUN_SCHEMA) as out:
            out.write_table(table)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, bucket_dir / name)


class ObjectReplyCache(ParquetReplyCache):
    """The reply cache in a store apart from the home (a store URL: object storage or a shared folder, through the
    store's fsspec filesystem): `<url>/replies/<version>/L<level>-<time>-<uuid>.parquet`,
    with, for a merged object, `<its name>.inputs.json` (the objects it was merged from).

    Object stores have no append, no rename and no lock, so every object is written once under a unique name with
    a create-only PUT (`If-None-Match: *`) and never changed: two writers, on one machine or many, never clobber
    each other. A writer appends each answer to its local write-ahead log (as on disk: a killed process loses
    nothing on this machine), and its publisher thread (never the scoring loop: see ReplyWriter) PUTs a level-0
    object of the pending answers once `batch_size` of them wait or the oldest is `flush_seconds` old
    (pipeline.reply_publish_seconds; even when no answer follows). With 0 (the default) each answer is published
    as soon as possible: group commit, at most one PUT in flight per writer, the next one taking every answer that
    arrived meanwhile, so another machine taking over from a dead one asks again only the answers whose PUT was in
    flight at the kill (plus its requests in flight); with more, also the answers of its last `flush_seconds`, in
    exchange for fewer, larger objects. The logs of dead writers of this machine are published by its next writer
    or compaction of the version.

    Compaction of the objects (by a writer after every `l0_max` level-0 objects it published and when its owner's
    flush has published everything, if it published any since its last; it merges when `l0_max` level-0 objects,
    or `fanout` of a higher level, are listed): the oldest of them are merged (first answer per
    (record_id, attempt) kept) into one new object a level up, its inputs listed first in its `.inputs.json`; only
    after that PUT are the inputs deleted. Two compactions at once at worst both merge the same inputs: the replies
    are then in two objects, which readers dedupe; no reply is ever only in a deleted object.

    Lookups go through a local index of the objects, the on-disk cache itself (`ParquetReplyCache` under
    `<home>/cache/replies`): each object listed and not yet in it is downloaded as one of its level-0 files (and
    its name appended to `<version>/ingested.txt`), and the local compaction makes sorted runs of them as on disk;
    a merged object whose inputs are all in the index is only noted, not downloaded. So a lookup costs one LIST
    plus the local indexed lookup, and each object is downloaded once per home. An object deleted by a compaction
    between the listing and its download is retried from a new listing. The index is a cache: deleted, it is
    rebuilt from the objects.
    """

    takes_logs = False  # dead writers' logs are published (`_rescue`), not merged into the local index

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        local: Path,
        *,
        l0_max: int = 16,
        fanout: int = 8,
        flush_seconds: float = 0.0,  # pipeline.reply_publish_seconds' default
    ) -> None:
        super().__init__(local, l0_max=l0_max, fanout=fanout)
        self.fs = fs
        self.objects = root.rstrip("/")  # the objects' folder in the store
        self.flush_seconds = flush_seconds

    def _key(self, version: str, name: str = "") -> str:
        return f"{self.objects}/{version}/{name}".rstrip("/")

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriter:
        self._rescue(version)
        published = 0

        def after_publish() -> None:
            # compaction LISTs the objects, about the price of the PUT itself: not after every PUT (one per answer
            # with flush_seconds 0), only once this writer has added `l0_max` level-0 objects since its last one
            nonlocal published
            published += 1
            if published >= self.l0_max:
                published = 0
                self.compact(version)

        def after_settled() -> None:
            # and once when the owner's flush has published everything (the end of a chunk or step), so that
            # writers publishing fewer than `l0_max` objects each still get the objects merged
            nonlocal published
            if published:
                published = 0
                self.compact(version)

        return ReplyWriter(
            self._dir(version),
            batch_size,
            after_flush=after_publish,
            publish=lambda df: self._put(version, df),
            flush_seconds=self.flush_seconds,
            after_settled=after_settled,
        )

    def _put(self, version: str, df: pl.DataFrame) -> str:
        """A new level-0 object of `df` (create-only: a name is never written twice), also added to the index."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd")
        name = _object_name(0)
        self.fs.pipe_file(self._key(version, name), buf.getvalue(), mode="create")
        _atomic_bytes(buf.getvalue(), self._dir(version) / name)
        self._note(version, [name])
        return name

    def _rescue(self, version: str) -> None:
        """Publish the logs of this machine's dead writers (nobody holds their lock); removed only after the PUT
        (killed before, they are published twice: readers dedupe)."""
        d = self._dir(version)
        if not d.is_dir():
            return
        dead = _dead_logs(d)
        try:
            rows = [row for wal, _ in dead for row in _read_wal(wal)]
            if rows:
                self._put(version, pl.DataFrame(rows, schema=self.SCHEMA))
            for wal, _ in dead:
                wal.unlink(missing_ok=True)
        finally:
            for _, fh in dead:
                fh.close()

    # -- the local index -------------------------------------------------------------------------------------
    def _names(self, version: str) -> list[str]:
        try:
            listed = self.fs.ls(self._key(version), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(n.rsplit("/", 1)[-1] for n in listed if n.endswith(".parquet"))

    def _ingested(self, version: str) -> set[str]:
        try:
            return set((self._dir(version) / "ingested.txt").read_text(encoding="utf-8").split())
        except FileNotFoundError:
            return set()

    def _note(self, version: str, names: list[str]) -> None:
        """`names` are in the index (appended: several processes of this machine may note at once)."""
        if names:
            with (self._dir(version) / "ingested.txt").open("a", encoding="utf-8") as fh:
                fh.write("".join(f"{name}\n" for name in names))

    def _covered(self, version: str, name: str, seen: set[str]) -> bool:
        """Whether a merged object's rows are all in the index already (its inputs are)."""
        if _level_of(Path(name)) == 0:
            return False
        try:
            inputs = json.loads(self.fs.cat_file(self._key(version, f"{name}.inputs.json")))
        except FileNotFoundError:
            return False
        return set(inputs) <= seen

    def _sync(self, version: str) -> None:
        """Add the objects listed and not yet in the index; again from a new listing if one was gone (compacted
        since the listing: its rows are in an object the next listing shows)."""
        d = self._dir(version)
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(_RETRIES):
            names, seen, added, gone = self._names(version), self._ingested(version), [], False
            for name in names:
                if name in seen:
                    continue
                if not self._covered(version, name, seen):
                    tmp = d / f".{name}.{uuid.uuid4().hex}.tmp"
                    try:
                        self.fs.get_file(self._key(version, name), str(tmp))
                        os.replace(tmp, d / name)
                    except FileNotFoundError:
                        gone = True
                        continue
                    finally:
                        tmp.unlink(missing_ok=True)
                added.append(name)
                seen.add(name)
            self._note(version, added)
            if any(_level_of(Path(name)) > 0 for name in added) or _count_l0(d) >= self.l0_max:
                self._index_l0(d)  # a merged object is large: sorted runs of it now, not a scan per lookup
            if len(seen) > 2 * len(names) + 64:  # forget names long compacted away (a race only costs a download)
                _atomic_bytes("".join(f"{n}\n" for n in sorted(seen & set(names))).encode(), d / "ingested.txt")
            if not gone:
                return
        raise FileNotFoundError(f"reply objects of {version} kept vanishing while listed")

    def _index_l0(self, d: Path) -> None:
        """The index's level-0 files into sorted runs, unless another process of this machine is compacting."""
        with (d / ".compact.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            self._compact_l0(d, full=True)

    def _lookup(self, version: str, ids: list[str]) -> list[pl.DataFrame]:
        self._sync(version)
        return super()._lookup(version, ids)

    def _frame(self, version: str) -> pl.LazyFrame | None:
        self._sync(version)
        return super()._frame(version)

    # -- compaction ------------------------------------------------------------------------------------------
    def compact(self, version: str, *, full: bool = False, wait: bool = False) -> bool:
        """Merge objects into fewer (see the class docstring; `full`: every object into one), then the local
        index as on disk. False when another process of this machine is compacting the version's objects (unless
        `wait`) or there was nothing to do."""
        self._rescue(version)
        d = self._dir(version)
        d.mkdir(parents=True, exist_ok=True)
        done = False
        with (d / ".objects.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            while group := self._group(self._names(version), full):
                if not self._merge(version, group):
                    break
                done = True
                if full:
                    break
        if full:
            self._sync(version)
        return super().compact(version, full=full, wait=wait) or done

    def _merge(self, version: str, group: list[str]) -> bool:
        with tempfile.TemporaryDirectory(dir=self.root.parent) as tmp:
            paths = []
            for name in group:
                try:
                    self.fs.get_file(self._key(version, name), f"{tmp}/{name}")
                except FileNotFoundError:  # another machine's compaction took it: it has them
                    return False
                paths.append(Path(tmp) / name)
            merged = (
                pl.scan_parquet(paths, glob=False, schema=self.SCHEMA, missing_columns="insert")
                .collect()
                .with_columns(pl.col("attempt").fill_null(0))
                .sort(["attempt", "created_at"])
                .unique(subset=["record_id", "attempt"], keep="first", maintain_order=True)
            )
        buf = io.BytesIO()
        merged.write_parquet(buf, compression="zstd")
        name = _object_name(1 + max(_level_of(Path(n)) for n in group))
        # the inputs first: a reader that sees the object can tell it holds nothing new to it
        self.fs.pipe_file(self._key(version, f"{name}.inputs.json"), json.dumps(group).encode(), mode="create")
        self.fs.pipe_file(self._key(version, name), buf.getvalue(), mode="create")
        # only now: killed before this, the rows are in both (readers dedupe)
        inputs = [self._key(version, n) for n in group]
        self.fs.rm(
            inputs + [f"{key}.inputs.json" for key, n in zip(inputs, group, strict=True) if not n.startswith("L0-")]
        )
        return True

    def _group(self, names: list[str], full: bool) -> list[str]:
        if full:
            return names if len(names) > 1 else []
        by_level: dict[int, list[str]] = {}
        for name in names:
            by_level.setdefault(_level_of(Path(name)), []).append(name)
        for level, group in sorted(by_level.items()):
            size = self.l0_max if level == 0 else self.fanout
            if len(group) >= size:
                return group[:size]
        return []


def _object_name(level: int) -> str:
    return f"L{level}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex}.parquet"


def _atomic_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_RETRIES = 5
_CHUNK_ROWS = 65536
_HEX = frozenset("0123456789abcdef")
_RUN_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("record_id", pa.string()),
        ("attempt", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("text", pa.large_string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
    ]
)


def _bucket(record_id: str) -> str:
    first = record_id[:1]
    if first in _HEX:
        return first
    return hashlib.blake2b(record_id.encode(), digest_size=1).hexdigest()[0]


def _buckets(record_ids: list[str]) -> list[str]:
    return [_bucket(rid) for rid in record_ids]


def _keys(record_ids: list[str]) -> np.ndarray:
    """The first 8 bytes of each id (zero-padded) as a big-endian integer: its order is the ids' byte order."""
    blob = b"".join(rid.encode()[:8].ljust(8, b"\0") for rid in record_ids)
    return np.frombuffer(blob, dtype=">u8").astype(np.uint64)


def _level_of(path: Path) -> int:
    return int(path.name.split("-", 1)[0].removeprefix("L"))


def _open_run(path: Path) -> pa.Table:
    """The run, memory-mapped: nothing is read until touched."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid as exc:
        raise ReplyCacheUnreadable(path, exc) from None


class ReplyCacheUnreadable(RuntimeError):
    """A file of the reply cache that cannot be read (cut short, overwritten): named, with what to do."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        super().__init__(
            f"reply cache file {path} cannot be read ({reason}); move it out of {path.parent} and run again: the "
            "replies it held are asked for again"
        )


def _footer(path: Path) -> Any:
    """A level-0 file's Parquet metadata, or ReplyCacheUnreadable naming it."""
    try:
        return pq.read_metadata(path)
    except FileNotFoundError:  # removed by a compaction since the listing: the callers' retry
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReplyCacheUnreadable(path, exc) from None


def _collect(frame: pl.LazyFrame, files: list[Path]) -> pl.DataFrame:
    """`frame.collect()` over level-0 files; when one of them cannot be read, ReplyCacheUnreadable naming it."""
    try:
        return frame.collect()
    except pl.exceptions.ComputeError:
        for path in files:
            _footer(path)
        raise


def _run_rows(table: pa.Table, *, key: bool = False) -> pl.DataFrame:
    """A run's rows in the cache's schema (with `key` when asked)."""
    df = pl.from_arrow(table if key else table.drop_columns(["key"]))
    assert isinstance(df, pl.DataFrame)
    cols = [pl.col(name).cast(dtype) for name, dtype in ParquetReplyCache.SCHEMA.items()]
    return df.select([*cols, pl.col("key")] if key else cols)


def _count_l0(d: Path) -> int:
    try:
        with os.scandir(d) as it:
            return sum(1 for entry in it if entry.name.endswith(".parquet"))
    except FileNotFoundError:
        return 0


def _dead_logs(d: Path) -> list[tuple[Path, Any]]:
    """Logs whose writer is gone (nobody holds their lock), each with the open file that now holds it."""
    dead = []
    for wal in sorted(d.glob("*.wal.jsonl")):
        try:
            fh = wal.open("rb")
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        dead.append((wal, fh))
    return dead


def _fsync_dir(parent: Path, names: set[str]) -> None:
    for name in names:
        fd = os.open(parent / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _by_record(df: pl.DataFrame) -> dict[str, list[Completion]]:
    out: dict[str, list[Completion]] = {}
    fields = list(Completion.model_fields)
    columns = [df[name].to_list() for name in ["record_id", *fields]]
    for rid, *values in zip(*columns, strict=True):
        out.setdefault(rid, []).append(Completion(**dict(zip(fields, values, strict=True))))
    return out


def _read_wal(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        fh = path.open("r", encoding="utf-8")
    except FileNotFoundError:  # its writer flushed it to a batch file, or a compaction took it, since the listing
        return rows
    with fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed writer
            row["created_at"] = datetime.fromisoformat(row["created_at"])
            rows.append(row)
    return rows


class ReplyWriter:
    """Appends answers to a write-ahead log and writes them to a Parquet file every `batch_size` answers.

    With `publish` (a store apart from the home) answers are PUT instead, by a publisher thread of the writer's (a
    daemon, started by the first `add`), never in the owner's thread: `add` only appends to the log and, when a
    batch is due, wakes the publisher. Pending answers are published once `batch_size` of them wait, once the
    oldest is `flush_seconds` old (0: at once), or on `flush`. Group commit: at most one PUT is in flight; the
    answers that arrive meanwhile go to a new log and are all taken by the next PUT. To take a batch the publisher
    rotates the log under the lock (the current log and its locked handle join the logs awaiting publication; the
    next `add` opens a new one), PUTs outside the lock, and only after the PUT succeeded removes exactly the logs
    whose rows it held. A failed PUT puts its rows back in front of the pending ones, its logs stay (locked, on
    disk: a later writer or compaction publishes them if this process dies), and its error is raised once by the
    owner's next `add` (after the log write: that answer is kept) or `flush`; the publisher tries again only
    after the next `add` or `flush`, never in a loop. `after_flush` (compaction) runs in the publisher after a
    successful PUT, outside the lock; its failure is raised the same way. `flush` publishes everything pending
    and waits for it (an in-flight PUT and its compaction included); `close` (and `__exit__`, after the flush)
    stops the publisher. A publisher with nothing to do for `_IDLE_SECONDS` ends (the next `add` starts another),
    so a writer left unflushed neither keeps a thread nor the process alive.
    """

    _IDLE_SECONDS = 5.0

    def __init__(
        self,
        directory: Path,
        batch_size: int,
        after_flush: Callable[[], object] | None = None,
        *,
        publish: Callable[[pl.DataFrame], object] | None = None,
        flush_seconds: float | None = None,
        after_settled: Callable[[], object] | None = None,
    ) -> None:
        self.dir = directory
        self._after_settled = after_settled  # a store apart: run by `flush` once everything is published
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []  # not yet written (or published), in the logs below
        self._wal: Path | None = None  # the log `add` appends to
        self._fh: Any = None
        self._after_flush = after_flush
        # a store apart: `publish` PUTs the pending rows (instead of a file in `directory`), by `_publisher`
        self._publish = publish
        self._flush_seconds = flush_seconds or 0.0
        self._oldest = 0.0  # when the oldest pending row arrived (monotonic)
        # the publisher's state, under `_cond`'s lock, shared by the owner's thread and the publisher's
        self._cond = threading.Condition(threading.Lock())
        self._retired: list[tuple[Path, Any]] = []  # rotated logs (and their locked handles) awaiting publication
        self._thread: threading.Thread | None = None
        self._busy = False  # a PUT (or the compaction after it) in flight
        self._flushing = False  # the owner waits in `flush`: publish whatever is pending
        self._held = False  # the last PUT failed: wait for the next add or flush before trying again
        self._stop = False
        self._error: BaseException | None = None  # the publisher's failure, for the owner to raise

    def __enter__(self) -> ReplyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            self.close()

    def add(self, record_id: str, comp: Completion, attempt: int = 0) -> None:
        """`attempt`: 0 for a record's first request, n for its n-th re-ask."""
        row = {"record_id": record_id, **comp.model_dump(), "created_at": datetime.now(UTC), "attempt": attempt}
        if self._publish is not None:
            with self._cond:
                self._log(row)
                self._raise_error()  # after the log: this answer is kept whatever happened to the earlier ones
                held, self._held = self._held, False
                self._start()
                # wake the publisher only when it has something new to decide (a first pending row: its timer)
                if held or len(self.rows) == 1 or len(self.rows) >= self.batch_size or not self._flush_seconds:
                    self._cond.notify_all()
            return
        with self._cond:
            self._log(row)
            if len(self.rows) < self.batch_size:
                return
            written = self._write_batch()
        self._compact(written)

    def flush(self) -> None:
        """Write (or publish) the pending rows now and wait for it; raises the publisher's failure if it had one
        since the last call (the rows then stay pending, for the next flush)."""
        if self._publish is None:
            with self._cond:
                written = self._write_batch()
            self._compact(written)
            return
        with self._cond:
            self._raise_error()
            self._held = False
            self._flushing = True
            try:
                while self.rows or self._busy:
                    self._start()
                    self._cond.notify_all()
                    self._cond.wait()
                    self._raise_error()
            finally:
                self._flushing = False
        if self._after_settled is not None:
            self._after_settled()  # outside the lock, in the owner's thread

    def close(self) -> None:
        """Stop the publisher (after its PUT in flight, if any); what is pending stays in the logs, unlocked, for
        a later writer's rescue (in this process too) or a flush of this writer to publish."""
        with self._cond:
            thread, self._stop = self._thread, True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            if self._fh is not None:
                self._retired.append((self._wal, self._fh))
                self._wal, self._fh = None, None
            for _, fh in self._retired:
                fh.close()  # releases the lock; closing again after a later publish is harmless

    def _log(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = f"{uuid.uuid4().hex}.wal.jsonl"
            tmp = self.dir / f".{name}.tmp"
            self._fh = tmp.open("a", encoding="utf-8")
            # held while this writer lives (the kernel drops it when the process dies): compaction takes only
            # the logs nobody holds. Locked before it gets its name, so no compaction ever sees it unlocked.
            fcntl.flock(self._fh, fcntl.LOCK_EX)
            self._wal = self.dir / name
            os.replace(tmp, self._wal)
        # One write per answer, flushed to the OS: a killed process keeps everything written so far.
        self._fh.write(json.dumps({**row, "created_at": row["created_at"].isoformat()}) + "\n")
        self._fh.flush()
        if not self.rows:
            self._oldest = time.monotonic()
        self.rows.append(row)

    def _raise_error(self) -> None:
        """The publisher's failure, once, in the owner's thread."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- the publisher (a store apart from the home) ---------------------------------------------------------
    def _start(self) -> None:
        """The publisher thread, unless it runs (under the lock)."""
        if self._thread is None:
            self._stop = False
            # a daemon: a writer left unflushed never keeps the process alive (its logs are rescued later)
            self._thread = threading.Thread(target=self._publisher, name=f"reply-publisher-{self.dir.name}")
            self._thread.daemon = True
            self._thread.start()

    def _wait_for_batch(self) -> bool:
        """Under the lock: wait until a batch is due (True), or until stopped or idle too long (False)."""
        while not self._stop:
            if self.rows and not self._held:
                due = self._flushing or len(self.rows) >= self.batch_size or not self._flush_seconds
                delay = 0.0 if due else self._oldest + self._flush_seconds - time.monotonic()
                if delay <= 0:
                    return True
                self._cond.wait(delay)
            elif not self._cond.wait(self._IDLE_SECONDS) and not (self.rows and not self._held) and not self._stop:
                return False  # nothing to do for a while: end; the next add starts a new publisher
        return False

    def _publisher(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._wait_for_batch():
                        # cleared under the same lock as the decision: an `add` right after starts a new publisher
                        # (cleared later, an `add` in between would see this one alive and wake nobody)
                        if self._thread is threading.current_thread():
                            self._thread = None
                        return
                    # take every pending row and rotate the log: the answers that arrive during the PUT go to a new
                    # log, so that the PUT's logs can be removed after it, and only they
                    rows, oldest, self.rows = self.rows, self._oldest, []
                    logs = [*self._retired, *([(self._wal, self._fh)] if self._fh is not None else [])]
                    self._retired, self._wal, self._fh = [], None, None
                    self._busy = True
                try:
                    try:
                        self._publish(pl.DataFrame(rows, schema=ParquetReplyCache.SCHEMA))
                    except BaseException as exc:  # kept for the owner; the rows stay pending and in their logs
                        with self._cond:
                            self.rows = rows + self.rows
                            self._oldest = oldest
                            self._retired = logs + self._retired
                            self._held = True
                            if self._error is None:
                                self._error = exc
                        continue
                    # The object now holds what the logs held; a crash between the two leaves duplicates, which
                    # readers drop (first answer per (record_id, attempt) wins).
                    try:
                        for wal, fh in logs:
                            fh.close()
                            wal.unlink(missing_ok=True)
                        self._compact(True)
                    except BaseException as exc:  # a log left behind only means duplicates, which readers drop
                        with self._cond:
                            if self._error is None:
                                self._error = exc
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._cond.notify_all()

    def _compact(self, written: bool) -> None:
        # outside the lock: answers keep going to the log while a compaction runs (they take file locks of their own)
        if written and self._after_flush is not None:
            self._after_flush()

    def _write_batch(self) -> bool:
        """Local disk: the batch to a Parquet file, then the log removed; False if there was nothing to write."""
        if not self.rows:
            return False
        df = pl.DataFrame(self.rows, schema=ParquetReplyCache.SCHEMA)
        now = datetime.now(UTC)
        _atomic_parquet(df, self.dir / f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet")
        self.rows = []
        # The Parquet file now holds what the log held; a crash between the two leaves duplicates, which
        # readers drop (first answer per (record_id, attempt) wins).
        if self._wal is not None:
            self._wal.unlink(missing_ok=True)
            self._wal = None
        self._fh.close()
        self._fh = None
        return True

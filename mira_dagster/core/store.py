"""Storage under MIRA_HOME: one Parquet file per table partition, a reply cache, and a DuckDB catalogue.

Writers never share a file: each partition is its own Parquet file, replaced atomically, and each batch
of scorer replies is a new Parquet file. So parallel partitions never wait on a lock, a crash leaves
either the old file or the new one, and the layout carries over to object storage unchanged.
`mira.duckdb` holds only views over those files (refreshed in a short transaction after each write),
for users to query with the duckdb CLI or Python.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.core.scoring import Completion

SQL_DIR = PROJECT_ROOT / "sql"
UNPARTITIONED = "all"


def load_sql(name: str) -> str:
    """SQL lives in sql/, one file per concern, loaded by name."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


@cache
def _macros() -> tuple[str, ...]:
    """sql/macro_*.sql, read once per process: every connection loads them."""
    return tuple(path.read_text(encoding="utf-8") for path in sorted(SQL_DIR.glob("macro_*.sql")))


def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp)
    os.replace(tmp, path)


def glob_escape(path: str) -> str:
    """A literal path inside a DuckDB glob: `[`, `*` and `?` in folder names (a MIRA_HOME of `runs[1]`) are
    wrapped in a character class, the escape DuckDB's glob understands."""
    return re.sub(r"[\[*?]", lambda m: f"[{m.group(0)}]", path)


def object_store(url: str) -> Any:
    """The fsspec filesystem of an s3:// tables URL. Endpoint from MIRA_S3_ENDPOINT_URL (an S3-compatible server;
    unset for AWS); credentials the usual AWS way (environment, profile, role), never from the registry."""
    if not url.startswith("s3://"):
        raise ValueError(f"MIRA_TABLES_URL must be an s3:// URL, got {url!r}")
    import s3fs  # the optional `s3` extra

    endpoint = os.environ.get("MIRA_S3_ENDPOINT_URL")
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {}, use_listings_cache=False)


class Store:
    """Tables under `home/tables`, or under MIRA_TABLES_URL (s3://bucket/prefix) when set; the reply cache,
    exports, discovered rubrics and the catalogue stay in `home` (they are written often, or by one process)."""

    def __init__(self, home: Path, tables_url: str | None = None) -> None:
        self.home = Path(home)
        self.tables_url = (tables_url or os.environ.get("MIRA_TABLES_URL") or "").rstrip("/") or None
        self.fs = object_store(self.tables_url) if self.tables_url else None
        # fsspec paths carry no scheme: bucket/prefix/tables
        self._remote_root = f"{self.tables_url.removeprefix('s3://')}/tables" if self.tables_url else ""
        self.tables_dir = self.home / "tables"
        self.exports_dir = self.home / "exports"
        self.catalog_path = self.home / "mira.duckdb"
        self.replies = ParquetReplyCache(self.home / "cache" / "replies")

    # -- tables --------------------------------------------------------------------------------
    def partition_path(self, table: str, partition: str | None = None) -> Path:
        return self.tables_dir / table / f"{partition or UNPARTITIONED}.parquet"

    def _remote_key(self, table: str, partition: str | None = None) -> str:
        return f"{self._remote_root}/{table}/{partition or UNPARTITIONED}.parquet"

    def write(self, table: str, df: pl.DataFrame, partition: str | None = None) -> str:
        if self.fs is not None:
            # one PUT per partition: readers see the old object or the new one, never a part
            key = self._remote_key(table, partition)
            with self.fs.open(key, "wb") as fh:
                df.write_parquet(fh)
            return f"s3://{key}"
        path = self.partition_path(table, partition)
        _atomic_parquet(df, path)
        self.refresh_catalog()
        return str(path)

    @contextmanager
    def table_writer(self, table: str, partition: str | None, schema: dict[str, Any]) -> Iterator[PartitionWriter]:
        """Write a partition batch by batch (memory bounded by the batch); it replaces the old one only when the
        block ends without an error and the writer was not discarded, so the last good partition stays otherwise."""
        final = self.partition_path(table, partition)
        staging_dir = final.parent if self.fs is None else self.home / "tmp"
        staging_dir.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
        writer = PartitionWriter(tmp, pl.DataFrame(schema=schema).to_arrow().schema)
        try:
            yield writer
            writer.close()
            if writer.discarded:
                return
            if self.fs is not None:
                self.fs.put_file(str(tmp), self._remote_key(table, partition))  # one PUT: old or new, never a part
            else:
                os.replace(tmp, final)
                self.refresh_catalog()
        finally:
            writer.close()
            tmp.unlink(missing_ok=True)

    def read(self, table: str, partition: str | None = None) -> pl.DataFrame:
        if partition is not None:
            if self.fs is not None:
                key = self._remote_key(table, partition)
                if not self.fs.exists(key):
                    raise FileNotFoundError(f"table {table!r} has no partition {partition!r} yet (s3://{key})")
                with self.fs.open(key, "rb") as fh:
                    return pl.read_parquet(fh)
            path = self.partition_path(table, partition)
            if not path.is_file():
                raise FileNotFoundError(f"table {table!r} has no partition {partition!r} yet ({path})")
            return pl.read_parquet(path, glob=False)  # a MIRA_HOME may hold [ * ?
        with self.connect() as con:
            return con.sql(f"SELECT * FROM {table}").pl()

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with a view per table over its Parquet files: no lock on any file."""
        con = duckdb.connect()
        if self.fs is not None:
            con.register_filesystem(self.fs)  # DuckDB reads s3:// through fsspec: no httpfs extension needed
        for stmt in self._view_statements():
            con.execute(stmt)
        for macro in _macros():  # helpers the queries in sql/ call
            con.execute(macro)
        return con

    def query(self, sql_name: str, frames: dict[str, pl.DataFrame] | None = None, **params: Any) -> pl.DataFrame:
        """Run sql/<sql_name>.sql over the tables, plus any in-memory frames registered by name."""
        with self.connect() as con:
            for name, df in (frames or {}).items():
                con.register(name, df)
            return con.sql(load_sql(sql_name), params=params or None).pl()

    def query_sql(self, sql: str) -> pl.DataFrame:
        """A one-off read over the tables (for small lookups; transforms belong in sql/)."""
        with self.connect() as con:
            return con.sql(sql).pl()

    def _view_statements(self) -> list[str]:
        stmts = []
        for name, glob in self._table_globs():
            quoted = glob.replace("'", "''")
            stmts.append(
                f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{quoted}', union_by_name = true)"
            )
        return stmts

    def tables(self) -> list[str]:
        """The tables that have at least one partition."""
        return [name for name, _ in self._table_globs()]

    def _table_globs(self) -> list[tuple[str, str]]:
        """(table, glob of its partition files) for every table with at least one partition."""
        if self.fs is not None:
            if not self.fs.exists(self._remote_root):
                return []
            return [
                (table_dir.rstrip("/").rsplit("/", 1)[-1], f"s3://{table_dir}/*.parquet")
                for table_dir in sorted(self.fs.ls(self._remote_root, detail=False))
                if self.fs.glob(f"{table_dir}/*.parquet")
            ]
        if not self.tables_dir.is_dir():
            return []
        return [
            (table_dir.name, glob_escape(str(table_dir)) + "/*.parquet")
            for table_dir in sorted(self.tables_dir.iterdir())
            if table_dir.is_dir() and any(table_dir.glob("*.parquet"))
        ]

    def refresh_catalog(self, attempts: int = 20) -> bool:
        """Recreate the catalogue's views; False if another process kept the file locked throughout.

        The views are a convenience (the data is in Parquet), so a user holding the catalogue open in the
        duckdb CLI delays this by at most a few seconds and never fails a run.
        """
        if self.fs is not None:
            return False  # the catalogue's views would need the same S3 access in every reader: not kept
        self.home.mkdir(parents=True, exist_ok=True)
        stmts = self._view_statements()
        for attempt in range(attempts):
            try:
                with duckdb.connect(str(self.catalog_path)) as con:
                    con.execute("BEGIN")
                    for stmt in stmts:
                        con.execute(stmt)
                    con.execute("COMMIT")
                return True
            except duckdb.IOException:
                time.sleep(min(0.05 * 2**attempt, 1.0))
        return False


class PartitionWriter:
    """Appends frames to a staging Parquet file; `discard()` keeps the old partition when the block ends."""

    def __init__(self, path: Path, schema: Any) -> None:
        self._schema = schema
        self._writer = pq.ParquetWriter(path, schema)
        self.rows = 0
        self.discarded = False

    def __call__(self, df: pl.DataFrame) -> None:
        if df.height:
            self._writer.write_table(df.to_arrow().cast(self._schema))
            self.rows += df.height

    def discard(self) -> None:
        self.discarded = True

    def close(self) -> None:
        self._writer.close()


class ParquetReplyCache:
    """Scorer replies keyed by (record_id, scorer_version, attempt), one directory per version.

    A record may hold several replies: `attempt` 0 is the first request, 1, 2, ... the re-asks of a reply that
    did not parse (see score_jobs). Files written before re-asking existed have no `attempt` column; their
    replies read as attempt 0.

    Each answer is appended at once to a write-ahead log (a JSONL file of this writer's own), so even a
    SIGKILL loses no answer the server gave; every `batch_size` answers the log is compacted into a Parquet
    file and removed. Readers take both, so logs left by a killed process still count.
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

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, version: str) -> Path:
        return self.root / version

    def writer(self, version: str, batch_size: int = 256) -> ReplyWriter:
        return ReplyWriter(self._dir(version), batch_size)

    def _frame(self, version: str) -> pl.LazyFrame | None:
        files = sorted(self._dir(version).glob("*.parquet"))
        # the schema is given, so files of the old format (no `attempt`) mix with new ones in any order
        frames = [pl.scan_parquet(files, glob=False, schema=self.SCHEMA, missing_columns="insert")] if files else []
        wal_rows = [row for wal in sorted(self._dir(version).glob("*.wal.jsonl")) for row in _read_wal(wal)]
        if wal_rows:
            frames.append(pl.DataFrame(wal_rows, schema=self.SCHEMA).lazy())
        return pl.concat(frames).with_columns(pl.col("attempt").fill_null(0)) if frames else None

    def _replies(self, version: str, record_ids: Sequence[str]) -> pl.DataFrame | None:
        """One row per (record_id, attempt), in attempt order. A crash between compacting a log and removing it
        leaves the same reply twice, and two runs at once may answer the same attempt: the first written wins."""
        frame = self._frame(version)
        if frame is None or not record_ids:
            return None
        return (
            frame.filter(pl.col("record_id").is_in(list(set(record_ids))))
            .sort(["attempt", "created_at"])
            .unique(subset=["record_id", "attempt"], keep="first", maintain_order=True)
            .collect()
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


def _by_record(df: pl.DataFrame) -> dict[str, list[Completion]]:
    out: dict[str, list[Completion]] = {}
    fields = list(Completion.model_fields)
    for row in df.select(["record_id", *fields]).iter_rows():
        out.setdefault(row[0], []).append(Completion(**dict(zip(fields, row[1:], strict=True))))
    return out


def _read_wal(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed writer
            row["created_at"] = datetime.fromisoformat(row["created_at"])
            rows.append(row)
    return rows


class ReplyWriter:
    """Appends answers to a write-ahead log and compacts them into Parquet every `batch_size` answers."""

    def __init__(self, directory: Path, batch_size: int) -> None:
        self.dir = directory
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []
        self._wal: Path | None = None
        self._fh: Any = None

    def __enter__(self) -> ReplyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def add(self, record_id: str, comp: Completion, attempt: int = 0) -> None:
        """`attempt`: 0 for a record's first request, n for its n-th re-ask."""
        row = {"record_id": record_id, **comp.model_dump(), "created_at": datetime.now(UTC), "attempt": attempt}
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._wal = self.dir / f"{uuid.uuid4().hex}.wal.jsonl"
            self._fh = self._wal.open("a", encoding="utf-8")
        # One write per answer, flushed to the OS: a killed process keeps everything written so far.
        self._fh.write(json.dumps({**row, "created_at": row["created_at"].isoformat()}) + "\n")
        self._fh.flush()
        self.rows.append(row)
        if len(self.rows) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        now = datetime.now(UTC)
        name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        _atomic_parquet(pl.DataFrame(self.rows, schema=ParquetReplyCache.SCHEMA), self.dir / name)
        self.rows = []
        # The Parquet file now holds what the log held; a crash between the two leaves duplicates, which
        # readers drop (first answer per (record_id, attempt) wins).
        self._fh.close()
        self._fh = None
        if self._wal is not None:
            self._wal.unlink(missing_ok=True)
            self._wal = None

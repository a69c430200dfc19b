"""The table store: one Parquet file per table partition, durable files (rubrics, exports), and a DuckDB catalogue.

Writers never share a file: each partition is its own Parquet file, staged under `<home>/tmp` and put whole into
the store's filesystem (io/filesystem.py: on local disk a rename, on object storage one PUT), so parallel
partitions never wait on a lock and a crash leaves either the old file or the new one. The store lives under
MIRA_HOME, or under a store URL (MIRA_STORE_URL: s3://bucket/prefix, or another folder), both through one fsspec
filesystem. `mira.duckdb` (kept when the store is the home) holds only views over those files, refreshed in a
short transaction after each write, for users to query with the duckdb CLI or Python.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from mira_dagster.io.filesystem import store_filesystem
from mira_dagster.io.reply_cache import ObjectReplyCache, ParquetReplyCache
from mira_dagster.package_data import SQL_DIR

UNPARTITIONED = "all"


def load_sql(name: str) -> str:
    """SQL lives in mira_dagster/sql/, one file per concern, loaded by name."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


@cache
def _macros() -> tuple[str, ...]:
    """sql/macro_*.sql, read once per process: every connection loads them."""
    return tuple(path.read_text(encoding="utf-8") for path in sorted(SQL_DIR.glob("macro_*.sql")))


def _sql_path(path: Path) -> str:
    """A path as a DuckDB string literal's content (quotes doubled)."""
    return str(path).replace("'", "''")


def glob_escape(path: str) -> str:
    """A literal path inside a DuckDB glob: `[`, `*` and `?` in folder names (a MIRA_HOME of `runs[1]`) are
    wrapped in a character class, the escape DuckDB's glob understands."""
    return re.sub(r"[\[*?]", lambda m: f"[{m.group(0)}]", path)


class Store:
    """Tables under `<store>/tables`, the reply cache under `<store>/replies` (or `home/cache/replies`), exports
    under `<store>/exports` and discovered rubrics under `<store>/anchors`, where `<store>` is `home`, or the store
    URL (s3://bucket/prefix or a folder, setting `store_url`, MIRA_STORE_URL, alias MIRA_TABLES_URL). With a store
    URL, `home` holds only caches that can be deleted at any time (downloaded reply objects, copies of rubrics and
    exports, this machine's write-ahead logs of live writers, DuckDB's spill folder, staging files).
    mira_dagster/settings.py builds it from MIRA_HOME, MIRA_STORE_URL and MIRA_S3_ENDPOINT_URL.
    `reply_publish_seconds` (pipeline setting): with a store URL, how long an answer may wait in this machine's log
    before it is published (ObjectReplyCache's `flush_seconds`)."""

    def __init__(
        self,
        home: Path,
        tables_url: str | None = None,
        memory_limit: str = "4GB",
        temp_directory: Path | None = None,
        s3_endpoint_url: str | None = None,
        *,
        store_url: str | None = None,
        reply_publish_seconds: float = 0.0,
    ) -> None:
        self.home = Path(home)
        # DuckDB spills past memory_limit into temp_directory instead of failing a corpus-sized query
        self.memory_limit = memory_limit
        self.temp_directory = Path(temp_directory) if temp_directory else self.home / "duckdb_tmp"
        self.url = (store_url or tables_url or "").rstrip("/") or None
        self.tables_url = self.url  # the name before the whole store moved there
        # the one filesystem every file of the store goes through, and the store's path in it (no scheme)
        self.fs, self._root = store_filesystem(self.url or self.home, s3_endpoint_url)
        # Whether the store is the home folder itself (no store URL): then the home's files are the store's, the
        # reply cache is the on-disk one and the catalogue is kept; a store apart from the home (an s3:// URL or
        # another folder, the same code for both) makes the home a cache.
        self.home_is_store = self.location("") == os.path.abspath(self.home)
        self.tables_dir = self.home / "tables"
        self.exports_dir = self.home / "exports"
        self.catalog_path = self.home / "mira.duckdb"
        self.staging_dir = self.home / "tmp"  # files are written here, then put whole into the store
        local_replies = self.home / "cache" / "replies"
        self.replies: ParquetReplyCache = (
            ParquetReplyCache(local_replies)
            if self.home_is_store
            else ObjectReplyCache(self.fs, f"{self._root}/replies", local_replies, flush_seconds=reply_publish_seconds)
        )

    # -- durable files (rubrics, exports): `<store>/<rel>`, with `home/<rel>` its local copy -------------------
    def store_path(self, rel: str) -> str:
        """`rel` (relative to the store) as a path of the store's filesystem."""
        return f"{self._root}/{rel}".rstrip("/")

    def location(self, rel: str) -> str:
        """Where `rel` (a path relative to the store: anchors/..., exports/...) durably lives, for metadata."""
        return self.fs.unstrip_protocol(self.store_path(rel))

    def exists(self, rel: str) -> bool:
        """Whether `rel` (a file or folder relative to the store) exists where it durably lives."""
        return self.fs.exists(self.store_path(rel))

    def publish_file(self, rel: str) -> str:
        """Make `home/<rel>` (just written) durable: put whole into the store (readers see the old file or the new
        one; nothing to do when the store is the home). Returns its location."""
        self.fs.put_file(str(self.home / rel), self.store_path(rel))
        return self.location(rel)

    def fetch_file(self, rel: str) -> Path | None:
        """The local path of `rel`, refreshed from the store; None if it does not exist (then the local copy, if
        any, is removed, as the store says it is gone)."""
        local = self.home / rel
        if self.location(rel) == os.path.abspath(local):  # the store is the home: the file is its own copy
            return local if local.exists() else None
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            self.fs.get_file(self.store_path(rel), str(tmp))
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            local.unlink(missing_ok=True)
            return None
        os.replace(tmp, local)
        return local

    # -- tables --------------------------------------------------------------------------------
    def partition_path(self, table: str, partition: str | None = None) -> Path:
        """The partition's file under the home (where it is when the store is the home)."""
        return self.tables_dir / table / f"{partition or UNPARTITIONED}.parquet"

    def _key(self, table: str, partition: str | None = None) -> str:
        """The partition's path in the store's filesystem."""
        return self.store_path(f"tables/{table}/{partition or UNPARTITIONED}.parquet")

    def partitions(self, table: str) -> list[str]:
        """The table's partition names (its Parquet files' stems); listed, not globbed: a home may hold glob
        characters."""
        try:
            names = self.fs.ls(self.store_path(f"tables/{table}"), detail=False)
        except FileNotFoundError:
            return []
        return sorted(Path(n).stem for n in names if n.endswith(".parquet"))

    def remove(self, table: str, partition: str | None = None) -> None:
        """Delete one partition of a table (the catalogue is the caller's to refresh, once for all it removed)."""
        self.fs.rm(self._key(table, partition))

    @contextmanager
    def _staged(self, name: str) -> Iterator[Path]:
        """A fresh local staging path (removed afterwards, whatever happens) for a file to be put into the store."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.staging_dir / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _publish(self, staged: Path, table: str, partition: str | None) -> str:
        """Put a staged Parquet file whole as the table's partition: old or new for every reader, never a part."""
        key = self._key(table, partition)
        self.fs.put_file(str(staged), key)
        self.refresh_catalog()
        return self.fs.unstrip_protocol(key)

    def write(self, table: str, df: pl.DataFrame, partition: str | None = None) -> str:
        """`df` as the table's partition (replacing it whole); returns where it lives."""
        with self._staged(f"{table}.{partition or UNPARTITIONED}.parquet") as tmp:
            df.write_parquet(tmp)
            return self._publish(tmp, table, partition)

    @contextmanager
    def table_writer(self, table: str, partition: str | None, schema: dict[str, Any]) -> Iterator[PartitionWriter]:
        """Write a partition batch by batch (memory bounded by the batch); it replaces the old one only when the
        block ends without an error and the writer was not discarded, so the last good partition stays otherwise."""
        with self._staged(f"{table}.{partition or UNPARTITIONED}.parquet") as tmp:
            writer = PartitionWriter(tmp, pl.DataFrame(schema=schema).to_arrow().schema)
            try:
                yield writer
                writer.close()
                if not writer.discarded:
                    self._publish(tmp, table, partition)
            finally:
                writer.close()

    def read(self, table: str, partition: str | None = None) -> pl.DataFrame:
        """A partition (FileNotFoundError naming it if it was never written), or with no partition the whole table."""
        if partition is not None:
            key = self._key(table, partition)
            try:
                with self.fs.open(key, "rb") as fh:
                    return pl.read_parquet(fh)
            except FileNotFoundError:
                where = self.fs.unstrip_protocol(key)
                raise FileNotFoundError(f"table {table!r} has no partition {partition!r} yet ({where})") from None
        with self.connect() as con:
            return con.sql(f"SELECT * FROM {table}").pl()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB with a view per table over its Parquet files: no lock on any file. Bounded by
        memory_limit: larger sorts, joins and aggregates spill to temp_directory. A table with a file DuckDB cannot
        read (cut short, overwritten) gets no view: only a query that reads that table fails, naming the file."""
        con = duckdb.connect(
            config={"memory_limit": self.memory_limit, "temp_directory": _sql_path(self.temp_directory)}
        )
        unreadable: dict[str, str] = {}
        try:
            # DuckDB reads the store's files through its fsspec filesystem (s3:// without the httpfs extension);
            # plain paths stay with DuckDB's own local reader
            con.register_filesystem(self.fs)
            unreadable = _views(con, self._view_statements())
            for macro in _macros():  # helpers the queries in sql/ call
                con.execute(macro)
            yield con
        except duckdb.CatalogException as exc:
            name = next((n for n in unreadable if f"Table with name {n} does not exist" in str(exc)), None)
            if name is None:
                raise
            raise UnreadableTable(
                f"table {name} cannot be read: {unreadable[name]}; delete that file and run `mira run` again (a "
                "source's records and scores and the corpus tables are rebuilt from the inputs and the reply cache; "
                "another table may need `--force`)"
            ) from None
        finally:
            con.close()

    def query(self, sql_name: str, frames: dict[str, pl.DataFrame] | None = None, **params: Any) -> pl.DataFrame:
        """Run sql/<sql_name>.sql over the tables, plus any in-memory frames registered by name."""
        with self.connect() as con:
            for name, df in (frames or {}).items():
                con.register(name, df)
            return con.sql(load_sql(sql_name), params=params or None).pl()

    def query_sql(self, sql: str, **params: Any) -> pl.DataFrame:
        """A one-off read over the tables (for small lookups; transforms belong in sql/)."""
        with self.connect() as con:
            return con.sql(sql, params=params or None).pl()

    def materialize(
        self,
        table: str,
        sql_name: str,
        partition: str | None = None,
        *,
        keep_empty: bool = True,
        **params: Any,
    ) -> int:
        """Run sql/<sql_name>.sql and write its result as the table's partition with DuckDB's COPY: no row passes
        through Python, and DuckDB streams or spills, so memory stays bounded by memory_limit whatever the table's
        size. The partition is replaced atomically (staged, then put whole); with keep_empty=False an empty result
        leaves the old partition as it was. Returns the number of rows."""
        with self._staged(f"{table}.{partition or UNPARTITIONED}.parquet") as tmp:
            with self.connect() as con:
                # the SQL's own ORDER BY still holds; other results need not keep scan order (less buffering)
                con.execute("SET preserve_insertion_order = false")
                sql = load_sql(sql_name).strip().rstrip(";")
                copy = f"COPY ({sql}\n) TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
                rows = int(con.execute(copy, params or None).fetchone()[0])
            if rows or keep_empty:
                self._publish(tmp, table, partition)
            return rows

    def stream(self, sql_name: str, batch_rows: int = 20_000, **params: Any) -> Iterator[pa.RecordBatch]:
        """Run sql/<sql_name>.sql and yield its result in Arrow batches of at most batch_rows: for results too large
        to hold in Python at once (DuckDB sorts or spills within memory_limit; Python holds one batch)."""
        with self.connect() as con:
            yield from con.sql(load_sql(sql_name), params=params or None).to_arrow_reader(batch_rows)

    def _view_statements(self) -> list[tuple[str, str]]:
        """(table, the statement that creates its view) for every table with at least one partition."""
        view = "CREATE OR REPLACE VIEW \"{}\" AS SELECT * FROM read_parquet('{}', union_by_name = true)"
        return [(name, view.format(name, glob.replace("'", "''"))) for name, glob in self._table_globs()]

    def tables(self) -> list[str]:
        """The tables that have at least one partition."""
        return [name for name, _ in self._table_globs()]

    def _table_globs(self) -> list[tuple[str, str]]:
        """(table, glob of its partition files) for every table with at least one partition."""
        try:
            entries = self.fs.ls(self.store_path("tables"), detail=True)
        except FileNotFoundError:
            return []
        globs = []
        for folder in sorted(e["name"].rstrip("/") for e in entries if e["type"] == "directory"):
            if any(name.endswith(".parquet") for name in self.fs.ls(folder, detail=False)):
                globs.append((folder.rsplit("/", 1)[-1], glob_escape(self.fs.unstrip_protocol(folder)) + "/*.parquet"))
        return globs

    def refresh_catalog(self, attempts: int = 20) -> bool:
        """Recreate the catalogue's views; False if another process kept the file locked throughout, or if the
        store is apart from the home (its views would need the store's access in every reader: not kept).

        The views are a convenience (the data is in Parquet), so a user holding the catalogue open in the
        duckdb CLI delays this by at most a few seconds and never fails a run. A catalogue file DuckDB cannot open
        for another reason (not a database, a damaged log) is set aside as `mira.duckdb.unreadable-<time>` (kept:
        a user may have put their own tables there) and made again.
        """
        if not self.home_is_store:
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        stmts = self._view_statements()
        for attempt in range(attempts):
            try:
                try:
                    catalog = duckdb.connect(str(self.catalog_path))
                except duckdb.Error as exc:
                    if not _DAMAGED.search(str(exc)):  # a lock held by another process: wait for it
                        raise
                    if not self._set_aside():
                        return False
                    continue
                with catalog as con:
                    try:
                        self._create_views(con, stmts)
                    except duckdb.IOException:
                        raise
                    except duckdb.Error:  # a table with an unreadable file: the others' views, without its view
                        con.execute("ROLLBACK")
                        self._create_views(con, stmts, skip=self._unreadable(stmts))
                return True
            except duckdb.IOException:
                time.sleep(min(0.05 * 2**attempt, 1.0))
        return False

    def _set_aside(self) -> bool:
        """Rename the catalogue file DuckDB cannot open (and its write-ahead log) out of the way; False if it cannot
        be renamed either."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        try:
            for path in (self.catalog_path, self.catalog_path.with_name(self.catalog_path.name + ".wal")):
                if path.exists():
                    path.rename(path.with_name(f"{path.name}.unreadable-{stamp}"))
        except OSError:
            return False
        return True

    @staticmethod
    def _create_views(
        con: duckdb.DuckDBPyConnection, stmts: list[tuple[str, str]], skip: frozenset[str] = frozenset()
    ) -> None:
        """The views in one transaction (a reader sees all old or all new); a skipped table's view is dropped."""
        con.execute("BEGIN")
        for name, stmt in stmts:
            con.execute(f'DROP VIEW IF EXISTS "{name}"' if name in skip else stmt)
        con.execute("COMMIT")

    def _unreadable(self, stmts: list[tuple[str, str]]) -> frozenset[str]:
        """The tables whose view cannot be created (a file cut short or overwritten), tried one by one."""
        with duckdb.connect() as probe:
            probe.register_filesystem(self.fs)
            return frozenset(_views(probe, stmts))


# what DuckDB says of a catalogue file it cannot open because of its content, not a lock
_DAMAGED = re.compile(r"not a valid DuckDB database file|replaying WAL|WAL file|database file .* corrupt", re.I)


class UnreadableTable(RuntimeError):
    """A query read a table one of whose files DuckDB cannot read; the message names the file and DuckDB's reason."""


def _views(con: duckdb.DuckDBPyConnection, stmts: list[tuple[str, str]]) -> dict[str, str]:
    """Create the views one by one; the tables whose view cannot be created, with DuckDB's reason on one line."""
    unreadable = {}
    for name, stmt in stmts:
        try:
            con.execute(stmt)
        except duckdb.IOException:
            raise
        except duckdb.Error as exc:
            unreadable[name] = str(exc).strip().splitlines()[0]  # DuckDB's reason, naming the file; not its SQL
    return unreadable


# zstd level 1 (as polars writes the other tables): raw_records in half the bytes of Arrow's default snappy for the
# same CPU time (measured on the sample's records: 54 MB against 109 MB, 0.54-0.56 CPU s both; uncompressed
# would take 0.16 CPU s but 316 MB); DuckDB, polars and pyarrow read it
_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1}


class PartitionWriter:
    """Appends frames to a staging Parquet file; `discard()` keeps the old partition when the block ends."""

    def __init__(self, path: Path, schema: Any) -> None:
        self._schema = schema
        self._writer = pq.ParquetWriter(path, schema, **_WRITE_OPTIONS)
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

"""The export of the kept records, sharded by source, and a manifest, swapped in atomically so a reader sees the
old export or the new one, never a mix.

Two forms (pipeline.export_form): "original" (default), each record as its producer wrote it with the selection
columns added (core/export.py): `<source>-NNNNN.jsonl` for JSON inputs, `<source>-NNNNN.parquet` rows with the
input's columns for tables; "normalised", the normalised text fields and origin as `<source>-NNNNN.parquet`."""

from __future__ import annotations

import base64
import itertools
import json
import math
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Literal

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from mira_dagster.core.export import PREFIX, SELECTION_KEYS, original_line, with_selection
from mira_dagster.io.store import Store, load_sql


def export_kept(
    store: Store,
    manifest_extra: dict,
    shard_records: int = 100_000,
    form: Literal["original", "normalised"] = "original",
) -> dict:
    """Write the kept records, sharded by source, and a manifest, swapped in atomically. The rows stream from
    DuckDB in batches (sql/export_kept.sql; the original form through bucket files, _in_place), so memory is
    bounded by a batch, not by the kept text.

    With a store URL (s3:// or a folder) the export goes there (`store.location(EXPORT)`), through the store's
    filesystem: the shards to a new generation,
    `exports/selected_subset/<generation>/`, then `manifest.json` (its files named `<generation>/<shard>`, relative
    to it as on disk) with one PUT, the swap; the generations older than the previous one are removed after it."""
    staging = store.exports_dir / f".selected_subset.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    shards: _Shards | _OriginalShards = (
        _OriginalShards(staging, shard_records, stored_schemas(store))
        if form == "original"
        else _Shards(staging, shard_records)
    )
    batch_rows = min(shard_records, 20_000)
    try:
        if isinstance(shards, _OriginalShards):
            for bucket, rows in _in_place(store, batch_rows):
                shards.add(rows, bucket)
            shards.flush()
        else:
            for batch in store.stream("export_kept", batch_rows):
                shards.add(batch)
    except BaseException:
        shards.close()
        shutil.rmtree(staging, ignore_errors=True)  # the previous export stays as it was
        raise
    shards.close()
    files = shards.files
    manifest = {
        **manifest_extra,
        "form": form,
        **({"selection_keys": _SELECTION_DOC} if form == "original" else {}),
        "records": sum(f["records"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
        "files": files,
    }
    untyped = {k: sorted(v) for k, v in getattr(shards, "untyped", {}).items() if v}
    if untyped:  # said, never silent: these columns went out with the type their JSON values have
        manifest["columns_not_retyped"] = untyped
    if not store.home_is_store:  # a store apart from the home (object storage or a shared folder): no folder swap
        try:
            return _publish(store, staging, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    # Swap directories so readers see the old export or the new one, never a mix.
    out = store.exports_dir / "selected_subset"
    old = store.exports_dir / f".old.{uuid.uuid4().hex}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


EXPORT = "exports/selected_subset"


_SUB_ROWS = 1024  # places per sub-bucket: what is held sorted in memory at a time
# files open at once while spreading rows: a bucket per 20,000 kept records would open 2,500 at 50M kept records,
# over the common limit of 1,024 open files; beyond this many buckets the rows are spread in two passes
_MAX_OPEN = 256
_READ_ROWS = 512  # rows of the unsorted scan handed to Python at a time
# DuckDB's limit while it scans the kept rows: with the store's (4 GB by default) it kept more memory the more row
# groups it had read. _SCAN_MIB for the scan, plus _KEY_BYTES a kept record for the kept keys it holds (the temporary
# table and the join's hash table of it): 256 MiB alone failed at 978,171 kept (2M records), +200 B each passed
_SCAN_MIB = 256
_KEY_BYTES = 400
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _in_place(store: Store, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """sql/export_original.sql's rows in its order, without DuckDB sorting the kept records' text: DuckDB sorts
    their keys (sql/export_original_order.sql), the rows are read unsorted (sql/export_original_rows.sql) and each
    is appended to the bucket file of its place (bucket = pos // batch_rows) under the staging folder; then each
    bucket is split the same way into sub-buckets of _SUB_ROWS places, each read back and put in order (past
    _MAX_OPEN buckets, the rows go to files of several buckets first, each then split into its buckets). Yields
    (bucket, rows): a bucket is one batch_rows batch of the old stream (the table-row shards' row groups follow
    it). Memory: one read batch, then one sub-bucket, whatever the number of kept records or the size of a bucket;
    DuckDB scans with one thread (a second one kept more of each row group it read)."""
    folder = store.staging_dir / f".export-buckets.{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        with store.connect() as con:
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET threads = 1")
            con.execute(f"CREATE TEMP TABLE export_order AS {load_sql('export_original_order')}")
            kept = con.execute("SELECT count(*) FROM export_order").fetchall()[0][0]
            # the kept keys (the temporary table and the join's hash table of it) stay in memory beside the scan
            _lower_memory_limit(con, _SCAN_MIB + math.ceil(kept * _KEY_BYTES / 2**20))
            # places per first-pass file: a bucket, or as many buckets as keep the files open under _MAX_OPEN
            span = batch_rows * max(1, math.ceil(math.ceil(kept / batch_rows) / _MAX_OPEN))
            rows = con.sql(load_sql("export_original_rows")).to_arrow_reader(_READ_ROWS)
            spans = _spread(rows, folder, span)
        for t in spans:
            if span == batch_rows:
                buckets, where = [t], folder
            else:  # the second pass: this span's rows to its buckets (numbered as in one pass)
                where = folder / f"span-{t}"
                buckets = _spread(_batches(folder / f"{t}.arrow"), where, batch_rows)
                (folder / f"{t}.arrow").unlink()
            for b in buckets:
                subs = _spread(_batches(where / f"{b}.arrow"), where / str(b), _SUB_ROWS)
                (where / f"{b}.arrow").unlink()
                for sub in subs:
                    path = where / str(b) / f"{sub}.arrow"
                    with pa.OSFile(str(path)) as source:  # read, not mapped: RSS holds only this sub-bucket
                        table = ipc.open_file(source).read_all().sort_by("pos").drop_columns(["pos"])
                    path.unlink()
                    yield b, table  # the rows of places [sub * _SUB_ROWS, (sub + 1) * _SUB_ROWS), in order
                    del table
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _lower_memory_limit(con: duckdb.DuckDBPyConnection, mib: int) -> None:
    """Lower the connection's memory_limit to `mib`, never raise it (a store set below it keeps its own)."""
    current = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # as DuckDB prints it: '3.7 GiB'
    value, _, unit = str(current).partition(" ")
    if unit not in _UNITS:
        raise ValueError(f"export: DuckDB reports memory_limit {current!r}, a unit this code does not know")
    if float(value) * _UNITS[unit] > mib * 2**20:
        con.execute(f"SET memory_limit = '{mib}MiB'")


def _spread(batches: Iterable[pa.RecordBatch], folder: Path, size: int) -> list[int]:
    """Append each row of `batches` to `folder`/<pos // size>.arrow; returns the files' numbers in order."""
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    try:
        for batch in batches:
            bucket = pc.divide(batch["pos"], pa.scalar(size, batch.schema.field("pos").type))
            for b in pc.unique(bucket).to_pylist():
                if b not in writers:
                    writers[b] = ipc.new_file(folder / f"{b}.arrow", batch.schema)
                writers[b].write_batch(batch.filter(pc.equal(bucket, b)))
    finally:
        for writer in writers.values():
            writer.close()
    return sorted(writers)


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file, one at a time (read, not mapped)."""
    with pa.OSFile(str(path)) as source:
        reader = ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


def _publish(store: Store, staging: Path, manifest: dict) -> dict:
    """The staged shards as a new generation in the store, then the manifest pointing at it (put whole: readers see
    the old export or the new one); the generations older than the previous one (readers may still be in that one)
    are removed."""
    fs, root = store.fs, store.store_path(EXPORT)
    generation = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    for f in manifest["files"]:
        fs.put_file(str(staging / f["file"]), f"{root}/{generation}/{f['file']}")
        f["file"] = f"{generation}/{f['file']}"
    manifest = {**manifest, "generation": generation}
    try:
        previous = json.loads(fs.cat_file(f"{root}/manifest.json")).get("generation")
    except FileNotFoundError:
        previous = None
    fs.pipe_file(f"{root}/manifest.json", json.dumps(manifest, indent=2, default=str).encode())
    # only generations older than the previous one: an export running at the same time may have just put a newer
    # manifest, its generation must stay (names start with their time, so they sort by age)
    for folder in fs.ls(root, detail=False, refresh=True) if previous else []:
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        if name not in ("manifest.json", generation) and name < previous:
            fs.rm(folder, recursive=True)
    return manifest


_SELECTION_DOC = (
    f"added to each record as {', '.join(PREFIX + k for k in SELECTION_KEYS)}; the prefix takes one more '_' when "
    "a key of the record already starts with it; a value that is not an object is wrapped as {'messages': ...} or "
    "{'value': ...}, named by mira_wrapped (docs/sources.md, 'The export')"
)


_JSON_SLICE = 1024  # rows of a JSON run turned into Python at a time

TABLE_SCHEMAS = "table_schemas"  # per source: each table file's Arrow schema (raw_records writes it)
_NOT_TYPED = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError)


def schemas_frame(schemas: dict[str, pa.Schema]) -> pl.DataFrame:
    """A source's table_schemas partition: (origin_file, the schema's IPC bytes as base64)."""
    return pl.DataFrame(
        {
            "origin_file": list(schemas),
            "schema": [base64.b64encode(s.serialize().to_pybytes()).decode("ascii") for s in schemas.values()],
        },
        schema={"origin_file": pl.String, "schema": pl.String},
    )


def stored_schemas(store: Store, sources: Iterable[str] | None = None) -> dict[tuple[str, str], pa.Schema]:
    """(source, origin_file) -> the Arrow schema the file had when it was read (table files only)."""
    if TABLE_SCHEMAS not in store.tables():
        return {}
    wanted = None if sources is None else set(sources)
    out: dict[tuple[str, str], pa.Schema] = {}
    for source in store.partitions(TABLE_SCHEMAS):
        if wanted is None or source in wanted:
            for file, text in store.read(TABLE_SCHEMAS, source).iter_rows():
                out[(source, file)] = ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    return out


def typed_table(rows: list[dict], schema: pa.Schema | None, untyped: set[str]) -> pa.Table:
    """Table rows (as their originals' JSON gave them back) with their file's column types and order again: JSON
    has no date, timestamp, decimal or unsigned type, so these came back as text or another number type. A column
    whose values do not take its type keeps the type they have, and its name goes into `untyped`."""
    if schema is None:
        return pa.Table.from_pylist(rows)
    names = list(dict.fromkeys(k for row in rows for k in row))
    typed = set(schema.names)
    order = [n for n in schema.names if n in names] + [n for n in names if n not in typed]  # the input's first
    arrays: list[pa.Array] = []
    for name in order:
        values = [row.get(name) for row in rows]
        array = None
        if name in typed:
            kind = schema.field(name).type
            try:
                array = pa.array(values, type=kind)
            except _NOT_TYPED:
                try:
                    array = pa.array(values).cast(kind)
                except _NOT_TYPED:
                    untyped.add(name)
        arrays.append(array if array is not None else pa.array(values))
    return pa.Table.from_arrays(arrays, names=order)


class _OriginalShards:
    """<source>-NNNNN.jsonl (JSON inputs) and <source>-NNNNN.parquet (table rows) of at most `shard_records`
    records each, filled from batches ordered by source and form (sql/export_original.sql)."""

    def __init__(
        self, folder: Path, shard_records: int, schemas: dict[tuple[str, str], pa.Schema] | None = None
    ) -> None:
        self.folder, self.shard_records = folder, shard_records
        self.schemas = schemas or {}  # (source, origin_file) -> the file's column types (stored_schemas)
        self.untyped: dict[str, set[str]] = {}  # source -> columns whose input type could not be given back
        self.files: list[dict] = []
        self._jsonl: IO[str] | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._key: tuple[str, str] | None = None
        self._index: dict[str, int] = {}
        self._pending: list[pa.Table] = []  # the current run of table rows, written as one
        self._pending_key: tuple[int, str, str] | None = None

    def add(self, batch: pa.Table, bucket: int) -> None:
        """Rows in export order, each part of a batch `bucket` of the stream: JSON lines are written now, a run of
        table rows when it ends (its batch or its source and form change, or at flush())."""
        keys = list(zip(batch.column("source").to_pylist(), batch.column("original_form").to_pylist(), strict=True))
        starts = [0, *(i for i in range(1, len(keys)) if keys[i] != keys[i - 1]), len(keys)]
        for a, b in itertools.pairwise(starts):
            source, form = keys[a]
            run = batch.slice(a, b - a)
            if run.column("original").null_count:  # refuse rather than export something else
                raise ValueError(
                    f"export: source {source!r} has records read before originals were kept; ingest it again "
                    "(`mira run` does, or set pipeline.export_form: normalised)"
                )
            if (bucket, source, form) != self._pending_key:
                self.flush()
            if form == "row":  # one run of a batch is one write, a row group of the Parquet shard: held until it ends
                self._pending.append(run)
                self._pending_key = (bucket, source, form)
                continue
            # JSON lines as Python a slice at a time (the lines are the same whatever the slices)
            for at in range(0, run.num_rows, _JSON_SLICE):
                self._put(source, form, run.slice(at, _JSON_SLICE).to_pylist())

    def flush(self) -> None:
        """Write the run of table rows held (if any)."""
        if self._pending_key is not None and self._pending:
            _, source, form = self._pending_key
            self._put(source, form, pa.concat_tables(self._pending).to_pylist())
        self._pending, self._pending_key = [], None

    def _put(self, source: str, form: str, rows: list[dict]) -> None:
        while rows:
            self._room(source, form)
            room = self.shard_records - self.files[-1]["records"]
            head, rows = rows[:room], rows[room:]
            for part in self._parts(source, form, head):
                self._write(form, part)  # a part of other columns opens a shard of its own: counted there
                self.files[-1]["records"] += len(part)
                self.files[-1]["tokens"] += sum(r["n_tokens"] or 0 for r in part)

    def _parts(self, source: str, form: str, rows: list[dict]) -> list[list[dict]]:
        """Table rows in runs of one input schema (a file's column types: rows of one file share them)."""
        if form != "row" or not self.schemas:
            return [rows]
        return [list(g) for _, g in itertools.groupby(rows, key=lambda r: id(self._schema(source, r)))]

    def _schema(self, source: str, row: dict) -> pa.Schema | None:
        return self.schemas.get((source, row["origin_file"]))

    def _room(self, source: str, form: str) -> None:
        full = self.files and self.files[-1]["records"] >= self.shard_records
        if self._key != (source, form) or full:
            self._open(source, form)

    def _open(self, source: str, form: str, schema: pa.Schema | None = None) -> None:
        self.close()
        ext = "parquet" if form == "row" else "jsonl"
        index = self._index.get(f"{source}.{ext}", -1) + 1
        self._index[f"{source}.{ext}"] = index
        self._key = (source, form)
        name = f"{source}-{index:05d}.{ext}"
        self.files.append({"file": name, "source": source, "format": ext, "records": 0, "tokens": 0})
        if ext == "jsonl":
            self._jsonl = (self.folder / name).open("w", encoding="utf-8", newline="\n")
        elif schema is not None:
            self._parquet = pq.ParquetWriter(self.folder / name, schema)

    def _write(self, form: str, rows: list[dict]) -> None:
        if form != "row":
            assert self._jsonl is not None
            self._jsonl.writelines(original_line(r["original"], _selection(r)) + "\n" for r in rows)
            return
        assert self._key is not None
        source = self._key[0]
        values = [with_selection(json.loads(r["original"]), _selection(r)) for r in rows]
        table = typed_table(values, self._schema(source, rows[0]), self.untyped.setdefault(source, set()))
        if self._parquet is None:
            self._start_parquet(table.schema)
        elif not table.schema.equals(self._parquet.schema):
            try:  # a column all null in the first batch, an int column read as double: same columns, castable
                if set(table.schema.names) != set(self._parquet.schema.names):
                    raise ValueError("other columns")
                table = table.select(self._parquet.schema.names).cast(self._parquet.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                # other columns (files of one source with other schemas): a new shard holds them
                written = self.files[-1]
                source = written["source"]
                if written["records"] == 0:
                    self.files.pop()
                self._open(source, "row", table.schema)
        assert self._parquet is not None
        self._parquet.write_table(table)

    def _start_parquet(self, schema: pa.Schema) -> None:
        written = self.files[-1]
        self._parquet = pq.ParquetWriter(self.folder / written["file"], schema)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


def _selection(row: dict) -> dict:
    return {k: row[k] for k in SELECTION_KEYS}


class _Shards:
    """<source>-NNNNN.parquet files of at most `shard_records` rows each (so a training job can read them in
    parallel), filled from batches ordered by source."""

    def __init__(self, folder: Path, shard_records: int) -> None:
        self.folder, self.shard_records = folder, shard_records
        self.files: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._source: str | None = None
        self._index = 0

    def add(self, batch: pa.RecordBatch) -> None:
        # a batch may span sources (they come in order): each source's run of rows goes to its own shards
        table = pa.Table.from_batches([batch])
        sources = table["source"].to_numpy(zero_copy_only=False)
        starts = [0, *(np.flatnonzero(sources[1:] != sources[:-1]) + 1).tolist(), len(sources)]
        for a, b in itertools.pairwise(starts):
            self._add_source(str(sources[a]), table.slice(a, b - a))

    def _add_source(self, source: str, rows: pa.Table) -> None:
        while rows.num_rows:
            if self._writer is None or source != self._source or self.files[-1]["records"] >= self.shard_records:
                self._open(source, rows.schema)
            room = self.shard_records - self.files[-1]["records"]
            head, rows = rows.slice(0, room), rows.slice(room)
            self._writer.write_table(head)
            self.files[-1]["records"] += head.num_rows
            self.files[-1]["tokens"] += int(pc.sum(head["n_tokens"]).as_py() or 0)

    def _open(self, source: str, schema: pa.Schema) -> None:
        self.close()
        self._index = self._index + 1 if source == self._source else 0
        self._source = source
        name = f"{source}-{self._index:05d}.parquet"
        self._writer = pq.ParquetWriter(self.folder / name, schema)
        self.files.append({"file": name, "source": source, "records": 0, "tokens": 0})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

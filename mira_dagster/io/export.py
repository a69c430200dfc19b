"""The export of the kept records: their text, sharded by source into Parquet files, and a manifest, swapped in
atomically so a reader sees the old export or the new one, never a mix."""

from __future__ import annotations

import itertools
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mira_dagster.io.store import Store


def export_kept(store: Store, manifest_extra: dict, shard_records: int = 100_000) -> dict:
    """Write the kept records with their text, sharded by source, and a manifest, swapped in atomically. The rows
    stream from DuckDB in batches (sql/export_kept.sql), so memory is bounded by a batch, not by the kept text.

    With a store URL the export goes there (`store.location(EXPORT)`): the shards to a new generation,
    `exports/selected_subset/<generation>/`, then `manifest.json` (its files named `<generation>/<shard>`, relative
    to it as on disk) with one PUT, the swap; the generations older than the previous one are removed after it."""
    staging = store.exports_dir / f".selected_subset.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    shards = _Shards(staging, shard_records)
    try:
        for batch in store.stream("export_kept", batch_rows=min(shard_records, 20_000)):
            shards.add(batch)
    except BaseException:
        shards.close()
        shutil.rmtree(staging, ignore_errors=True)  # the previous export stays as it was
        raise
    shards.close()
    files = shards.files
    manifest = {
        **manifest_extra,
        "records": sum(f["records"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
        "files": files,
    }
    if store.fs is not None:
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


def _publish(store: Store, staging: Path, manifest: dict) -> dict:
    """The staged shards as a new generation on object storage, then the manifest pointing at it (one PUT: readers
    see the old export or the new one); the generations older than the previous one (readers may still be in that
    one) are removed."""
    fs, root = store.fs, store.location(EXPORT).removeprefix("s3://")
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

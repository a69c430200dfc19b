"""What each scoring step sends: the records it feeds its scorer, and `pending`, which says which of them would go out.

teacher_judgments judges a hashed sample of each of its unit's sources (judge_sample_per_source); teacher_labels
labels a source's teacher sample (core/sampling.teacher_sample); student_scores scores every record of a source. The
assets (defs/discovery.py, defs/scoring.py) read their records here, and the cost plan (io/cost.py) counts what
`pending` says of the same records, so the plan and the requests cannot disagree: `pending` runs the asset's own
scoring code (core/scoring.count_requests) with every request held back.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mira_dagster.core.config import MiraConfig, ScorerUnit
from mira_dagster.core.discovery import judgment_jobs
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import RECORD_SCHEMA, Record, record_rows, records_from
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.sampling import Split, sample_size
from mira_dagster.core.scoring import ChatBackend, Chunk, Job, RequestCount, Role, ScorerSpec, count_requests
from mira_dagster.io.store import Store, load_sql

Step = Literal["teacher_judgments", "teacher_labels", "student_scores"]
STEPS: tuple[Step, ...] = ("teacher_judgments", "teacher_labels", "student_scores")
ROLE_OF: dict[str, Role] = {"teacher_labels": "teacher", "student_scores": "student"}


def _raw_records(store: Store, source: str) -> None:
    if "raw_records" not in store.tables():
        raise FileNotFoundError(f"table 'raw_records' has no partition {source!r} yet")


# Rows of record text a scoring step holds at once: the reply cache is looked up a chunk at a time
# (scoring_chunk_records ids), but the chunk's text is read this many rows at a time as its jobs are made.
TEXT_BATCH_ROWS = 1024


@dataclass
class RecordChunk:
    """A chunk of a source's records: its ids (looked up in the reply cache in one go) and its rows, read
    `TEXT_BATCH_ROWS` at a time as they are taken; the rows must be taken before the next chunk is read."""

    ids: list[str]
    frames: Iterator[pl.DataFrame]


def record_chunks(store: Store, source: str, size: int, only: Collection[str] | None = None) -> Iterator[RecordChunk]:
    """The source's records `size` ids at a time, in stored order, from its Parquet partition (local or on object
    storage) read with Arrow: the ids of a chunk from the `record_id` column, its rows TEXT_BATCH_ROWS at a time
    from a second reader, so a step holds one text batch, not a chunk's text (a chunk of 20,000 long records is
    0.3-0.4 GB); only the ids in `only` when given."""
    _raw_records(store, source)
    path = store.store_path(f"tables/raw_records/{source}.parquet")
    if not store.fs.exists(path):  # a source never ingested has no records
        return
    wanted = None if only is None else pa.array(sorted(only), pa.string())
    # two handles of the one file, opened together: the ids run ahead of the text by at most a chunk
    with store.fs.open(path, "rb") as id_fh, store.fs.open(path, "rb") as text_fh:
        ids = _batches(pq.ParquetFile(id_fh), ["record_id"], size, wanted)
        text_file = pq.ParquetFile(text_fh)
        # a partition written before a column existed reads it as null (as DuckDB's union of the files did)
        present = [c for c in RECORD_SCHEMA if c in text_file.schema_arrow.names]
        text = _Rows(_batches(text_file, present, TEXT_BATCH_ROWS, wanted))
        chunk: list[str] = []
        for batch in ids:
            chunk += batch.column("record_id").to_pylist()
            while len(chunk) >= size:
                head, chunk = chunk[:size], chunk[size:]
                yield RecordChunk(head, text.take(head))
                text.skip_rest()
        if chunk:
            yield RecordChunk(chunk, text.take(chunk))
            text.skip_rest()


def _batches(
    parquet: pq.ParquetFile, columns: list[str], rows: int, wanted: pa.Array | None
) -> Iterator[pa.RecordBatch]:
    """The file's columns in batches of at most `rows` rows (fewer when filtered to the ids in `wanted`). Arrow's
    allocator keeps what a row group's decoding freed unless told: handed back after each batch, a 50,000-record
    source read this way peaks about where a 5,000-record one does (docs/benchmarks.md, "Scoring memory, the
    chunk's text")."""
    for batch in parquet.iter_batches(batch_size=rows, columns=columns):
        if wanted is not None:
            batch = batch.filter(pc.is_in(batch.column("record_id"), value_set=wanted))
        if batch.num_rows:
            yield batch
        pa.default_memory_pool().release_unused()


class _Rows:
    """The text batches of a partition handed out chunk by chunk, each chunk's rows checked against its ids."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._left: pa.RecordBatch | None = None  # the rest of a batch a chunk ended in
        self._due = 0  # rows of the last chunk not taken yet
        self._chunk = 0  # which chunk's rows are due

    def _next(self) -> pa.RecordBatch:
        if self._left is not None:
            batch, self._left = self._left, None
            return batch
        return next(self._batches)

    def _cut(self, n: int) -> pa.RecordBatch:
        """The next batch of at most n rows; the rest is kept for the next call."""
        batch = self._next()
        if batch.num_rows > n:
            batch, self._left = batch.slice(0, n), batch.slice(n)
        self._due -= batch.num_rows
        return batch

    def take(self, ids: list[str]) -> Iterator[pl.DataFrame]:
        """The chunk's rows, in frames of at most TEXT_BATCH_ROWS; raises if they are not the chunk's ids."""
        self._due, self._chunk = len(ids), self._chunk + 1
        return self._frames(ids, self._chunk)

    def _frames(self, ids: list[str], chunk: int) -> Iterator[pl.DataFrame]:
        done = 0
        while self._due:
            if chunk != self._chunk:
                raise RuntimeError("a chunk's rows were taken after the next chunk was read")
            batch = self._cut(self._due)
            if batch.column("record_id").to_pylist() != ids[done : done + batch.num_rows]:
                raise RuntimeError("raw_records changed while it was read: the ids and the text disagree")
            done += batch.num_rows
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            missing = [pl.lit(None).alias(c) for c in RECORD_SCHEMA if c not in frame.columns]
            yield frame.with_columns(missing).select(list(RECORD_SCHEMA)).cast(RECORD_SCHEMA)

    def skip_rest(self) -> None:
        """Pass over the rows of the last chunk its reader did not take (a count of the ids alone takes none)."""
        while self._due:
            self._cut(self._due)


def count_records(store: Store, source: str) -> int:
    """The source's records, for the progress line (Parquet metadata and one column: no text is read)."""
    _raw_records(store, source)
    return int(store.query_sql("SELECT count(*) FROM raw_records WHERE source = $source", source=source).item())


def teacher_split(cfg: MiraConfig, store: Store, source: str) -> dict[str, Split]:
    """The source's teacher sample and each record's split (core/sampling.teacher_sample's rule), drawn by DuckDB
    from the ids: only the sample comes into Python, whatever the source's size."""
    p = cfg.pipeline
    _raw_records(store, source)
    n = int(store.query_sql(load_sql("distinct_records"), source=source).item())
    k = sample_size(n, p.teacher_sample_fraction, p.teacher_sample_min, p.teacher_sample_max)
    if k == 0:
        return {}
    n_heldout = math.ceil(p.heldout_fraction * k)
    drawn = store.query_sql(load_sql("teacher_sample"), source=source, seed=p.seed, k=k, n_heldout=n_heldout)
    return dict(drawn.iter_rows())  # type: ignore[arg-type]


def scoring_frames(
    cfg: MiraConfig, store: Store, role: Role, source: str
) -> tuple[Iterator[RecordChunk], int, dict[str, Split] | None]:
    """(the records a role scores of a source, chunk by chunk; how many; the teacher's splits, None for the
    student): the teacher its sample, the student every record."""
    size = cfg.pipeline.scoring_chunk_records
    if role == "teacher":
        split = teacher_split(cfg, store, source)
        return record_chunks(store, source, size, only=split), len(split), split
    return record_chunks(store, source, size), count_records(store, source), None


def score_chunks(chunks: Iterable[RecordChunk], user_template: str, rubric: Rubric) -> Iterator[Chunk]:
    """Chunks whose prompts are rendered one by one as the request queue takes them, each from a row of a text
    batch's columns (a tuple, no pydantic object per record)."""
    for chunk in chunks:
        jobs = (Job(rec, render_user(user_template, rubric, rec)) for df in chunk.frames for rec in record_rows(df))
        yield Chunk(chunk.ids, jobs)


def source_counts(store: Store, sources: list[str] | None = None) -> dict[str, int]:
    """How many records raw_records holds of each of the given sources (all when None) that has any: counted by
    DuckDB, no id comes into Python."""
    if "raw_records" not in store.tables():
        return {}
    sql = "SELECT source, count(*) FROM raw_records"
    if sources is None:
        return dict(store.query_sql(f"{sql} GROUP BY source").iter_rows())
    return dict(
        store.query_sql(f"{sql} WHERE list_contains($sources, source) GROUP BY source", sources=sources).iter_rows()
    )


def sample_records(store: Store, sources: list[str] | None, n: int, seed: int, purpose: str) -> pl.DataFrame:
    """A stable sample of n records per source (core/sampling.hash_sample's rule, drawn by DuckDB: sql/hash_sample.sql)
    of the given sources (all when None), then the text of only those records, in the sample's order (source by
    source in raw_records' file order, smallest hashes first)."""
    order = store.partitions("raw_records")
    # the view's files in the order DuckDB's glob lists them: by file name, not by source name
    order.sort(key=lambda source: f"{source}.parquet")
    sample = store.query(
        "hash_sample", sources=order if sources is None else sources, order=order, n=n, seed=seed, purpose=purpose
    )
    return records_of(store, sample.with_row_index("_order")).sort("_order").drop("_order")


def records_of(store: Store, wanted: pl.DataFrame) -> pl.DataFrame:
    """raw_records rows of the (source, record_id) pairs in `wanted`, with its other columns (unordered). Read
    with Arrow a row group at a time from each source's partition: its ids first, then the text columns (never
    `original`) of only the row groups that hold a wanted id, so memory is one row group's text, whatever the
    source's size (DuckDB's join of the same grew with the partition it scanned)."""
    found: list[pl.DataFrame] = []
    for (source,), part in wanted.group_by("source", maintain_order=True):
        ids = pa.array(part["record_id"].unique().to_list(), pa.string())
        path = store.store_path(f"tables/raw_records/{source}.parquet")
        if not store.fs.exists(path):  # a source never ingested has no records, as a join with it has no rows
            continue
        with store.fs.open(path, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            for i in range(parquet.num_row_groups):
                hit = pc.is_in(parquet.read_row_group(i, columns=["record_id"])["record_id"], value_set=ids)
                if pc.any(hit).as_py():  # column by column: one column chunk of text decoded at a time
                    cols = {c: parquet.read_row_group(i, columns=[c])[c].filter(hit) for c in RECORD_SCHEMA}
                    found.append(pl.from_arrow(pa.table(cols)))  # type: ignore[arg-type]
                    pa.default_memory_pool().release_unused()
    texts = pl.concat(found) if found else pl.DataFrame(schema=RECORD_SCHEMA)
    return texts.join(wanted, on=["source", "record_id"], how="inner")


def judge_records(cfg: MiraConfig, store: Store, unit: ScorerUnit) -> list[Record]:
    """The records teacher_judgments judges: judge_sample_per_source of each of the unit's sources (none when the
    unit's sources have no records)."""
    if not source_counts(store, unit.sources):
        return []
    p = cfg.pipeline
    return records_from(sample_records(store, unit.sources, p.judge_sample_per_source, p.seed, "judge"))


def judge_chunks(records: list[Record]) -> list[Chunk]:
    """The judged records as one chunk, each in its own family's free-form prompt."""
    return [Chunk([r.record_id for r in records], judgment_jobs(records))]


def pending(
    cfg: MiraConfig,
    store: Store,
    step: Step,
    key: str,
    spec: ScorerSpec,
    backend: ChatBackend,
    rubric: Rubric | None = None,
) -> RequestCount:
    """Which of the records `step` feeds for `key` (a scorer unit for teacher_judgments, a source for the others)
    would be sent by `spec` on `backend`: not cached under spec.version, not too long for the context. The records
    and the decision are the asset's own; nothing is sent or written. Scoring steps need the rubric their spec was
    made with."""
    if step == "teacher_judgments":
        chunks: Iterable[Chunk] = judge_chunks(judge_records(cfg, store, cfg.scorer_units()[key]))
        return count_requests(chunks, spec, backend, store.replies, cfg.pipeline, reask=False)
    if rubric is None:
        raise ValueError(f"pending {step}[{key}]: the rubric the scorer was made with is needed")
    frames, _, _ = scoring_frames(cfg, store, ROLE_OF[step], key)
    try:
        chunks = score_chunks(frames, spec.user_template, rubric)
        return count_requests(chunks, spec, backend, store.replies, cfg.pipeline, slot_names=rubric.names)
    finally:  # let go of the partition's file at once
        frames.close()  # type: ignore[attr-defined]

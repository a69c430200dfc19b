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


def record_chunks(store: Store, source: str, size: int, only: Collection[str] | None = None) -> Iterator[pl.DataFrame]:
    """The source's records `size` rows at a time, in stored order, streamed by DuckDB from its Parquet partition
    (local or on object storage); only the ids in `only` when given, filtered before any text is read out."""
    _raw_records(store, source)
    sql = f"SELECT {', '.join(RECORD_SCHEMA)} FROM raw_records WHERE source = $source"
    with store.connect() as con:
        if only is not None:
            con.register("wanted_ids", pa.table({"record_id": pa.array(sorted(only), pa.string())}))
            sql += " AND record_id IN (SELECT record_id FROM wanted_ids)"
        for batch in con.sql(sql, params={"source": source}).to_arrow_reader(size):
            yield pl.from_arrow(batch)  # type: ignore[misc]


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
) -> tuple[Iterator[pl.DataFrame], int, dict[str, Split] | None]:
    """(the records a role scores of a source, chunk by chunk; how many; the teacher's splits, None for the
    student): the teacher its sample, the student every record."""
    size = cfg.pipeline.scoring_chunk_records
    if role == "teacher":
        split = teacher_split(cfg, store, source)
        return record_chunks(store, source, size, only=split), len(split), split
    return record_chunks(store, source, size), count_records(store, source), None


def score_chunks(frames: Iterable[pl.DataFrame], user_template: str, rubric: Rubric) -> Iterator[Chunk]:
    """Chunks whose prompts are rendered one by one as the request queue takes them, each from a row of the frame's
    columns (a tuple, no pydantic object per record)."""
    for df in frames:
        jobs = (Job(rec, render_user(user_template, rubric, rec)) for rec in record_rows(df))
        yield Chunk(df["record_id"].to_list(), jobs)


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
    finally:  # let go of the DuckDB reader at once
        frames.close()  # type: ignore[attr-defined]

"""Helpers the tests (and bench/scoring.py) share that the pipeline itself does not need."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from mira_dagster.core.config import Family
from mira_dagster.core.mapping import FieldMapping
from mira_dagster.core.prompts import render_system
from mira_dagster.core.records import MAX_RECORD_BYTES, RAW_RECORD_SCHEMA, Record
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import (
    ChatBackend,
    Chunk,
    Job,
    Outcome,
    ReplyCache,
    RunStats,
    ScorerSpec,
    score_stream,
)
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.templates import load_templates


class Quarantined(BaseModel):
    """A quarantine row (QUARANTINE_SCHEMA) as an object."""

    source: str
    origin_file: str
    origin_line: int
    kind: str = ""
    reason: str
    excerpt: str


@dataclass
class SourceRead:
    records: list[Record]
    quarantined: list[Quarantined]
    lines_read: int
    empty_files: list[str] = field(default_factory=list)


def read_source(
    source: str,
    group_id: str,
    family: Family,
    files: Sequence[Path],
    max_bytes: int = MAX_RECORD_BYTES,
    mapping: FieldMapping | None = None,
) -> SourceRead:
    """Every unit of a source's files, as Record / Quarantined objects, all in memory (small inputs only): ingest
    as the raw_records asset runs it (SourceIngest), batch by batch."""
    ingest = SourceIngest(source, group_id, family, files, max_bytes=max_bytes, mapping=mapping)
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    for recs, bad in ingest.batches():
        records += [Record(**row) for row in recs.iter_rows(named=True)]
        quarantined += [Quarantined(**row) for row in bad.iter_rows(named=True)]
    return SourceRead(records, quarantined, ingest.stats.units_read, ingest.stats.empty_files)


def system_prompt(rubric: Rubric, description: str) -> str:
    """The system prompt with the shipped template."""
    return render_system(load_templates(), rubric, description)


async def score_jobs(
    jobs: Sequence[Job],
    spec: ScorerSpec,
    backend: ChatBackend,
    cache: ReplyCache,
    *,
    max_model_len: int,
    max_in_flight: int = 64,
    batch_size: int = 256,
    parse_retries: int = 0,
    progress: Callable[[RunStats], None] | None = None,
    progress_every_s: float = 5.0,
) -> tuple[list[Outcome], RunStats]:
    """Score every job; each ends with exactly one Outcome, in the order given (one chunk of `score_stream`).

    Cached answers are reused; the rest go out with at most `max_in_flight` requests at once. Every answer
    is written to the cache as it arrives (see ParquetReplyCache), so an interrupted run resumes where it
    stopped. A record whose prompt + max_tokens exceeds `max_model_len` is never sent (`too_long`). A reply
    that does not parse is asked again up to `parse_retries` times (0, the default, never re-asks: callers
    whose replies are not in the contract format, like free-form judgments, keep it).
    """
    by_id: dict[str, Outcome] = {}
    stats = await score_stream(
        [Chunk([j.record.record_id for j in jobs], jobs)],
        spec,
        backend,
        cache,
        sink=lambda job, out: by_id.__setitem__(job.record.record_id, out),
        total=len(jobs),
        max_model_len=max_model_len,
        max_in_flight=max_in_flight,
        batch_size=batch_size,
        parse_retries=parse_retries,
        progress=progress,
        progress_every_s=progress_every_s,
    )
    return [by_id[j.record.record_id] for j in jobs], stats


def run_ok(cmd: Sequence[str | Path], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    """Run a real command as a user would; its stdout, or a failed assertion with the tail of both streams."""
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))}: exit {done.returncode}\n{(done.stdout + done.stderr)[-4000:]}"
    )
    return done.stdout


def raw_records_frame(source: str, n: int, record_id: Callable[[int], str] | None = None) -> pl.DataFrame:
    """A raw_records partition of `n` small QA records (`record_id(i)` names record i; default `<source>-00000-id`)."""
    rows = [
        {
            "record_id": record_id(i) if record_id else f"{source}-{i:05d}-id",
            "source": source,
            "group_id": "g",
            "format": "qa_with_think",
            "layout": "question_answer",
            "question": f"question {i} of {source}",
            "thinking": None if i % 3 else f"thought {i}",
            "answer": f"answer {i}",
            "n_tokens": i,
            "origin_file": "f.jsonl",
            "origin_line": i + 1,
            "original_form": "json",
            "original": "{}",
        }
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=RAW_RECORD_SCHEMA)

"""Turning scoring outcomes into the rows of the scores tables (teacher_labels, student_scores)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from mira_dagster.core.records import RecordLike
from mira_dagster.core.rubric import N_SLOTS
from mira_dagster.core.scoring import Outcome, ScorerSpec

# the scores tables' slot columns a1 ... a15; the SQL in sql/ selects them by the pattern ^a[0-9]+$
SLOT_COLUMNS = [f"a{i}" for i in range(1, N_SLOTS + 1)]

SCORE_SCHEMA = {
    "record_id": pl.String,
    "source": pl.String,
    "group_id": pl.String,
    "n_tokens": pl.Int64,
    "status": pl.String,
    **{c: pl.Float64 for c in SLOT_COLUMNS},
    "overall": pl.Float64,
    "recommendation": pl.String,
    "domain_tag": pl.String,
    "brief": pl.String,
    "rationales": pl.List(pl.String),
    "issues": pl.List(pl.String),
    "from_cache": pl.Boolean,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cached_tokens": pl.Int64,
    "scorer_version": pl.String,
    "model": pl.String,
}


def score_row(record: RecordLike, out: Outcome, spec: ScorerSpec) -> dict[str, Any]:
    """One record's row of the scores tables; the outcome's reply text is not kept (it stays in the reply cache)."""
    return _score_row(record, out, spec.version, spec.model)


def _score_row(record: RecordLike, out: Outcome, version: str, model: str) -> dict[str, Any]:
    """score_row with the spec's version and model given: the version hashes the whole spec, once per scorer,
    not once per record."""
    res, comp = out.result, out.completion
    return {
        "record_id": record.record_id,
        "source": record.source,
        "group_id": record.group_id,
        "n_tokens": record.n_tokens,
        "status": res.status,
        **dict(zip(SLOT_COLUMNS, res.scores, strict=True)),
        "overall": res.overall,
        "recommendation": res.recommendation,
        "domain_tag": res.domain_tag,
        "brief": res.brief,
        "rationales": res.rationales,
        "issues": res.issues,
        "from_cache": out.cached,
        "prompt_tokens": comp.prompt_tokens if comp else None,
        "completion_tokens": comp.completion_tokens if comp else None,
        "cached_tokens": comp.cached_tokens if comp else None,
        "scorer_version": version,
        "model": model,
    }


def scores_frame(records: Sequence[RecordLike], outcomes: Sequence[Outcome], spec: ScorerSpec) -> pl.DataFrame:
    version = spec.version
    rows = [_score_row(rec, out, version, spec.model) for rec, out in zip(records, outcomes, strict=True)]
    return pl.DataFrame(rows, schema=SCORE_SCHEMA)


class ScoreRows:
    """Rows of a scores table collected as outcomes settle and handed on in frames of `batch` rows, so a streamed
    partition holds at most one batch of rows (`flush` hands on the rest at the end)."""

    def __init__(self, spec: ScorerSpec, out: Callable[[pl.DataFrame], None], batch: int = 2048) -> None:
        self.spec, self.out, self.batch = spec, out, batch
        self.version = spec.version
        self.rows: list[dict[str, Any]] = []

    def add(self, record: RecordLike, outcome: Outcome) -> None:
        self.rows.append(_score_row(record, outcome, self.version, self.spec.model))
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.out(pl.DataFrame(rows, schema=SCORE_SCHEMA))

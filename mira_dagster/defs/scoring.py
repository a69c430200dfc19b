"""Stage 2: the anchored teacher labels a sample of each source; the student scores every record.

Both stream their source: records are read from the raw_records partition `scoring_chunk_records` ids at a time
(Arrow over the Parquet file, the teacher's sample filtered by id there; the text a batch at a time as the jobs are
made: io/sending.record_chunks), scored through one bounded queue of requests (core/scoring.score_stream), and
written batch by batch to the partition, which replaces the old one only when the step ends without an error.
The metadata and checks are running totals, so nothing holds the whole source.
"""

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import dagster as dg
import polars as pl

from mira_dagster.core.config import PipelineSettings
from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.parsing import STATUSES
from mira_dagster.core.rubric import released_student_warnings
from mira_dagster.core.sampling import Split
from mira_dagster.core.scoring import Role, RunStats, context_length, run_scorer
from mira_dagster.core.tables import SCORE_SCHEMA, SLOT_COLUMNS, ScoreRows
from mira_dagster.defs.conditions import FOLLOW_INPUTS
from mira_dagster.defs.metadata import md_table
from mira_dagster.defs.partitions import ONE_PARTITION_PER_RUN, group_to_sources, known_source, source_partitions
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.cost import step_over_cap
from mira_dagster.io.sending import RecordChunk, score_chunks, scoring_frames
from mira_dagster.io.store import Store, load_sql

PREVIEW = ["record_id", "status", "a1", "a2", "a3", "overall", "recommendation", "domain_tag", "brief"]


@dataclass
class Tally:
    """Running totals of a streamed scores partition: what the metadata and the checks need, batch by batch."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    out_of_range: int = 0
    failed: int = 0  # request_error among the records this run had to send
    to_send: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # rows whose record_id another row has; counted over the written partition
    degenerate: dict[str, int] = field(default_factory=dict)  # sql/degenerate_replies.sql over the written partition
    preview: pl.DataFrame | None = None

    def add(self, df: pl.DataFrame) -> None:
        self.rows += df.height
        for status, n in status_counts(df).items():
            self.counts[status] = self.counts.get(status, 0) + n
        self.out_of_range += out_of_range(df)
        failed, to_send, errors = request_errors(df)
        self.failed, self.to_send = self.failed + failed, self.to_send + to_send
        self.errors.update(dict(errors))
        for col, key in (("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("cached_tokens", "cached")):
            self.tokens[key] += int(df[col].fill_null(0).sum())
        if "split" in df.columns:
            self.splits.update(dict(df.group_by("split").len().iter_rows()))
        if self.preview is None:
            self.preview = df.select([c for c in PREVIEW if c in df.columns]).head(10)

    def top_errors(self) -> list[tuple[str, int]]:
        """Error texts, commonest first (ties by text), as request_errors gives them."""
        return sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))


class Scored(NamedTuple):
    tally: Tally
    stats: RunStats
    version: str
    client: dict[str, Any]
    records_in: int = 0
    # who scored, for the checks' descriptions: role, "endpoint <urls without credentials>" or "offline stand-in",
    # model
    role: Role = "student"
    endpoint: str = ""
    model: str = ""
    # calibration references in the system prompt, and why a released student's scores may be off
    references: int = 0
    warnings: tuple[str, ...] = ()


def _score(
    context: dg.AssetExecutionContext,
    mira: MiraResource,
    role: Role,
    frames: Iterable[RecordChunk],
    total: int,
    splits: dict[str, Split] | None = None,
) -> Scored:
    """Score the frames' records into the role's table partition, chunk by chunk, and tally what was written."""
    source = context.partition_key
    settings = mira.config().pipeline
    unit = mira.config().unit_of(source)
    rubric = mira.rubric(unit.key)
    spec, backend, where = mira.scorer(role, unit.key, rubric)
    step = "teacher_labels" if role == "teacher" else "student_scores"  # the cap counts the teacher's alone
    if refused := step_over_cap(mira.config(), mira.store(), step, source, spec, backend, rubric):
        raise dg.Failure(description=refused)
    warnings = tuple(released_student_warnings(mira.config(), unit, rubric))
    # a warning when an endpoint scores (it may be the released student); the offline stand-in reads no prompt, so
    # there it is a note (still in the metadata), and a run on the defaults prints no warning
    note = context.log.info if isinstance(backend, OfflineBackend) else context.log.warning
    for text in warnings:
        note(f"{role} {source}: {text}")
    # the server's own context length wins over the configured one when it reports it
    max_model_len = context_length(backend, settings.max_model_len)
    context.log.info(
        f"{role} {source}: {total} records in chunks of {settings.scoring_chunk_records}, scorer_version "
        f"{spec.version}, {where}, context {max_model_len}"
    )
    table = "teacher_labels" if role == "teacher" else "student_scores"
    tally, seen = Tally(), Counter[str]()
    store = mira.store()
    with store.table_writer(table, source, _table_schema(splits)) as write:
        add = _row_sink(unit.key, splits, tally, write)
        rows = ScoreRows(spec, add, batch=min(2048, settings.scoring_chunk_records))

        def counted() -> Iterator[RecordChunk]:
            for chunk in frames:
                seen["records"] += len(chunk.ids)
                yield chunk

        try:
            stats = run_scorer(
                score_chunks(counted(), spec.user_template, rubric),
                spec,
                backend,
                store.replies,
                settings,
                sink=lambda job, out: rows.add(job.record, out),
                total=total,
                progress=lambda s: context.log.info(f"{role} {source}: {s.line()}"),
                slot_names=rubric.names,
            )
        finally:  # a stopped run lets go of the partition's file at once
            if close := getattr(frames, "close", None):
                close()
        rows.flush()
    tally.duplicates = _duplicates(store, table, source) if tally.rows else 0
    tally.degenerate = degenerate_replies(store, table, source) if tally.rows else {}
    # Endpoint.redacted() drops user:password@ and query strings; the offline stand-in has no endpoint
    served = getattr(backend, "endpoint", None)  # an OpenAIBackend's (io/llm_client.py)
    endpoint = f"endpoint {served.redacted()}" if served is not None else "offline stand-in"
    refs = len(rubric.references())
    return Scored(
        tally, stats, spec.version, _client_meta(backend), seen["records"], role, endpoint, spec.model, refs, warnings
    )


def _table_schema(splits: dict[str, Split] | None) -> dict[str, Any]:
    """SCORE_SCHEMA, the scorer unit that scored (reliability pools a cell's fallback estimate over the unit's
    sources) and, for the teacher, the record's split."""
    schema: dict[str, Any] = {**SCORE_SCHEMA, "scorer_unit": pl.String}
    return schema if splits is None else {**schema, "split": pl.String}


def _row_sink(
    unit_key: str, splits: dict[str, Split] | None, tally: Tally, write: Callable[[pl.DataFrame], None]
) -> Callable[[pl.DataFrame], None]:
    def add(df: pl.DataFrame) -> None:
        df = df.with_columns(pl.lit(unit_key).alias("scorer_unit"))
        if splits is not None:
            df = df.with_columns(pl.col("record_id").replace_strict(splits, return_dtype=pl.String).alias("split"))
        tally.add(df)
        write(df)

    return add


def _duplicates(store: Store, table: str, source: str) -> int:
    """Rows of the written partition whose record_id another row has (source names are safe SQL literals)."""
    sql = f"SELECT count(*) - count(DISTINCT record_id) FROM {table} WHERE source = '{source}'"
    return int(store.query_sql(sql).item())


def degenerate_replies(store: Store, table: str, source: str) -> dict[str, int]:
    """Counts of replies that parsed but say little (sql/degenerate_replies.sql) in the written partition."""
    with store.connect() as con:
        con.execute(f"CREATE OR REPLACE TEMP VIEW scores_partition AS SELECT * FROM {table}")
        row = con.sql(load_sql("degenerate_replies"), params={"source": source}).pl().row(0, named=True)
    return {k: int(v or 0) for k, v in row.items()}


def _client_meta(backend: object) -> dict[str, Any]:
    client = getattr(backend, "stats", None)
    if client is None:
        return {}
    return {
        "http_attempts": client.http_attempts,
        "retries": client.retries,
        "failovers": client.failovers,
        "not_sent_endpoint_down": client.not_sent,
        "tokenize_calls": client.tokenize_calls,
        "requests_per_endpoint": client.per_endpoint,
        "waited_past_timeout": client.waited_past_timeout,
        "stall_probes": client.stall_probes,
        "resent_after_stall": client.resent_after_stall,
    }


def status_counts(df: pl.DataFrame) -> dict[str, int]:
    return {s: 0 for s in STATUSES} | dict(df.group_by("status").len().iter_rows())


def out_of_range(df: pl.DataFrame) -> int:
    """Rows with a slot score outside 0-10 or an overall outside 0-100 (missing scores are not out of range)."""
    return df.filter(
        pl.any_horizontal([~pl.col(c).is_between(0, 10) for c in SLOT_COLUMNS]) | ~pl.col("overall").is_between(0, 100)
    ).height


def parse_failure_rate(counts: dict[str, int]) -> float:
    """parse_error among the replies received (requests that failed or were never sent are not replies)."""
    replies = counts["ok"] + counts["partial"] + counts["parse_error"]
    return counts["parse_error"] / replies if replies else 0.0


# Records that were never meant to reach the endpoint: too long for its context, or unusable input.
_NOT_FOR_SENDING = ("too_long", "invalid_input")


def request_errors(df: pl.DataFrame) -> tuple[int, int, list[tuple[str, int]]]:
    """(failed, to_send, [(error text, records)] commonest first) for one partition's scores.

    The share is taken over the records this run had to send: cache hits are left out (they needed no request,
    and a request_error is never cached, so each failed record was attempted this run), as are too_long and
    invalid_input (never sent by design). So a dead endpoint fails the check even when most of the partition
    was answered in an earlier run: every record that needed it failed.
    """
    to_send = df.filter(~pl.col("from_cache") & ~pl.col("status").is_in(_NOT_FOR_SENDING))
    failed = to_send.filter(pl.col("status") == "request_error")
    texts = failed.select(pl.col("issues").list.first().fill_null("(no error text)").alias("error"))
    counts = texts.group_by("error").len().sort(["len", "error"], descending=[True, False])
    return failed.height, to_send.height, list(counts.iter_rows())


def _pct(x: float) -> str:
    """12%, or 0.3% when a whole percent would round a non-zero share to 0 or hide the gap to 100%."""
    return f"{x:.0%}" if x in (0.0, 1.0) or 0.01 <= x <= 0.99 else f"{x:.1%}"


def _who(scored: Scored, source: str) -> str:
    """Who scored which source, as every scoring check's description starts."""
    return f"{scored.role} {scored.endpoint} (model {scored.model}), source {source}"


def _request_error_check(asset: str, source: str, scored: Scored, limit: float) -> dg.AssetCheckResult:
    tally = scored.tally
    failed, to_send, errors = tally.failed, tally.to_send, tally.top_errors()
    share = failed / to_send if to_send else 0.0
    who = _who(scored, source)
    if not to_send:
        what = "no request to send (every record cached, too long or invalid)"
    else:
        what = f"{failed} of {to_send} requests failed ({_pct(share)}, limit {_pct(limit)})"
    if errors:
        top, n = errors[0]
        what += f": {top}" if len(errors) == 1 else f": {top} ({n} records; {len(errors) - 1} other error texts)"
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="request_errors",
        passed=share <= limit,
        severity=dg.AssetCheckSeverity.ERROR,
        # one line: `mira run` prints the description of every failed check as it is
        description=" ".join(f"{who}: {what}".split()),
        metadata={
            "request_errors": failed,
            "requests_to_send": to_send,
            "request_error_share": share,
            "threshold": limit,
            "scorer": scored.endpoint,
            "top_errors": dg.MetadataValue.json(dict(errors[:5])),
        },
    )


# Records that were not scored: never sent for length, failed for good, or answered with nothing readable.
UNSCORED = ("too_long", "request_error", "parse_error")
# The degenerate_replies check warns above this share of scored replies (it never blocks: the scores are what the
# scorer said; a human decides whether the scorer is fit).
DEGENERATE_WARN_SHARE = 0.2
_DEGENERATE_KINDS = {
    "constant_slots": "the same score in all 15 slots",
    "repeated_scores": "the same 15 scores as another record",
    "wordless_rationale": "a rationale without a word",
    "wordless_brief": "a brief under three words",
    "repeated_brief": "the same brief as another record",
}


def _unscored_check(asset: str, source: str, scored: Scored, limit: float) -> dg.AssetCheckResult:
    counts = scored.tally.counts
    records = sum(counts.values())
    unscored = {k: counts.get(k, 0) for k in UNSCORED if counts.get(k, 0)}
    n = sum(unscored.values())
    share = n / records if records else 0.0
    parts = ", ".join(f"{v} {k}" for k, v in unscored.items())
    what = f"{n} of {records} records not scored ({_pct(share)}, limit {_pct(limit)})" + (f": {parts}" if parts else "")
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="unscored_share",
        passed=share <= limit,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{_who(scored, source)}: {what}",
        metadata={"unscored": n, "records": records, "unscored_share": share, "threshold": limit, **unscored},
    )


def degenerate_share(degenerate: dict[str, int]) -> float:
    scored = degenerate.get("scored", 0)
    return degenerate.get("degenerate", 0) / scored if scored else 0.0


def _degenerate_check(asset: str, source: str, scored: Scored) -> dg.AssetCheckResult:
    found = scored.tally.degenerate
    share = degenerate_share(found)
    kinds = [(k, found.get(k, 0)) for k in _DEGENERATE_KINDS if found.get(k, 0)]
    what = "; ".join(f"{n} {_DEGENERATE_KINDS[k]}" for k, n in sorted(kinds, key=lambda kv: -kv[1]))
    head = f"{found.get('degenerate', 0)} of {found.get('scored', 0)} scored replies degenerate ({_pct(share)})"
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="degenerate_replies",
        passed=share <= DEGENERATE_WARN_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{_who(scored, source)}: {head}" + (f": {what}" if what else ""),
        metadata={
            "degenerate_share": share,
            "threshold": DEGENERATE_WARN_SHARE,
            **{k: int(v) for k, v in found.items()},
        },
    )


def _scoring_metadata(scored: Scored) -> dict[str, Any]:
    tally, stats = scored.tally, scored.stats
    counts = tally.counts
    preview = tally.preview if tally.preview is not None else pl.DataFrame(schema=PREVIEW)
    return {
        "dagster/row_count": tally.rows,
        "preview": md_table(preview, 10),
        "scorer_version": scored.version,
        "status_counts": dg.MetadataValue.json(counts),
        "parse_failure_rate": parse_failure_rate(counts),
        "requests_sent": stats.sent,
        "from_cache": stats.from_cache,
        # re-asks of replies that did not parse (pipeline.parse_retries), and the records they brought to `ok`
        "parse_retries_sent": stats.retries,
        "parse_retried_records": stats.retried_records,
        "parse_retries_rescued": stats.rescued,
        "prompt_tokens": tally.tokens["prompt"],
        "completion_tokens": tally.tokens["completion"],
        "cached_prompt_tokens": tally.tokens["cached"],
        "wall_time_s": round(stats.elapsed, 3),
        **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in scored.client.items()},
        "calibration_references": scored.references,
        "unscored_share": (
            sum(tally.counts.get(k, 0) for k in UNSCORED) / sum(tally.counts.values()) if tally.rows else 0.0
        ),
        "degenerate_share": degenerate_share(tally.degenerate),
        **({"warnings": dg.MetadataValue.json(list(scored.warnings))} if scored.warnings else {}),
    }


def _checks(
    asset: str, source: str, records_in: int, scored: Scored, settings: PipelineSettings
) -> list[dg.AssetCheckResult]:
    max_rate = settings.max_parse_failure_rate
    tally = scored.tally
    counts = tally.counts
    rate = parse_failure_rate(counts)
    accounted = sum(counts.values())
    return [
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="scores_in_range",
            passed=tally.out_of_range == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows_out_of_range": tally.out_of_range},
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="parse_failure_rate",
            passed=rate <= max_rate,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"parse_failure_rate": rate, "threshold": max_rate, "parse_errors": counts["parse_error"]},
            description=f"{counts['parse_error']} replies could not be parsed ({rate:.1%}; limit {max_rate:.1%})",
        ),
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="statuses_reconcile",
            passed=accounted == records_in and tally.duplicates == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"records_in": records_in, "records_with_status": accounted, "duplicate_rows": tally.duplicates},
        ),
        _request_error_check(asset, source, scored, settings.max_request_error_share),
        _unscored_check(asset, source, scored, settings.max_unscored_share),
        _degenerate_check(asset, source, scored),
    ]


def _check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "scores_in_range",
            asset=asset,
            blocking=True,
            description="Every slot score is in 0-10 and overall in 0-100 (or missing).",
        ),
        dg.AssetCheckSpec(
            "parse_failure_rate",
            asset=asset,
            blocking=True,
            description="Share of replies that could not be parsed stays under pipeline.max_parse_failure_rate.",
        ),
        dg.AssetCheckSpec(
            "statuses_reconcile",
            asset=asset,
            blocking=True,
            description="Every record in ends with exactly one status, no record twice.",
        ),
        dg.AssetCheckSpec(
            "request_errors",
            asset=asset,
            blocking=True,
            description=(
                "Share of request_error among the records this run had to send (not cached, not too_long or "
                "invalid_input) stays under pipeline.max_request_error_share; a failure names the endpoint and the "
                "commonest error, so a scorer that is down fails its partition instead of scoring nothing."
            ),
        ),
        dg.AssetCheckSpec(
            "unscored_share",
            asset=asset,
            blocking=True,
            description=(
                "Share of the partition's records that were not scored (too_long, request_error, parse_error) stays "
                "under pipeline.max_unscored_share; a failure names the source and the share."
            ),
        ),
        dg.AssetCheckSpec(
            "degenerate_replies",
            asset=asset,
            blocking=False,
            description=(
                "Warns when more than 20% of the scored replies are degenerate: the same score in every slot, the "
                "same scores as another record, rationales or briefs without words, the same brief repeated."
            ),
        ),
    ]


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="teacher",
    kinds={"duckdb", "parquet"},
    deps=["raw_records", dg.AssetDep("anchor_rubric", partition_mapping=group_to_sources)],
    check_specs=_check_specs("teacher_labels"),
    pool="teacher",
    description=(
        "The anchored teacher's scores on a stable hashed sample of the source (max(teacher_sample_min, "
        "teacher_sample_fraction × n) records, at most teacher_sample_max), split into `distill` (SFT data for the "
        "student) and `heldout` (reliability). Replies are cached by (record_id, teacher scorer_version)."
    ),
)
def teacher_labels(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    known_source(mira.config(), source)
    settings = mira.config().pipeline
    # the sample is drawn from the ids alone; only the sampled records' text is read (io/sending.py: the records the
    # cost plan counts)
    frames, total, split = scoring_frames(mira.config(), mira.store(), "teacher", source)
    scored = _score(context, mira, "teacher", frames, total, splits=split)
    meta = _scoring_metadata(scored)
    meta["split_counts"] = dg.MetadataValue.json(dict(scored.tally.splits))
    checks = _checks("teacher_labels", source, scored.records_in, scored, settings)
    return dg.MaterializeResult(metadata=meta, check_results=checks)


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="student",
    kinds={"duckdb", "parquet"},
    deps=["raw_records", dg.AssetDep("anchor_rubric", partition_mapping=group_to_sources)],
    check_specs=_check_specs("student_scores"),
    pool="student",
    description=(
        "The scorer unit's student (the group's in the default scorer_scope; vLLM behind an OpenAI-compatible "
        "endpoint, or the offline stand-in) on every record of the source: 15 slot scores with rationales, overall, "
        "recommendation, domain tag, brief, and exactly one status per record. Replies are cached by (record_id, "
        "scorer_version): materialising again sends no request for a record already scored. The source is streamed "
        "in chunks of scoring_chunk_records records."
    ),
)
def student_scores(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    known_source(mira.config(), source)
    settings = mira.config().pipeline
    frames, total, _ = scoring_frames(mira.config(), mira.store(), "student", source)
    scored = _score(context, mira, "student", frames, total)
    meta = _scoring_metadata(scored)
    meta["records_in"] = scored.records_in
    checks = _checks("student_scores", source, scored.records_in, scored, settings)
    return dg.MaterializeResult(metadata=meta, check_results=checks)

"""Stage 2: the anchored teacher labels a sample of each source; the student scores every record."""

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

import dagster as dg
import polars as pl

from mira_dagster.core.config import PipelineSettings
from mira_dagster.core.llm_client import OpenAIBackend
from mira_dagster.core.parsing import STATUSES
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import released_student_warnings
from mira_dagster.core.sampling import teacher_sample
from mira_dagster.core.scoring import Job, Outcome, Role, RunStats, score_jobs
from mira_dagster.core.tables import RECORD_SCHEMA, SLOT_COLUMNS, scores_frame
from mira_dagster.defs.metadata import table_metadata
from mira_dagster.defs.partitions import ONE_PARTITION_PER_RUN, group_to_sources, source_partitions
from mira_dagster.defs.resources import MiraResource

PREVIEW = ["record_id", "status", "a1", "a2", "a3", "overall", "recommendation", "domain_tag", "brief"]


def _records(df: pl.DataFrame) -> list[Record]:
    return [Record(**row) for row in df.select(list(RECORD_SCHEMA)).iter_rows(named=True)]


class Scored(NamedTuple):
    df: pl.DataFrame
    stats: RunStats
    version: str
    client: dict[str, Any]
    # who scored, for the checks' descriptions: role, "endpoint <urls without credentials>" or "offline stand-in",
    # model
    role: Role = "student"
    endpoint: str = ""
    model: str = ""
    # calibration references in the system prompt, and why a released student's scores may be off
    references: int = 0
    warnings: tuple[str, ...] = ()


def _score(context: dg.AssetExecutionContext, mira: MiraResource, role: Role, records: Sequence[Record]) -> Scored:
    source = context.partition_key
    settings = mira.config().pipeline
    unit = mira.config().unit_of(source)
    rubric = mira.rubric(unit.key)
    spec, backend, where = mira.scorer(role, unit.key, rubric)
    warnings = tuple(released_student_warnings(mira.config(), unit, rubric))
    for text in warnings:
        context.log.warning(f"{role} {source}: {text}")
    jobs = [Job(rec, render_user(spec.user_template, rubric, rec)) for rec in records]
    # The server's own context length wins over the configured one when it reports it.
    max_model_len = getattr(backend, "max_model_len", None) or settings.max_model_len
    context.log.info(
        f"{role} {source}: {len(jobs)} records, scorer_version {spec.version}, {where}, context {max_model_len}"
    )

    async def run() -> tuple[list[Outcome], RunStats]:
        try:
            return await score_jobs(
                jobs,
                spec,
                backend,
                mira.store().replies,
                max_model_len=max_model_len,
                max_in_flight=getattr(backend, "capacity", settings.max_in_flight),
                batch_size=settings.write_batch_size,
                parse_retries=settings.parse_retries,
                progress=lambda s: context.log.info(f"{role} {source}: {s.line()}"),
            )
        finally:
            if close := getattr(backend, "aclose", None):
                await close()

    outcomes, stats = asyncio.run(run())
    client = getattr(backend, "stats", None)
    client_meta = (
        {}
        if client is None
        else {
            "http_attempts": client.http_attempts,
            "retries": client.retries,
            "failovers": client.failovers,
            "not_sent_endpoint_down": client.not_sent,
            "tokenize_calls": client.tokenize_calls,
            "requests_per_endpoint": client.per_endpoint,
        }
    )
    # Endpoint.redacted() drops user:password@ and query strings; the offline stand-in has no endpoint
    endpoint = f"endpoint {backend.endpoint.redacted()}" if isinstance(backend, OpenAIBackend) else "offline stand-in"
    # which scorer of the scope scored it: reliability pools a cell's fallback estimate over the unit's sources
    df = scores_frame(records, outcomes, spec).with_columns(pl.lit(unit.key).alias("scorer_unit"))
    refs = len(rubric.references())
    return Scored(df, stats, spec.version, client_meta, role, endpoint, spec.model, refs, warnings)


def status_counts(df: pl.DataFrame) -> dict[str, int]:
    return {s: 0 for s in STATUSES} | dict(df.group_by("status").len().iter_rows())


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


def _request_error_check(asset: str, source: str, scored: Scored, limit: float) -> dg.AssetCheckResult:
    failed, to_send, errors = request_errors(scored.df)
    share = failed / to_send if to_send else 0.0
    who = f"{scored.role} {scored.endpoint} (model {scored.model}), source {source}"
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


def _scoring_metadata(scored: Scored) -> dict[str, Any]:
    df, stats = scored.df, scored.stats
    counts = status_counts(df)
    return {
        **table_metadata(df, [c for c in PREVIEW if c in df.columns]),
        "scorer_version": scored.version,
        "status_counts": dg.MetadataValue.json(counts),
        "parse_failure_rate": parse_failure_rate(counts),
        "requests_sent": stats.sent,
        "from_cache": stats.from_cache,
        # re-asks of replies that did not parse (pipeline.parse_retries), and the records they brought to `ok`
        "parse_retries_sent": stats.retries,
        "parse_retried_records": stats.retried_records,
        "parse_retries_rescued": stats.rescued,
        "prompt_tokens": int(df["prompt_tokens"].fill_null(0).sum()),
        "completion_tokens": int(df["completion_tokens"].fill_null(0).sum()),
        "cached_prompt_tokens": int(df["cached_tokens"].fill_null(0).sum()),
        "wall_time_s": round(stats.elapsed, 3),
        **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in scored.client.items()},
        "calibration_references": scored.references,
        **({"warnings": dg.MetadataValue.json(list(scored.warnings))} if scored.warnings else {}),
    }


def _checks(
    asset: str, source: str, records_in: int, scored: Scored, settings: PipelineSettings
) -> list[dg.AssetCheckResult]:
    max_rate = settings.max_parse_failure_rate
    counts = status_counts(scored.df)
    rate = parse_failure_rate(counts)
    accounted = sum(counts.values())
    out_of_range = scored.df.filter(
        pl.any_horizontal([~pl.col(c).is_between(0, 10) for c in SLOT_COLUMNS]) | ~pl.col("overall").is_between(0, 100)
    ).height
    return [
        dg.AssetCheckResult(
            asset_key=asset,
            check_name="scores_in_range",
            passed=out_of_range == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows_out_of_range": out_of_range},
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
            passed=accounted == records_in and scored.df["record_id"].n_unique() == scored.df.height,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"records_in": records_in, "records_with_status": accounted},
        ),
        _request_error_check(asset, source, scored, settings.max_request_error_share),
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
    ]


@dg.asset(
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="teacher",
    kinds={"duckdb", "parquet"},
    deps=["raw_records", dg.AssetDep("anchor_rubric", partition_mapping=group_to_sources)],
    check_specs=_check_specs("teacher_labels"),
    pool="teacher",
    description=(
        "The anchored teacher's scores on a stable hashed sample of the source (max(teacher_sample_min, "
        "teacher_sample_fraction × n) records), split into `distill` (SFT data for the student) and "
        "`heldout` (reliability). Replies are cached by (record_id, teacher scorer_version)."
    ),
)
def teacher_labels(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    settings = mira.config().pipeline
    raw = mira.store().read("raw_records", source)
    split = teacher_sample(
        raw["record_id"].to_list(),
        fraction=settings.teacher_sample_fraction,
        minimum=settings.teacher_sample_min,
        heldout_fraction=settings.heldout_fraction,
        seed=settings.seed,
    )
    sampled = _records(raw.filter(pl.col("record_id").is_in(list(split))))
    scored = _score(context, mira, "teacher", sampled)
    df = scored.df.with_columns(pl.col("record_id").replace_strict(split, return_dtype=pl.String).alias("split"))
    scored = scored._replace(df=df)
    mira.store().write("teacher_labels", df, source)
    meta = _scoring_metadata(scored)
    meta["split_counts"] = dg.MetadataValue.json(dict(df.group_by("split").len().iter_rows()))
    checks = _checks("teacher_labels", source, len(sampled), scored, settings)
    return dg.MaterializeResult(metadata=meta, check_results=checks)


@dg.asset(
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="student",
    kinds={"duckdb", "parquet"},
    deps=["raw_records", dg.AssetDep("anchor_rubric", partition_mapping=group_to_sources)],
    check_specs=_check_specs("student_scores"),
    pool="student",
    description=(
        "The group's student scorer (vLLM behind an OpenAI-compatible endpoint, or the offline stand-in) "
        "on every record of the source: 15 slot scores with rationales, overall, recommendation, domain tag, "
        "brief, and exactly one status per record. Replies are cached by (record_id, scorer_version): "
        "materialising again sends no request for a record already scored."
    ),
)
def student_scores(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    raw = mira.store().read("raw_records", source)
    scored = _score(context, mira, "student", _records(raw))
    mira.store().write("student_scores", scored.df, source)
    meta = _scoring_metadata(scored)
    meta["records_in"] = raw.height
    checks = _checks("student_scores", source, raw.height, scored, mira.config().pipeline)
    return dg.MaterializeResult(metadata=meta, check_results=checks)

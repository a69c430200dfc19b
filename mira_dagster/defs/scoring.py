"""Stage 2: the anchored teacher labels a sample of each source; the student scores every record."""

import asyncio
from collections.abc import Sequence

import dagster as dg
import polars as pl

from mira_dagster.core.parsing import STATUSES
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import Record
from mira_dagster.core.sampling import teacher_sample
from mira_dagster.core.scoring import Job, Outcome, Role, RunStats, score_jobs
from mira_dagster.core.tables import RECORD_SCHEMA, scores_frame
from mira_dagster.defs.metadata import table_metadata
from mira_dagster.defs.partitions import source_partitions
from mira_dagster.defs.resources import MiraResource

PREVIEW = ["record_id", "status", "a1", "a2", "a3", "overall", "recommendation", "domain_tag", "brief"]


def _records(df: pl.DataFrame) -> list[Record]:
    return [Record(**row) for row in df.select(list(RECORD_SCHEMA)).iter_rows(named=True)]


def _score(
    context: dg.AssetExecutionContext, mira: MiraResource, role: Role, records: Sequence[Record]
) -> tuple[pl.DataFrame, RunStats, str]:
    source = context.partition_key
    cfg = mira.config()
    group_id = cfg.sources[source].group
    spec, backend, where = mira.scorer(role, group_id)
    template = spec.user_template
    jobs = [Job(rec, render_user(template, rec)) for rec in records]
    context.log.info(f"{role} {source}: {len(jobs)} records, scorer_version {spec.version}, {where}")

    async def run() -> tuple[list[Outcome], RunStats]:
        try:
            return await score_jobs(
                jobs,
                spec,
                backend,
                mira.store().replies,
                max_model_len=cfg.pipeline.max_model_len,
                max_in_flight=cfg.pipeline.max_in_flight,
                batch_size=cfg.pipeline.write_batch_size,
                progress=lambda s: context.log.info(f"{role} {source}: {s.line()}"),
            )
        finally:
            if close := getattr(backend, "aclose", None):
                await close()

    outcomes, stats = asyncio.run(run())
    return scores_frame(records, outcomes, spec), stats, spec.version


def _scoring_metadata(df: pl.DataFrame, stats: RunStats, version: str) -> dict:
    counts = {s: 0 for s in STATUSES} | dict(df.group_by("status").len().iter_rows())
    failed = counts["parse_error"] + counts["request_error"]
    return {
        **table_metadata(df, [c for c in PREVIEW if c in df.columns]),
        "scorer_version": version,
        "status_counts": dg.MetadataValue.json(counts),
        "parse_failure_rate": failed / df.height if df.height else 0.0,
        "requests_sent": stats.sent,
        "from_cache": stats.from_cache,
        "prompt_tokens": int(df["prompt_tokens"].fill_null(0).sum()),
        "completion_tokens": int(df["completion_tokens"].fill_null(0).sum()),
        "wall_time_s": round(stats.elapsed, 3),
    }


@dg.asset(
    partitions_def=source_partitions,
    group_name="teacher",
    kinds={"duckdb", "parquet"},
    deps=["raw_records"],
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
    df, stats, version = _score(context, mira, "teacher", sampled)
    df = df.with_columns(pl.col("record_id").replace_strict(split, return_dtype=pl.String).alias("split"))
    mira.store().write("teacher_labels", df, source)
    meta = _scoring_metadata(df, stats, version)
    meta["split_counts"] = dg.MetadataValue.json(dict(df.group_by("split").len().iter_rows()))
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_partitions,
    group_name="student",
    kinds={"duckdb", "parquet"},
    deps=["raw_records"],
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
    df, stats, version = _score(context, mira, "student", _records(raw))
    mira.store().write("student_scores", df, source)
    meta = _scoring_metadata(df, stats, version)
    meta["records_in"] = raw.height
    return dg.MaterializeResult(metadata=meta)

"""Stage 3: how far the student can be trusted on each (source × dimension), and the mask."""

import dagster as dg
import polars as pl

from mira_dagster.core.mask import apply_imported_mask, mask_rule, mask_version
from mira_dagster.core.mask_import import MaskFileError
from mira_dagster.core.reliability import STAT_COLUMNS, agreement
from mira_dagster.defs.conditions import FOLLOW_INPUTS
from mira_dagster.defs.metadata import heatmap_metadata, md_table, table_metadata
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.forget import unregistered_message, unregistered_sources
from mira_dagster.io.mask_file import mask_file_digest, read_mask_file
from mira_dagster.io.store import UNPARTITIONED, Store


def dims_frame(mira: MiraResource) -> pl.DataFrame:
    """(source, pool, slot, dim_name) for every configured source: the slots of its scorer unit's rubric, `pool`
    being the unit (the sources that share the scorer, pooled for the fallback estimate)."""
    cfg = mira.config()
    rows = [
        {"source": source, "pool": key, "slot": d.slot, "dim_name": d.name}
        for key, unit in cfg.scorer_units().items()
        for d in mira.rubric(key).dims
        for source in unit.sources
    ]
    schema = {"source": pl.String, "pool": pl.String, "slot": pl.Int32, "dim_name": pl.String}
    return pl.DataFrame(rows, schema=schema)


def left_out_sources(context: dg.AssetExecutionContext, mira: MiraResource) -> list[str]:
    """The sources with data in the store that the registry does not have: the corpus asset fails naming them and
    `mira forget-source` (pipeline.unregistered_sources: fail), or they are left out, with a warning, and returned
    for the metadata (drop). Never silently: a source missing from the registry would otherwise just vanish."""
    cfg = mira.config()
    names = unregistered_sources(cfg, mira.store())
    if names and cfg.pipeline.unregistered_sources == "fail":
        raise dg.Failure(description=unregistered_message(cfg, names))
    if names:
        context.log.warning(
            f"{context.asset_key.to_user_string()}: left out (pipeline.unregistered_sources: drop), not in the "
            f"registry {cfg.path}: {', '.join(names)}"
        )
    return names


def reliability_table(
    store: Store, dims: pl.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> pl.DataFrame:
    """dim_reliability: the estimates and intervals per cell and per pool (the sources sharing a scorer), laid out
    over every (source, slot) the scorers' rubrics name by sql/dim_reliability.sql. `dims` has (source, pool, slot,
    dim_name) for every source the scorers' rubrics name."""
    pairs = store.query("heldout_pairs")
    pools = dims.select("source", "pool").unique()
    src, pool = agreement(pairs.join(pools, on="source"), n_boot, seed, level)
    pool = pool.rename({c: f"group_{c}" for c in STAT_COLUMNS})
    return store.query("dim_reliability", frames={"dims": dims, "source_stats": src, "pool_stats": pool})


def _no_pairs(store: Store) -> str:
    """Why there is no held-out pair, in one line: what the held-out labels and the student scores hold."""
    labels = store.query_sql(
        "SELECT count(*) FILTER (WHERE split = 'heldout') AS heldout, "
        "count(*) FILTER (WHERE split = 'heldout' AND status IN ('ok', 'partial')) AS usable FROM teacher_labels"
    ).row(0, named=True)
    student = store.query_sql(
        "SELECT count(*) AS records, count(*) FILTER (WHERE status IN ('ok', 'partial')) AS usable FROM student_scores"
    ).row(0, named=True)
    return (
        f"no held-out (teacher, student) score pair in any source (teacher_labels: {labels['heldout']} held-out "
        f"records, {labels['usable']} with scores; student_scores: {student['usable']} of {student['records']} "
        "records with scores)"
    )


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="reliability",
    kinds={"duckdb", "parquet"},
    deps=["teacher_labels", "student_scores"],
    description=(
        "Per (source × dimension), on the held-out split: n teacher–student pairs, MAE and Spearman's ρ with "
        "bootstrap confidence intervals (ci_level, bootstrap_resamples), and the same pooled over the sources that "
        "share the scorer (group_*; `pool` is the scorer unit: the group in the default scorer_scope). Estimates "
        "and intervals in core/reliability.py, laid out over every cell by sql/dim_reliability.sql. "
        "Fails, writing nothing, when there is no held-out pair at all."
    ),
)
def dim_reliability(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store, s = mira.store(), mira.config().pipeline
    left_out = left_out_sources(context, mira)
    df = reliability_table(store, dims_frame(mira), s.bootstrap_resamples, s.seed, s.ci_level)
    if df.is_empty() or not df["n"].sum():
        # nothing to estimate from: a table of n = 0 would make a mask that trusts every dimension unverified
        raise dg.Failure(description=f"dim_reliability: {_no_pairs(store)}; not written")
    store.write("dim_reliability", df)
    meta = {**table_metadata(df, n=20), "sources": df["source"].n_unique()}
    return dg.MaterializeResult(metadata={**meta, "unregistered_left_out": dg.MetadataValue.json(left_out)})


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="reliability",
    kinds={"duckdb", "parquet"},
    deps=["dim_reliability"],
    check_specs=[
        dg.AssetCheckSpec(
            "no_source_fully_masked",
            asset="reliability_mask",
            blocking=True,
            description="No source has all 15 dimensions masked (it would have no aggregate at all).",
        )
    ],
    description=(
        "Which (source × dimension) cells the aggregate ignores and why: masked when MAE > mask_max_mae or "
        "ρ < mask_min_rho on the held-out split; cells with fewer than min_heldout pairs are judged on the "
        "group-level estimate (sql/reliability_mask.sql). A mask from elsewhere (reliability_mask_file) is applied "
        "on top of it or instead of it (reliability_mask_mode); every cell records its mask_basis (computed, "
        "imported, both). The rule is stored with every row. Fails, writing nothing, when dim_reliability has no "
        "held-out pair at all or a mask file row matches no cell."
    ),
)
def reliability_mask(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    s = mira.config().pipeline
    store = mira.store()
    rel = store.read("dim_reliability", UNPARTITIONED)
    if rel.is_empty() or not rel["n"].sum():
        # no evidence at all: any mask would be a guess; the last mask (if any) stays
        raise dg.Failure(description=f"reliability_mask: dim_reliability has {_no_pairs(store)}; no mask written")
    mask_file = s.reliability_mask_file
    try:
        rule = mask_rule(s, mask_file_digest(mask_file) if mask_file is not None else None)
    except OSError as exc:
        raise dg.Failure(description=f"reliability_mask: cannot read {mask_file}: {exc}") from exc
    version = mask_version(rule, rel)
    try:
        computed = store.query(
            "reliability_mask",
            max_mae=s.mask_max_mae,
            min_rho=s.mask_min_rho,
            min_n=s.min_heldout,
            rule=rule,
            mask_version=version,
        )
        df = apply_imported_mask(computed, s, read_mask_file(mask_file) if mask_file is not None else None)
    except MaskFileError as exc:  # nothing written: the last mask stays
        raise dg.Failure(description=f"reliability_mask: {exc}") from exc
    store.write("reliability_mask", df)
    per_source = (
        df.group_by("source").agg(pl.col("masked").sum().alias("masked"), pl.len().alias("dims")).sort("source")
    )
    masked = df.filter(pl.col("masked")).select("source", "slot", "dim_name", "reason")
    fully = per_source.filter(pl.col("masked") == pl.col("dims"))["source"].to_list()
    check = dg.AssetCheckResult(
        check_name="no_source_fully_masked",
        passed=not fully,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"fully_masked_sources": dg.MetadataValue.json(fully)},
    )
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "dagster/row_count": df.height,
            "rule": rule,
            "mask_version": version,
            "masked_cells": int(df["masked"].sum()),
            "mask_basis": dg.MetadataValue.json(dict(df.group_by("mask_basis").len().sort("mask_basis").iter_rows())),
            "masked_per_source": md_table(per_source, n=100),
            "preview": md_table(masked, n=30),
            **heatmap_metadata(df),
        },
    )


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="reliability",
    kinds={"duckdb", "parquet"},
    deps=["teacher_labels", "student_scores"],
    description=(
        "The held-out records where teacher and student disagree most, per (source × dimension) and overall "
        "(disagreement_top_k each): the queue for the next round of teacher labelling (sql/disagreements.sql)."
    ),
)
def disagreements(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    pairs = store.query("heldout_pairs")
    df = store.query("disagreements", frames={"heldout_pairs": pairs}, k=mira.config().pipeline.disagreement_top_k)
    store.write("disagreements", df)
    overall = df.filter(pl.col("kind") == "overall").sort("gap", descending=True)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "records_to_relabel": df["record_id"].n_unique(),
            "preview": md_table(overall.select("source", "record_id", "teacher", "student", "gap"), n=15),
        }
    )

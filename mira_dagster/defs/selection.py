"""Stage 4: the reliability-aware aggregate per record, the selection variants at one budget, the export."""

import json
import shutil
import uuid

import dagster as dg
import polars as pl

from mira_dagster.core.plots import retention_curves, score_distributions
from mira_dagster.core.store import Store
from mira_dagster.defs.metadata import md_image, md_table, table_metadata
from mira_dagster.defs.partitions import FOLLOW_INPUTS
from mira_dagster.defs.resources import MiraResource

VARIANTS = ("global", "group", "source", "random")


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=["student_scores", "reliability_mask"],
    check_specs=[
        dg.AssetCheckSpec(
            "aggregate_drift",
            asset="aggregated_scores",
            blocking=False,
            description="A source's mean aggregate moved by more than pipeline.drift_threshold since last time.",
        )
    ],
    description=(
        "Per record: the mean of its unmasked dimension scores, each z-normalised so that a lenient dimension does "
        "not dominate, at three scopes: all sources (aggregate_global), the record's group (aggregate_group, also "
        "`aggregate`) and its source (aggregate_source); sql/aggregated_scores.sql. Records with no usable score "
        "(too_long, errors) have NULL aggregates. Every row carries the mask_version it used. A record whose content "
        "is in several sources (one record_id) is one row, owned by the source whose name sorts first."
    ),
)
def aggregated_scores(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    df = store.query("aggregated_scores")
    store.write("aggregated_scores", df)
    means = {
        s: round(float(m), 6)
        for s, m in df.group_by("source").agg(pl.col("aggregate").mean()).iter_rows()
        if m is not None
    }
    return dg.MaterializeResult(
        check_results=[_drift(context, means, mira.config().pipeline.drift_threshold)],
        metadata={
            "source_means": dg.MetadataValue.json(means),
            **table_metadata(df),
            "unscored": int(df["aggregate"].is_null().sum()),
            "distributions": md_image(score_distributions(df), "score distributions"),
            "retention_curves": md_image(retention_curves(df), "retention curves"),
        },
    )


def _drift(context: dg.AssetExecutionContext, means: dict[str, float], threshold: float) -> dg.AssetCheckResult:
    """Compare each source's mean aggregate with the previous materialisation's (non-blocking: a warning)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("aggregated_scores"))
    before = event.asset_materialization.metadata.get("source_means") if event and event.asset_materialization else None
    previous = before.value if before is not None else {}
    moved = {
        s: round(m - previous[s], 4) for s, m in means.items() if s in previous and abs(m - previous[s]) > threshold
    }
    return dg.AssetCheckResult(
        check_name="aggregate_drift",
        passed=not moved,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"moved": dg.MetadataValue.json(moved), "threshold": threshold, "compared": len(previous)},
    )


def budget_share(mira: MiraResource) -> float:
    """The budget as a share of all tokens: budget_tokens / total when set, else retention_share."""
    s = mira.config().pipeline
    if s.budget_tokens is None:
        return s.retention_share
    total = mira.store().query_sql("SELECT sum(n_tokens) FROM aggregated_scores").item()
    return min(1.0, s.budget_tokens / total)


def select(mira: MiraResource, variant: str) -> pl.DataFrame:
    s = mira.config().pipeline
    return mira.store().query(
        "select_variant",
        variant=variant,
        share=budget_share(mira),
        min_share=s.source_min_share,
        max_share=s.source_max_share,
        seed=s.seed,
    )


def _variant_asset(variant: str) -> dg.AssetsDefinition:
    @dg.asset(
        automation_condition=FOLLOW_INPUTS,
        name=f"selected_{variant}",
        group_name="selection",
        kinds={"duckdb", "parquet"},
        deps=["aggregated_scores"],
        description=(
            f"The {variant!r} selection variant at the shared token budget (sql/select_variant.sql), kept for "
            "comparison with selected_subset."
        ),
    )
    def _asset(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
        df = select(mira, variant)
        mira.store().write(f"selected_{variant}", df)
        return dg.MaterializeResult(metadata={**table_metadata(df), "tokens_kept": int(df["n_tokens"].sum())})

    return _asset


VARIANT_ASSETS = [_variant_asset(v) for v in VARIANTS]


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=["aggregated_scores", "raw_records"],
    check_specs=[
        dg.AssetCheckSpec(
            "budget_met",
            asset="selected_subset",
            blocking=True,
            description="Each unit's kept tokens are within one record of its budget (unless a floor or cap binds).",
        )
    ],
    description=(
        "The kept records of the configured variant (selection_variant, default 'source': per-source retention, "
        "each source keeping its best records up to its share of the budget) at the token budget (retention_share "
        "of all tokens, default 0.5 as in the paper's 25B of 50B, or budget_tokens), with the per-source floor and "
        "cap source_min_share / source_max_share. Exported "
        "with their text to $MIRA_HOME/exports/selected_subset/<source>-NNNNN.parquet shards with a manifest.json. "
        "The same content in several sources (one record_id) is one record in the budget and the export, owned by "
        "the source whose name sorts first; the overlap per source pair is the table `source_overlap` "
        "(sql/source_overlap.sql). A run with no scored record or an empty selection fails and leaves the previous "
        "export as it was."
    ),
)
def selected_subset(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store, s = mira.store(), mira.config().pipeline
    out = store.exports_dir / "selected_subset"
    kept_as_is = f"the previous export ({out}) is left as it was" if out.exists() else "no export written"
    # Never replace good output with the output of an empty run: check before writing anything.
    counts = store.query_sql(
        "SELECT count(*) AS records, count(aggregate) AS scored, coalesce(sum(n_tokens), 0) AS tokens "
        "FROM aggregated_scores"
    ).row(0, named=True)
    if not counts["scored"]:
        statuses = store.query_sql(
            "SELECT status, count(*) AS n FROM student_scores GROUP BY status ORDER BY n DESC, status"
        )
        seen = ", ".join(f"{st} {n}" for st, n in statuses.iter_rows()) or "none"
        raise dg.Failure(
            description=(
                f"selected_subset: none of the {counts['records']} records has a usable score (student_scores "
                f"statuses: {seen}); nothing selected, {kept_as_is}"
            )
        )
    df = select(mira, s.selection_variant)
    if df.is_empty():
        raise dg.Failure(
            description=(
                f"selected_subset: the {s.selection_variant!r} selection is empty ({counts['scored']} of "
                f"{counts['records']} records scored, budget {budget_share(mira):.1%} of {counts['tokens']} tokens, "
                f"source_max_share {s.source_max_share}); {kept_as_is}"
            )
        )
    store.write("selected_subset", df)
    manifest = export_kept(
        store,
        {
            "variant": s.selection_variant,
            "budget_share": budget_share(mira),
            "source_min_share": s.source_min_share,
            "source_max_share": s.source_max_share,
            "mask_version": df["mask_version"][0] if df.height else None,
            "scorer_versions": store.query_sql("SELECT DISTINCT scorer_version FROM student_scores")[:, 0].to_list(),
            "thresholds": {src: min(part["score"]) for (src,), part in df.group_by("source")},
        },
        s.export_shard_records,
    )
    summary = store.query("run_summary")
    overlap = store.query("source_overlap")
    store.write("source_overlap", overlap)
    return dg.MaterializeResult(
        check_results=[
            _budget_check(
                df,
                store.query_sql("SELECT max(n_tokens) FROM aggregated_scores").item(),
                s.source_min_share > 0 or s.source_max_share < 1,
            )
        ],
        metadata={
            **table_metadata(df),
            "variant": s.selection_variant,
            "summary": md_table(summary, n=100),
            # shared content per source pair: counted once, for the source that sorts first
            "source_overlap": md_table(overlap, n=100)
            if overlap.height
            else dg.MetadataValue.md("no content is shared between sources"),
            "tokens_kept": int(df["n_tokens"].sum()) if df.height else 0,
            "export": dg.MetadataValue.path(str(store.exports_dir / "selected_subset")),
            "export_files": len(manifest["files"]),
        },
    )


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=[*(f"selected_{v}" for v in VARIANTS), "aggregated_scores"],
    description=(
        "The variants side by side: per source, the tokens and share each variant keeps, and the overlap (Jaccard "
        "of kept record sets) of each variant with the group variant (sql/selection_report.sql)."
    ),
)
def selection_report(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    df = store.query("selection_report")
    store.write("selection_report", df)
    totals = (
        df.group_by("variant")
        .agg(pl.col("tokens_kept").sum(), pl.col("source_tokens").sum())
        .with_columns((pl.col("tokens_kept") / pl.col("source_tokens")).round(4).alias("achieved_share"))
        .sort("variant")
    )
    # pivot on "variant: <name>" so that the variant called "source" does not clash with the index column
    wide = df.with_columns(pl.concat_str(pl.lit("variant: "), "variant").alias("variant"))
    shares = wide.pivot(on="variant", index="source", values="kept_share").sort("source")
    tokens = wide.pivot(on="variant", index="source", values="tokens_kept").sort("source")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "achieved_budget": md_table(totals),
            "kept_tokens_per_source": md_table(tokens, n=100),
            "kept_share_per_source": md_table(shares, n=100),
            "jaccard_vs_group": md_table(wide.pivot(on="variant", index="source", values="jaccard_vs_group"), n=100),
        }
    )


def _budget_check(df: pl.DataFrame, largest: int, constrained: bool) -> dg.AssetCheckResult:
    """Within one record: no unit's kept tokens differ from its budget by more than the largest record."""
    units = df.group_by("unit").agg(pl.col("n_tokens").sum().alias("kept"), pl.col("budget_tokens").first())
    missed = units.filter((pl.col("kept") - pl.col("budget_tokens")).abs() > largest)
    return dg.AssetCheckResult(
        check_name="budget_met",
        passed=missed.is_empty() or constrained,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"units": md_table(units.sort("unit"), n=50), "missed": missed.height},
    )


def export_kept(store: Store, manifest_extra: dict, shard_records: int = 100_000) -> dict:
    """Write the kept records with their text, sharded by source, and a manifest, swapped in atomically."""
    out = store.exports_dir / "selected_subset"
    staging = store.exports_dir / f".selected_subset.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    with store.connect() as con:
        # selected_subset holds owner copies only (aggregated_scores.sql), and a source never holds a record twice,
        # so this join gives each kept record once, with its owner's text and origin
        kept = con.sql(
            "SELECT r.*, s.score, s.mask_version FROM selected_subset s "
            "JOIN raw_records r USING (source, record_id) ORDER BY r.source, s.score DESC, r.record_id"
        ).pl()
    files = []
    for (source,), part in kept.group_by("source", maintain_order=True):
        # shards of at most shard_records rows, so a training job can read them in parallel
        for i, shard in enumerate(part.iter_slices(shard_records)):
            path = staging / f"{source}-{i:05d}.parquet"
            shard.write_parquet(path)
            files.append(
                {"file": path.name, "source": source, "records": shard.height, "tokens": int(shard["n_tokens"].sum())}
            )
    manifest = {
        **manifest_extra,
        "records": kept.height,
        "tokens": int(kept["n_tokens"].sum()) if kept.height else 0,
        "files": files,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    # Swap directories so readers see the old export or the new one, never a mix.
    old = store.exports_dir / f".old.{uuid.uuid4().hex}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest

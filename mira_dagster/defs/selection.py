"""Stage 4: the reliability-aware aggregate per record, per-source retention at the budget (the scope's selection
and random), the export, and the report that puts the paper's variants (scorer scopes) side by side."""

import json
import shutil
import time
import uuid
from itertools import combinations

import dagster as dg
import polars as pl

from mira_dagster.core.plots import retention_curves, score_distributions
from mira_dagster.core.store import Store
from mira_dagster.defs.metadata import md_image, md_table, table_metadata
from mira_dagster.defs.partitions import FOLLOW_INPUTS
from mira_dagster.defs.resources import MiraResource


def scope_label(scope: str) -> str:
    """The paper's name of a scorer-scope variant: MIRA-global, MIRA-group, MIRA-source."""
    return f"MIRA-{scope}"


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
            description=(
                "A source's mean aggregate_global (normalised over all sources, so that a source's shift shows; "
                "a per-source normalised mean is 0 by construction) moved by more than pipeline.drift_threshold "
                "since last time."
            ),
        )
    ],
    description=(
        "Per record: the mean of its unmasked dimension scores, each z-normalised so that a lenient dimension does "
        "not dominate, at three scopes: all sources (aggregate_global), the record's group (aggregate_group) and its "
        "source (aggregate_source); `aggregate`, the one selection ranks by, is pipeline.normalise_within's "
        "(default source); sql/aggregated_scores.sql. Records with no usable score "
        "(too_long, errors) have NULL aggregates. Every row carries the mask_version it used. A record whose content "
        "is in several sources (one record_id) is one row, owned by the source whose name sorts first."
    ),
)
def aggregated_scores(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    df = store.query("aggregated_scores", normalise=mira.config().pipeline.normalise_within)
    store.write("aggregated_scores", df)
    means = {
        s: round(float(m), 6)
        for s, m in df.group_by("source").agg(pl.col("aggregate_global").mean()).iter_rows()
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
    """Per-source retention at the budget: by the aggregate ("scores", labelled with the scope) or at random."""
    s = mira.config().pipeline
    return mira.store().query(
        "select_variant",
        variant=variant,
        label=scope_label(s.scorer_scope) if variant == "scores" else "random",
        share=budget_share(mira),
        min_share=s.source_min_share,
        max_share=s.source_max_share,
        seed=s.seed,
    )


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=["aggregated_scores"],
    description=(
        "Random at the same budget: each source keeps a seeded random order's first records up to its share of the "
        "budget (sql/select_variant.sql), the baseline selection_report compares the scorer scopes with."
    ),
)
def selected_random(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    df = select(mira, "random")
    mira.store().write("selected_random", df)
    return dg.MaterializeResult(metadata={**table_metadata(df), "tokens_kept": int(df["n_tokens"].sum())})


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
        "The kept records: per-source retention (the cards' rule), each source keeping its best records by the "
        "aggregate up to its share of the token budget (retention_share of all tokens, default 0.5 as in the paper's "
        "25B of 50B, or budget_tokens), with the per-source floor and cap source_min_share / source_max_share. Also "
        "kept under its scorer scope's name (table scope_selections, partition = scorer_scope) for selection_report. "
        "Exported "
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
    label = scope_label(s.scorer_scope)
    df = select(mira, "scores")
    if df.is_empty():
        raise dg.Failure(
            description=(
                f"selected_subset: the {label} selection is empty ({counts['scored']} of "
                f"{counts['records']} records scored, budget {budget_share(mira):.1%} of {counts['tokens']} tokens, "
                f"source_max_share {s.source_max_share}); {kept_as_is}"
            )
        )
    store.write("selected_subset", df)
    scorer_versions = store.query_sql("SELECT DISTINCT scorer_version FROM student_scores")[:, 0].sort().to_list()
    store.write(
        "scope_selections",
        df.select("variant", "source", "record_id", "n_tokens", "score", "mask_version").with_columns(
            pl.lit(s.scorer_scope).alias("scorer_scope"),
            pl.lit(budget_share(mira)).alias("budget_share"),
            pl.lit(",".join(scorer_versions)).alias("scorer_versions"),
            pl.lit(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())).alias("made_at"),
        ),
        s.scorer_scope,
    )
    manifest = export_kept(
        store,
        {
            "variant": label,
            "scorer_scope": s.scorer_scope,
            "normalise_within": s.normalise_within,
            "budget_share": budget_share(mira),
            "source_min_share": s.source_min_share,
            "source_max_share": s.source_max_share,
            "mask_version": df["mask_version"][0] if df.height else None,
            "scorer_versions": scorer_versions,
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
            "variant": label,
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
    deps=["selected_subset", "selected_random", "aggregated_scores", "teacher_labels"],
    description=(
        "The paper's variants side by side at the same budget: the selection of every scorer_scope run so far "
        "(MIRA-global, MIRA-group, MIRA-source: one rubric and student over all sources, one per group, one per "
        "source, each with per-source retention) and random. Per source: tokens and share kept, Jaccard overlap with "
        "the current scope's selection, and the anchored teacher's mean overall score on the held-out records kept "
        "and left out (sql/selection_report.sql). A scope's selection made at another budget is left out and named."
    ),
)
def selection_report(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store, s = mira.store(), mira.config().pipeline
    current, share = scope_label(s.scorer_scope), budget_share(mira)
    scopes = store.read("scope_selections")
    same = (pl.col("budget_share") - share).abs() < 1e-9
    other_budget = scopes.filter(~same).group_by("variant").agg(pl.col("budget_share").first()).sort("variant")
    columns = ["variant", "source", "record_id", "n_tokens"]
    kept = pl.concat([scopes.filter(same).select(columns), store.read("selected_random").select(columns)])
    df = store.query("selection_report", frames={"kept": kept}, current=current)
    totals = store.query("selection_variants", frames={"kept": kept}, current=current)
    store.write("selection_report", df)
    store.write("selection_variants", totals)
    made = scopes.group_by("variant").agg(pl.col("made_at").first(), pl.col("budget_share").first()).sort("variant")
    # pivot on "variant: <name>" so that no variant name clashes with the index column
    wide = df.with_columns(pl.concat_str(pl.lit("variant: "), "variant").alias("variant"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "current": current,
            "variants": md_table(totals),
            "jaccard": md_table(_jaccard(kept)),
            "kept_tokens_per_source": md_table(wide.pivot(on="variant", index="source", values="tokens_kept"), n=100),
            "kept_share_per_source": md_table(wide.pivot(on="variant", index="source", values="kept_share"), n=100),
            "teacher_overall_kept_per_source": md_table(
                wide.pivot(on="variant", index="source", values="teacher_overall_kept"), n=100
            ),
            "selections": md_table(made),
            "left_out_other_budget": dg.MetadataValue.json(dict(other_budget.iter_rows())),
        }
    )


def _jaccard(kept: pl.DataFrame) -> pl.DataFrame:
    """Jaccard overlap of every pair of selections' kept record sets, over the whole corpus (joins, not sets)."""
    keys = ["source", "record_id"]
    parts = {v: part.select(keys) for (v,), part in kept.group_by("variant")}
    rows = []
    for a, b in combinations(sorted(parts), 2):
        both = parts[a].join(parts[b], on=keys).height
        union = parts[a].height + parts[b].height - both
        rows.append({"a": a, "b": b, "jaccard": round(both / union, 4) if union else None})
    return pl.DataFrame(rows, schema={"a": pl.String, "b": pl.String, "jaccard": pl.Float64})


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

"""Stage 4: the reliability-aware aggregate per record, per-source retention at the budget (the scope's selection
and random), the export, and the report that puts the paper's variants (scorer scopes) side by side."""

import time

import dagster as dg
import polars as pl

from mira_dagster.defs.conditions import FOLLOW_INPUTS
from mira_dagster.defs.freshness import CORPUS_FINGERPRINT, corpus_fingerprint
from mira_dagster.defs.metadata import md_image, md_table
from mira_dagster.defs.reliability import left_out_sources
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.export import EXPORT, export_kept
from mira_dagster.io.store import Store

# The plots are drawn from a seeded sample of this many records, not the corpus (enough for box plots and curves).
PLOT_SAMPLE = 200_000


# a selection's rows are unsorted (sql/select_variant.sql); previews show each source's best records first
BEST_FIRST = "source, score DESC, record_id"


def scope_label(scope: str) -> str:
    """The paper's name of a scorer-scope variant: MIRA-global, MIRA-group, MIRA-source."""
    return f"MIRA-{scope}"


def _preview(store: Store, table: str, rows: int, n: int = 10, order: str = "source, record_id") -> dict:
    """Row count and the first rows of a table written by DuckDB in `order` (a top-n: n rows, not the table)."""
    head = store.query_sql(f"SELECT * FROM {table} ORDER BY {order} LIMIT {n}")
    return {"dagster/row_count": rows, "preview": md_table(head, n)}


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
    store, s = mira.store(), mira.config().pipeline
    left_out = left_out_sources(context, mira)  # the registry's sources only, never silently
    # computed and written by DuckDB: the corpus never comes into Python; the metadata are small queries over it
    sources = mira.config().source_names()
    rows = store.materialize("aggregated_scores", "aggregated_scores", normalise=s.normalise_within, sources=sources)
    per_source = store.query_sql(
        "SELECT source, avg(aggregate_global) AS mean, count(*) - count(aggregate) AS unscored "
        "FROM aggregated_scores GROUP BY source ORDER BY source"
    )
    means = {src: round(float(m), 6) for src, m, _ in per_source.iter_rows() if m is not None}
    sample = store.query_sql(
        "SELECT source, n_tokens, aggregate FROM aggregated_scores "
        f"USING SAMPLE reservoir({PLOT_SAMPLE} ROWS) REPEATABLE ({s.seed})"
    )
    from mira_dagster.core.plots import retention_curves, score_distributions  # matplotlib: only this step draws

    return dg.MaterializeResult(
        check_results=[_drift(context, means, s.drift_threshold)],
        metadata={
            "source_means": dg.MetadataValue.json(means),
            **_preview(store, "aggregated_scores", rows),
            "unscored": int(per_source["unscored"].sum()),
            "plot_sample": sample.height,
            "distributions": md_image(score_distributions(sample), "score distributions"),
            "retention_curves": md_image(retention_curves(sample), "retention curves"),
            "unregistered_left_out": dg.MetadataValue.json(left_out),
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


def select(mira: MiraResource, variant: str, table: str, share: float, keep_empty: bool = True) -> int:
    """Per-source retention at the budget: by the aggregate ("scores", labelled with the scope) or at random,
    computed once and written by DuckDB as `table`. Returns the rows kept; with keep_empty=False an empty
    selection leaves the table as it was."""
    s = mira.config().pipeline
    return mira.store().materialize(
        table,
        "select_variant",
        keep_empty=keep_empty,
        variant=variant,
        label=scope_label(s.scorer_scope) if variant == "scores" else "random",
        share=share,
        min_share=s.source_min_share,
        max_share=s.source_max_share,
        seed=s.seed,
    )


def _kept_tokens(store: Store, table: str) -> int:
    return int(store.query_sql(f"SELECT coalesce(sum(n_tokens), 0) FROM {table}").item())


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
    store = mira.store()
    rows = select(mira, "random", "selected_random", budget_share(mira))
    return dg.MaterializeResult(
        metadata={
            **_preview(store, "selected_random", rows, order=BEST_FIRST),
            "tokens_kept": _kept_tokens(store, "selected_random"),
        }
    )


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
        "Exported to $MIRA_HOME/exports/selected_subset/ with a manifest.json: by default (pipeline.export_form "
        "original) as their producers wrote them with the selection columns added (mira_source, mira_record_id, "
        "mira_score, mira_mask_version, ...), <source>-NNNNN.jsonl for JSON inputs and <source>-NNNNN.parquet rows "
        "with the input's columns for tables; export_form normalised writes the normalised text fields instead. "
        "The same content in several sources (one record_id) is one record in the budget and the export, owned by "
        "the source whose name sorts first; the overlap per source pair is the table `source_overlap` "
        "(sql/source_overlap.sql). A run with no scored record or an empty selection fails and leaves the previous "
        "export as it was."
    ),
)
def selected_subset(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store, s = mira.store(), mira.config().pipeline
    out = store.location(EXPORT)
    kept_as_is = f"the previous export ({out}) is left as it was" if store.exists(EXPORT) else "no export written"
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
    label, share = scope_label(s.scorer_scope), budget_share(mira)
    # selected once, by DuckDB straight into the table; an empty selection writes nothing
    rows = select(mira, "scores", "selected_subset", share, keep_empty=False)
    if not rows:
        raise dg.Failure(
            description=(
                f"selected_subset: the {label} selection is empty ({counts['scored']} of "
                f"{counts['records']} records scored, budget {share:.1%} of {counts['tokens']} tokens, "
                f"source_max_share {s.source_max_share}); {kept_as_is}"
            )
        )
    scorer_versions = store.query_sql("SELECT DISTINCT scorer_version FROM student_scores")[:, 0].sort().to_list()
    store.materialize(
        "scope_selections",
        "scope_selection",
        s.scorer_scope,
        scope=s.scorer_scope,
        share=share,
        versions=",".join(scorer_versions),
        made_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    kept = store.query_sql(
        "SELECT source, min(score) AS threshold, any_value(mask_version) AS mask_version "
        "FROM selected_subset GROUP BY source ORDER BY source"
    )
    manifest = export_kept(
        store,
        {
            "variant": label,
            "scorer_scope": s.scorer_scope,
            "normalise_within": s.normalise_within,
            "budget_share": share,
            "source_min_share": s.source_min_share,
            "source_max_share": s.source_max_share,
            "mask_version": kept["mask_version"][0],
            "scorer_versions": scorer_versions,
            "thresholds": dict(zip(kept["source"], kept["threshold"], strict=True)),
        },
        s.export_shard_records,
        s.export_form,
    )
    summary = store.query("run_summary")
    overlap = store.query("source_overlap")
    store.write("source_overlap", overlap)
    units = store.query_sql(
        "SELECT unit, sum(n_tokens) AS kept, any_value(budget_tokens) AS budget_tokens "
        "FROM selected_subset GROUP BY unit ORDER BY unit"
    )
    return dg.MaterializeResult(
        check_results=[
            _budget_check(
                units,
                store.query_sql("SELECT max(n_tokens) FROM aggregated_scores").item(),
                s.source_min_share > 0 or s.source_max_share < 1,
            )
        ],
        metadata={
            **_preview(store, "selected_subset", rows, order=BEST_FIRST),
            "variant": label,
            "summary": md_table(summary, n=100),
            # shared content per source pair: counted once, for the source that sorts first
            "source_overlap": md_table(overlap, n=100)
            if overlap.height
            else dg.MetadataValue.md("no content is shared between sources"),
            "tokens_kept": int(units["kept"].sum()),
            "export": dg.MetadataValue.path(out),
            "export_files": len(manifest["files"]),
            "export_form": s.export_form,
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
    # the kept sets stay in the tables: the SQL reads scope_selections and selected_random at this budget
    df = store.query("selection_report", current=current, share=share)
    totals = store.query("selection_variants", current=current, share=share)
    store.write("selection_report", df)
    store.write("selection_variants", totals)
    made = store.query_sql(
        "SELECT variant, any_value(made_at) AS made_at, any_value(budget_share) AS budget_share "
        "FROM scope_selections GROUP BY variant ORDER BY variant"
    )
    other_budget = made.filter((pl.col("budget_share") - share).abs() >= 1e-9).select("variant", "budget_share")
    # pivot on "variant: <name>" so that no variant name clashes with the index column
    wide = df.with_columns(pl.concat_str(pl.lit("variant: "), "variant").alias("variant"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "current": current,
            # what `mira run` compares to skip the corpus when none of its inputs changed (defs/freshness.py)
            CORPUS_FINGERPRINT: corpus_fingerprint(context.instance, mira.config()),
            "variants": md_table(totals),
            "jaccard": md_table(store.query("selection_jaccard", share=share)),
            "kept_tokens_per_source": md_table(wide.pivot(on="variant", index="source", values="tokens_kept"), n=100),
            "kept_share_per_source": md_table(wide.pivot(on="variant", index="source", values="kept_share"), n=100),
            "teacher_overall_kept_per_source": md_table(
                wide.pivot(on="variant", index="source", values="teacher_overall_kept"), n=100
            ),
            "selections": md_table(made),
            "left_out_other_budget": dg.MetadataValue.json(dict(other_budget.iter_rows())),
        }
    )


def _budget_check(units: pl.DataFrame, largest: int, constrained: bool) -> dg.AssetCheckResult:
    """Within one record: no unit's kept tokens differ from its budget by more than the largest record.
    `units`: (unit, kept, budget_tokens) per unit of the selection."""
    missed = units.filter((pl.col("kept") - pl.col("budget_tokens")).abs() > largest)
    return dg.AssetCheckResult(
        check_name="budget_met",
        passed=missed.is_empty() or constrained,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"units": md_table(units, n=50), "missed": missed.height},
    )

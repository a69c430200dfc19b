"""Stage 4: the reliability-aware aggregate per record, and the per-source selection."""

import json
import shutil
import uuid

import dagster as dg

from mira_dagster.core.store import Store
from mira_dagster.defs.metadata import md_table, table_metadata
from mira_dagster.defs.resources import MiraResource


@dg.asset(
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=["student_scores", "reliability_mask"],
    description=(
        "Per record: the mean of its unmasked dimension scores, each z-normalised within its group so that "
        "a lenient dimension does not dominate (sql/aggregated_scores.sql). Records with no usable score "
        "(too_long, errors) have a NULL aggregate and are never selected."
    ),
)
def aggregated_scores(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    df = store.query("aggregated_scores")
    store.write("aggregated_scores", df)
    return dg.MaterializeResult(
        metadata={
            **table_metadata(df),
            "unscored": int(df["aggregate"].is_null().sum()),
        }
    )


@dg.asset(
    group_name="selection",
    kinds={"duckdb", "parquet"},
    deps=["aggregated_scores", "raw_records"],
    description=(
        "Per source, the best records by aggregate up to the source's retention share of its tokens "
        "(retention_share, default 0.5 as in the paper's 25B of 50B), cut where the kept tokens come closest "
        "to the budget (sql/selected_subset.sql). The kept records with their text are exported to "
        "$MIRA_HOME/exports/selected_subset/<source>.parquet with a manifest.json, for training."
    ),
)
def selected_subset(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    store = mira.store()
    share = mira.config().pipeline.retention_share
    df = store.query("selected_subset", share=share)
    store.write("selected_subset", df)
    manifest = export_kept(store, share)
    summary = store.query("run_summary")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(df),
            "retention_share": share,
            "summary": md_table(summary, n=100),
            "tokens_kept": int(df["n_tokens"].sum()) if df.height else 0,
            "export": dg.MetadataValue.path(str(store.exports_dir / "selected_subset")),
            "export_files": len(manifest["files"]),
        }
    )


def export_kept(store: Store, share: float) -> dict:
    """Write the kept records with their text, one Parquet file per source, and a manifest."""
    out = store.exports_dir / "selected_subset"
    staging = store.exports_dir / f".selected_subset.{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    with store.connect() as con:
        kept = con.sql(
            "SELECT r.*, s.rank, s.aggregate FROM selected_subset s "
            "JOIN raw_records r USING (source, record_id) ORDER BY r.source, s.rank"
        ).pl()
    files = []
    for (source,), part in kept.group_by("source", maintain_order=True):
        path = staging / f"{source}.parquet"
        part.write_parquet(path)
        files.append(
            {"file": path.name, "source": source, "records": part.height, "tokens": int(part["n_tokens"].sum())}
        )
    manifest = {"retention_share": share, "records": kept.height, "files": files}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    # Swap directories so readers see the old export or the new one, never a mix.
    old = store.exports_dir / f".old.{uuid.uuid4().hex}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest

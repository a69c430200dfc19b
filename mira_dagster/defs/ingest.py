"""Stage 0: reading each source's files into normalised records, with a quarantine."""

import dagster as dg

from mira_dagster.core.records import read_source
from mira_dagster.core.tables import quarantine_frame, records_frame
from mira_dagster.defs.metadata import md_table, table_metadata
from mira_dagster.defs.partitions import source_partitions
from mira_dagster.defs.resources import MiraResource


@dg.asset(
    partitions_def=source_partitions,
    group_name="ingest",
    kinds={"duckdb", "parquet"},
    description=(
        "Normalised records of one source: record_id (hash of the normalised content), the text fields "
        "its prompt family needs, an estimated token count and the original file and line. Lines that are "
        "not valid records go to the `quarantine` table with the reason; lines read = records + quarantined."
    ),
)
def raw_records(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    cfg = mira.config()
    src = cfg.sources[source]
    read = read_source(source, src.group, src.format, src.files)
    records = records_frame(read.records)
    quarantined = quarantine_frame(read.quarantined)
    store = mira.store()
    store.write("quarantine", quarantined, source)
    store.write("raw_records", records, source)
    reasons = quarantined.group_by("reason").len().sort("len", descending=True) if quarantined.height else None
    context.log.info(
        f"{source}: {read.lines_read} lines read, {records.height} records, {quarantined.height} quarantined"
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(
                records, ["record_id", "layout", "n_tokens", "origin_file", "origin_line", "question", "task"]
            ),
            "lines_read": read.lines_read,
            "quarantined": quarantined.height,
            "quarantine_reasons": md_table(reasons) if reasons is not None else "none",
            "tokens": int(records["n_tokens"].sum()) if records.height else 0,
            "layouts": dg.MetadataValue.json(dict(records.group_by("layout").len().iter_rows())),
            "files": dg.MetadataValue.json([str(f) for f in src.files]),
        }
    )

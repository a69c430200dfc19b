"""Stage 0: reading each source's files into normalised records, with a quarantine."""

from pathlib import Path

import dagster as dg

from mira_dagster.core.records import SourceFileError, input_fingerprint, read_source
from mira_dagster.core.tables import quarantine_frame, records_frame
from mira_dagster.defs.metadata import md_table, table_metadata
from mira_dagster.defs.partitions import ONE_PARTITION_PER_RUN, source_partitions
from mira_dagster.defs.resources import MiraResource

INPUT_FINGERPRINT = "input_fingerprint"


@dg.asset(
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="ingest",
    check_specs=[
        dg.AssetCheckSpec(
            "lines_reconcile",
            asset="raw_records",
            blocking=True,
            description="Lines in the source files = records + quarantined rows, as stored.",
        )
    ],
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
    read = read_source(source, src.group, src.format, src.files, cfg.pipeline.max_record_bytes)
    if read.empty_files and len(read.empty_files) == len(src.files):
        raise SourceFileError(f"source {source!r}: every file is empty: {', '.join(read.empty_files)}")
    for path in read.empty_files:
        context.log.warning(f"{source}: {path} is empty (no lines); the source's other files were read")
    records = records_frame(read.records)
    quarantined = quarantine_frame(read.quarantined)
    store = mira.store()
    store.write("quarantine", quarantined, source)
    store.write("raw_records", records, source)
    reasons = quarantined.group_by("reason").len().sort("len", descending=True) if quarantined.height else None
    context.log.info(
        f"{source}: {read.lines_read} lines read, {records.height} records, {quarantined.height} quarantined"
    )
    # Count again from what was stored and from the files themselves, independently of read_source.
    stored = store.read("raw_records", source).height + store.read("quarantine", source).height
    on_disk = sum(_count_lines(f) for f in src.files)
    check = dg.AssetCheckResult(
        check_name="lines_reconcile",
        passed=stored == on_disk == read.lines_read,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"lines_in_files": on_disk, "records_plus_quarantined": stored},
    )
    return dg.MaterializeResult(
        check_results=[check],
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
            "empty_files": dg.MetadataValue.json(read.empty_files),
            # what the schedule compares to find partitions whose input files changed (defs/automation.py)
            INPUT_FINGERPRINT: input_fingerprint(src.files),
        },
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)

"""Stage 0: reading each source's files into normalised records, with a quarantine."""

from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from mira_dagster.core.config import DEFAULT_CONFIG
from mira_dagster.core.mapping import compile_mapping
from mira_dagster.core.records import (
    INGEST_CODE_VERSION,
    QUARANTINE_SCHEMA,
    RAW_RECORD_SCHEMA,
    IngestStats,
    entry_fingerprint,
)
from mira_dagster.defs.conditions import FOLLOW_INPUTS
from mira_dagster.defs.freshness import FILES_FINGERPRINT, INPUT_FINGERPRINT, Latest, latest
from mira_dagster.defs.metadata import md_table
from mira_dagster.defs.partitions import ONE_PARTITION_PER_RUN, known_source, source_partitions
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.earlier import EarlierRecords
from mira_dagster.io.export import TABLE_SCHEMAS, schemas_frame, stored_schemas
from mira_dagster.io.ingest import SourceIngest, ingest_fingerprint, input_fingerprint
from mira_dagster.io.readers import (
    SourceFileError,
    append_offsets,
    count_units,
    expand_files,
    file_state,
    file_versions,
)
from mira_dagster.io.store import PartitionWriter, Store
from mira_dagster.settings import secret_values

ENTRY_FINGERPRINT = "entry_fingerprint"
FILE_STATES = "file_states"
PREVIEW = ["record_id", "layout", "n_tokens", "origin_file", "origin_line", "question", "task"]


@dg.asset(
    automation_condition=FOLLOW_INPUTS,
    partitions_def=source_partitions,
    backfill_policy=ONE_PARTITION_PER_RUN,
    group_name="ingest",
    code_version=INGEST_CODE_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            "lines_reconcile",
            asset="raw_records",
            blocking=True,
            description="Units in the source files (lines, array elements, rows) = records + quarantined rows, as "
            "stored.",
        ),
        dg.AssetCheckSpec(
            "records_usable",
            asset="raw_records",
            blocking=True,
            description="The source gave at least one record, and at most pipeline.max_quarantine_share of what was "
            "read was quarantined (run `mira inspect` on its files to see why).",
        ),
    ],
    kinds={"duckdb", "parquet"},
    description=(
        "Normalised records of one source: record_id (hash of the normalised content), the text fields its prompt "
        "family needs, an estimated token count, the original file and line (or array element, or Parquet row) and "
        "the unit's value as its producer wrote it (`original`, JSON text; `original_form` json or row). "
        "JSONL, JSON arrays and Parquet, compressed or not; layouts are detected per object, or given by the "
        "source's `fields:` mapping. What is not a valid record goes to the `quarantine` table with the reason; "
        "units read = records + quarantined."
    ),
)
def raw_records(context: dg.AssetExecutionContext, mira: MiraResource) -> dg.MaterializeResult:
    source = context.partition_key
    cfg = mira.config()
    src = known_source(cfg, source)
    mapping = compile_mapping(src.fields, src.format) if src.fields else None
    store = mira.store()
    files = expand_files(src.files, source, cfg.read_roots())  # a missing file or an empty glob raises here, naming it
    prev = latest(context.instance, "raw_records", source)
    resume = _append_plan(store, source, prev, files, entry_fingerprint(src, cfg.pipeline.max_record_bytes))
    if resume:
        context.log.info(f"{source}: the files only grew since the last ingest: reading the appended lines alone")
    with (
        store.table_writer("raw_records", source, RAW_RECORD_SCHEMA) as write_records,
        store.table_writer("quarantine", source, QUARANTINE_SCHEMA) as write_quarantine,
    ):
        earlier = _carry_over(store, source, write_records, write_quarantine) if resume else None
        try:
            ingest = SourceIngest(
                source,
                src.group,
                src.format,
                src.files,  # the entries, checked once there: a link in a listed folder is judged by its folder
                max_bytes=cfg.pipeline.max_record_bytes,
                mapping=mapping,
                sink=lambda records, quarantined: (write_records(records), write_quarantine(quarantined)),
                resume=resume,
                earlier=earlier,
                secrets=secret_values(),
                roots=cfg.read_roots(),
                preference=src.preference,
                scratch=store.home / "scratch",  # archive members are unpacked under MIRA_HOME, nowhere else
            )
            before = file_versions(ingest.files)  # what the files must still be when the read ends
            for i, _ in enumerate(ingest.batches(), 1):
                if i % 50 == 0:
                    context.log.info(f"{source}: {ingest.stats.units_read:,} read, {ingest.stats.records:,} records")
        finally:
            if earlier is not None:
                earlier.close()  # its DuckDB connection, on a failed read too
        stats = ingest.stats
        new_units = stats.units_read
        if resume and prev is not None:
            _add_earlier(stats, prev.metadata)
        # Count again from the files themselves, independently of the reader's own count, and from what was
        # written; both checks are decided before anything replaces the last good partition.
        on_disk = sum(count_units(f, store.home / "scratch") for f in ingest.files)
        # a preference pair read as `both` may give two rows (each side a record or a quarantine row)
        written = write_records.rows + write_quarantine.rows - stats.extra_rows
        share = stats.quarantined / stats.units_read if stats.units_read else 0.0
        states = {str(f): file_state(f) for f in ingest.files}
        _unchanged_since(source, ingest.files, before)  # else nothing is published: the last good records stay
        reconcile = dg.AssetCheckResult(
            check_name="lines_reconcile",
            passed=written == on_disk == stats.units_read,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"units_in_files": on_disk, "records_plus_quarantined": written, "extra_rows": stats.extra_rows},
            description=f"{on_disk} units in the files, {written} records + quarantined rows written"
            + (f" (less {stats.extra_rows} second sides of preference pairs)" if stats.extra_rows else ""),
        )
        # the command to look with: the registry named when it is not the default one
        inspect = f"mira inspect --source {source}" + (
            f" --config {cfg.path}" if cfg.path != DEFAULT_CONFIG.resolve() else ""
        )
        usable = _usable_check(source, stats, share, cfg.pipeline.max_quarantine_share, inspect)
        kept = reconcile.passed and usable.passed
        if not kept:
            # the quarantine says why (the summary shows it); the records stay those of the last good read
            write_records.discard()
    if kept:  # the column types of its table files, for the export (with the records they belong to)
        schemas = ingest.table_schemas
        if resume:  # files not read again keep theirs
            earlier_schemas = {f: sch for (_, f), sch in stored_schemas(store, [source]).items()}
            schemas = {**{f: earlier_schemas[f] for f in ingest.names.values() if f in earlier_schemas}, **schemas}
        store.write(TABLE_SCHEMAS, schemas_frame(schemas), source)
    for path in stats.empty_files:
        context.log.warning(f"{source}: {path} is empty (nothing to read)")
    if stats.unused_keys:
        context.log.warning(
            f"{source}: the layouts left text unused under {sorted(stats.unused_keys)} (first at "
            f"{stats.unused_first.get(stats.unused_keys.most_common(1)[0][0], 'an earlier read')}); a `fields:` "
            "mapping that takes it in: "
            f"{stats.suggested_fields} (`{inspect}` shows more)"
        )
    context.log.info(f"{source}: {stats.units_read} read, {stats.records} records, {stats.quarantined} quarantined")
    # the ingest fingerprint is the partition's data version: Dagster (the UI), the schedule and `mira run` all
    # call it stale when it changes (defs/freshness.py)
    fingerprint = ingest_fingerprint(ingest.files, src, cfg.pipeline.max_record_bytes)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(fingerprint),
        check_results=[reconcile, usable],
        metadata={
            "dagster/row_count": stats.records,
            "records_written": kept,
            "preview": _preview(store.partition_path("raw_records", source)) if kept and stats.records else "none",
            "lines_read": stats.units_read,
            "quarantined": stats.quarantined,
            "quarantined_share": round(share, 4),
            "quarantine_reasons": dg.MetadataValue.json(dict(stats.reasons.most_common())),
            "tokens": stats.tokens,
            "layouts": dg.MetadataValue.json(dict(stats.layouts.most_common())),
            # keys holding prose the layouts did not read (records per key), and a mapping that reads them
            "unused_text_keys": dg.MetadataValue.json(dict(stats.unused_keys.most_common())),
            "unused_text_first": dg.MetadataValue.json(stats.unused_first),
            "suggested_fields": dg.MetadataValue.json(stats.suggested_fields),
            "extra_rows": stats.extra_rows,
            "files": dg.MetadataValue.json(stats.files),
            # what each file was read as, found by its content (readers.describe_container)
            "containers": dg.MetadataValue.json(ingest.containers),
            "units_per_file": dg.MetadataValue.json(stats.units_per_file),
            "empty_files": dg.MetadataValue.json(stats.empty_files),
            # what `mira run` and the schedule compare to find partitions to re-ingest (defs/freshness.py)
            INPUT_FINGERPRINT: fingerprint,
            FILES_FINGERPRINT: input_fingerprint(ingest.files),
            # what the next ingest needs to read appended lines alone (io/readers.append_offsets)
            ENTRY_FINGERPRINT: entry_fingerprint(src, cfg.pipeline.max_record_bytes),
            FILE_STATES: dg.MetadataValue.json(states),
            "ingest_mode": f"append: {new_units} new units" if resume else "whole read",
        },
    )


def _unchanged_since(source: str, files: list[Path], before: list[str]) -> None:
    """The reader checks each file while it reads it (readers.iter_units); this closes the window after, up to
    the fingerprint and state recorded: a file written to then (a producer still appending, a copy in progress)
    would be up to date for every later run with its new lines never read. Fail naming the file (SourceFileError):
    nothing is published and the next run reads it again."""
    for path, was, now in zip(files, before, file_versions(files), strict=True):
        if was != now:
            raise SourceFileError(
                f"source {source!r}: {path} was replaced or changed while being read; nothing was written, run the "
                "partition again once the file is complete"
            )


def _append_plan(
    store: Store, source: str, prev: Latest | None, files: list[Path], entry: str
) -> dict[Path, tuple[int, int]] | None:
    """Where to resume each file when the source's files only grew since the last good ingest with the same
    registry entry and settings; None for a whole read (also when the partition is not in the home: a store URL)."""
    if prev is None or prev.metadata.get("records_written") is not True:
        return None
    if prev.metadata.get(ENTRY_FINGERPRINT) != entry:
        return None
    if not store.partition_path("raw_records", source).is_file():
        return None
    states, units = prev.metadata.get(FILE_STATES) or {}, prev.metadata.get("units_per_file") or {}
    return append_offsets(files, states, units) if states else None


def _carry_over(
    store: Store, source: str, write_records: PartitionWriter, write_quarantine: PartitionWriter
) -> EarlierRecords:
    """Copy the last good partition's records and quarantine into the new partition, batch by batch; return what
    answers, batch by batch, which new record ids it held (a DuckDB join over its Parquet, for duplicate detection:
    nothing per earlier record is kept in memory)."""
    for table, write in (("raw_records", write_records), ("quarantine", write_quarantine)):
        path = store.partition_path(table, source)
        if not path.is_file():
            continue
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            write(pl.from_arrow(batch))  # type: ignore[arg-type]
    # the earlier partition stays at its path until the new one replaces it when the writers' block ends
    return EarlierRecords(store.partition_path("raw_records", source), temp_directory=store.temp_directory)


def _add_earlier(stats: IngestStats, earlier: dict) -> None:
    """Make an append read's counts those of the whole source (the earlier read's plus the new lines')."""
    stats.units_read += int(earlier.get("lines_read", 0))
    stats.records += int(earlier.get("dagster/row_count", 0))
    stats.quarantined += int(earlier.get("quarantined", 0))
    stats.extra_rows += int(earlier.get("extra_rows", 0))
    stats.unused_keys.update(earlier.get("unused_text_keys") or {})
    stats.tokens += int(earlier.get("tokens", 0))
    stats.reasons.update(earlier.get("quarantine_reasons") or {})
    stats.layouts.update(earlier.get("layouts") or {})


def _preview(path: Path) -> dg.MetadataValue:
    """The first rows of the written partition, without reading the rest of it."""
    if not path.is_file():  # tables on object storage: no local file to peek at
        return dg.MetadataValue.md("(on object storage)")
    return md_table(pl.scan_parquet(path, glob=False).select(PREVIEW).head(5).collect(), n=5)


def _usable_check(source: str, stats: IngestStats, share: float, limit: float, inspect: str) -> dg.AssetCheckResult:
    top = stats.reasons.most_common(1)
    why = f"; most common reason: {top[0][0]} ({top[0][1]})" if top else ""
    hint = f"; run `{inspect}` to see why (the last good records are kept)"
    if stats.records == 0:
        passed, text = False, f"source {source!r}: 0 records from {stats.units_read} units read{why}{hint}"
    elif share > limit:
        passed = False
        text = (
            f"source {source!r}: {stats.quarantined} of {stats.units_read} units quarantined ({share:.0%}, limit "
            f"{limit:.0%} max_quarantine_share){why}{hint}"
        )
    else:
        passed, text = True, f"{stats.records} records, {stats.quarantined} quarantined ({share:.1%})"
    return dg.AssetCheckResult(
        check_name="records_usable",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=text,
        metadata={"records": stats.records, "quarantined_share": round(share, 4), "limit": limit},
    )

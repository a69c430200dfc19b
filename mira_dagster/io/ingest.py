"""A whole source's files, read batch by batch into (records, quarantine) frames.

The files are found and read by io/readers.py; each batch is parsed by core/records.BatchParser. Reading and
parsing overlap: this thread decodes, normalises, hashes and deduplicates while a second thread counts tokens and
builds the frames (polars, which releases the GIL) one batch behind, in order. Plain JSON Lines batches are decoded
by Arrow's reader (decode_lines) and Parquet / Arrow rows stay record batches (readers' lazy table units), so the
rows of the common QA layouts are read as columns (core/columnar.py); every other row is read per record, in
Python, as before."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
import pyarrow.json as pj
from pydantic import BaseModel

from mira_dagster.core.columnar import MAX_DEPTH, type_depth
from mira_dagster.core.config import Family
from mira_dagster.core.mapping import FieldMapping
from mira_dagster.core.records import MAX_RECORD_BYTES, BatchParser, IngestStats, Parsed, entry_fingerprint
from mira_dagster.core.redact import redact
from mira_dagster.io.readers import (
    detect,
    expand_files,
    file_versions,
    iter_units,
    materialise,
    sniff,
    split_name,
    table_schema,
)

_IN_FLIGHT = 1  # batches parsed ahead of the one being finished (2 measured no faster): memory holds 2 batches


class SourceIngest:
    """Reads one source's files batch by batch: `batches()` yields (records, quarantine) frames, `stats` counts."""

    def __init__(
        self,
        source: str,
        group_id: str,
        family: Family,
        patterns: Sequence[Path],
        *,
        max_bytes: int = MAX_RECORD_BYTES,
        mapping: FieldMapping | None = None,
        batch_size: int = 2048,
        sink: Callable[[pl.DataFrame, pl.DataFrame], None] | None = None,
        resume: dict[Path, tuple[int, int]] | None = None,
        earlier: Callable[[list[str]], Mapping[str, str]] | None = None,
        secrets: Sequence[str] = (),
        roots: Sequence[Path] = (),
        preference: Literal["chosen", "rejected", "both"] = "chosen",
        scratch: Path | None = None,
        columnar: bool = True,
    ) -> None:
        """`sink(records, quarantine)`, when given, is called with each batch's frames on the worker thread (the
        writes then overlap with decoding the next batch too). `resume` (file -> (byte offset, units already read))
        reads only what was appended to files an earlier ingest read, `earlier(ids)` (-> {record_id: "file:line"})
        answering which of a batch's ids that ingest read (see BatchParser). Quarantine excerpts and reasons are
        redacted of `secrets` (the configured keys) and of anything that looks like key material: an unvetted dataset
        may link to a key file. `roots`: where symlinks may lead (the registry's folder and allowed_roots, see
        readers.expand_files). `scratch`: the folder under MIRA_HOME where archive members are unpacked while read
        (readers.default_scratch if None). `columnar=False` reads every unit per record (the path the columnar one
        is checked against)."""
        self.sink = sink
        self.source = source
        self.files = expand_files(patterns, source, roots)  # raises SourceFileError naming the entry
        self.names = display_names(self.files)
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self.stats = IngestStats(files=[str(f) for f in self.files])
        self.parser = BatchParser(
            source,
            group_id,
            family,
            max_bytes=max_bytes,
            mapping=mapping,
            earlier=earlier,
            stats=self.stats,
            preference=preference,
            decode=decode_lines if columnar else None,
            materialise=materialise,
        )
        self.resume = resume or {}
        self.columnar = columnar
        self.secrets = tuple(secrets)
        self.scratch = scratch
        # what each file is (readers.detect), by display name, for the metadata and `mira inspect`
        self.containers: dict[str, str] = {}
        # the column types of each table file (Parquet, Arrow), by display name: the export restores them
        self.table_schemas: dict[str, pa.Schema] = {}

    def batches(self) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        with ThreadPoolExecutor(1, thread_name_prefix="mira-ingest") as pool:
            pending: deque[Future[tuple[pl.DataFrame, pl.DataFrame]]] = deque()
            for path in self.files:
                name = self.names[path]
                before = self.stats.units_read
                start, done = self.resume.get(path, (0, 0))
                with contextlib.suppress(Exception):  # a file refused or unreadable: iter_units raises, naming why
                    container = detect(path)
                    self.containers[name] = container.describe()
                    if (schema := table_schema(path, container)) is not None:
                        self.table_schemas[name] = schema
                form = original_form(path)
                for units in iter_units(
                    path,
                    self.source,
                    self.max_bytes,
                    self.batch_size,
                    start,
                    done + 1,
                    self.scratch,
                    lazy_tables=self.columnar,
                ):
                    self.stats.units_read += len(units)
                    # an archive's batch holds one member's units: named `data.tar.gz!/a.jsonl` in their origin
                    member = units[0].member
                    origin = name if member is None else f"{name}!/{member}"
                    unit_form = form if member is None else member_form(member)
                    if member is not None and units[0].table is not None and origin not in self.table_schemas:
                        self.table_schemas[origin] = units[0].table[0].schema.remove_metadata()  # a table member
                    pending.append(pool.submit(self._finish, origin, self.parser.parse(origin, units, unit_form)))
                    if len(pending) > _IN_FLIGHT:
                        yield pending.popleft().result()
                self.stats.units_per_file[str(path)] = done + self.stats.units_read - before
                if self.stats.units_read == before and not done:
                    self.stats.empty_files.append(str(path))
            while pending:
                yield pending.popleft().result()

    def _finish(self, name: str, parsed: Parsed) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The frames of one batch, handed to the sink (on the worker thread, in order)."""
        records, quarantine = self.parser.frames(name, parsed)
        if quarantine.height:
            quarantine = quarantine.with_columns(
                pl.col(c).map_elements(lambda t: redact(t, self.secrets), return_dtype=pl.String)
                for c in ("reason", "excerpt")
            )
        if self.sink is not None:
            self.sink(records, quarantine)
        return records, quarantine


def decode_lines(lines: list[bytes]) -> pa.Table | None:
    """JSON Lines lines decoded by Arrow's reader (both cores), one row a line; None when Arrow refuses one of them
    or reads a line as other than one object, or a string in it is not UTF-8 (the batch is then read per record,
    which says why).

    Arrow infers the schema of the batch's first lines only (at most _SAMPLE of them, each with few brackets) and
    reads every line against it, refusing any key or type the sample did not have: inferring over the whole batch
    takes minutes on values nested thousands deep or objects whose keys all differ (measured: 2,048 lines of
    distinct keys 1,000 deep, 459 s), where the schema given keeps Arrow linear (and three times faster)."""
    sample = list(itertools.islice((r for r in lines if r.count(b"[") + r.count(b"{") <= _SAMPLE_BRACKETS), _SAMPLE))
    if not sample:
        return None
    try:
        schema = pj.read_json(io.BytesIO(b"\n".join(sample)), read_options=_JSON_OPTIONS).schema
        if type_depth(schema) > MAX_DEPTH or _fields(schema) > _MAX_FIELDS:
            return None
        options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
        table = pj.read_json(io.BytesIO(b"\n".join(lines)), read_options=_JSON_OPTIONS, parse_options=options)
        table.validate(full=True)  # Arrow's JSON reader does not check that strings are UTF-8
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    return table if table.num_rows == len(lines) else None


def _fields(schema: pa.Schema) -> int:
    """How many fields the schema has at every depth."""
    count, stack = 0, [f.type for f in schema]
    while stack:
        typ = stack.pop()
        count += 1
        stack += [typ.field(i).type for i in range(typ.num_fields)]
    return count


_JSON_OPTIONS = pj.ReadOptions(use_threads=True, block_size=1 << 22)
_SAMPLE, _SAMPLE_BRACKETS, _MAX_FIELDS = 64, 200, 2000


# readers' kinds whose units are a table's rows (exported as Parquet rows with the input's columns)
TABLE_KINDS = frozenset({"parquet", "csv", "tsv", "arrow", "feather", "ipc", "hf_dataset", "hf_datasets", "datasets"})


def member_form(member: str) -> str:
    """An archive member's form, by its name (readers dispatch members like files; a table member is exported as
    rows, as the same file outside the archive would be)."""
    suffix = split_name(member)[1] or ""
    return "row" if suffix.lstrip(".") in TABLE_KINDS else "json"


def original_form(path: Path) -> str:
    """How a file holds its values, for the export: "json" (JSON Lines, JSON) or "row" (a table: Parquet, ...)."""
    try:
        kind = sniff(path)[0]
    except Exception:  # unreadable: iter_units says why, naming the file
        return "json"
    return "row" if str(kind).lower() in TABLE_KINDS else "json"


def display_names(files: Sequence[Path]) -> dict[Path, str]:
    """How a file is named in origin_file and reasons: its name, or its path from the files' common folder when
    two files share a name (shards `train/part-0.parquet` and `test/part-0.parquet`)."""
    names = Counter(f.name for f in files)
    if all(n == 1 for n in names.values()):
        return {f: f.name for f in files}
    root = Path(*Path(files[0]).parent.parts[: _common_depth(files)])
    return {f: str(f.relative_to(root)) for f in files}


def _common_depth(files: Sequence[Path]) -> int:
    parts = [f.parent.parts for f in files]
    depth = 0
    while all(len(p) > depth and p[depth] == parts[0][depth] for p in parts):
        depth += 1
    return depth


def input_fingerprint(files: Sequence[Path]) -> str:
    """A cheap identity of a version of a source's files: it changes when a file is edited, replaced, added or
    removed, without reading the contents."""
    return hashlib.sha256("\n".join(file_versions(files)).encode()).hexdigest()[:16]


def ingest_fingerprint(files: Sequence[Path], entry: BaseModel, max_record_bytes: int) -> str:
    """Everything that changes a source's raw_records: its files' identity and entry_fingerprint."""
    parts = [input_fingerprint(files), entry_fingerprint(entry, max_record_bytes)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

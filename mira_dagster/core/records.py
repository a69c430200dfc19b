"""Turning what a source's files hold into normalised records, with a quarantine for everything that is not one.

Files are read by io/readers.py (JSONL, JSON arrays, Parquet; compressed or not), objects are mapped onto the
prompt family's text fields by a layout found without configuration (core/layouts.py) or by the source's field
mapping (core/mapping.py), and each batch becomes a frame of records and a frame of quarantine rows:

- `qa_with_think` and `qa`: question, thinking (may be empty), answer;
- `agent`: task, trajectory (rendered turns), outcome (the final patch or submission).

Every unit read (line, element, row) ends as exactly one record or one quarantine row with a reason: no error in
one unit, whatever it is, stops the others. Token counts are computed per batch by polars, not per record.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel

from mira_dagster.core.config import Family
from mira_dagster.core.layouts import REQUIRED, Fields, match
from mira_dagster.core.mapping import MAPPED_LAYOUT, FieldMapping

TEXT_FIELDS = ("question", "thinking", "answer", "task", "trajectory", "outcome")

# Words cut into pieces of at most 4 characters, plus punctuation, counted by polars' (Rust) regex engine for
# batches and single strings alike, so there is one definition ("word" is Unicode's: letters, marks, digits).
TOKEN_PATTERN = r"\w{1,4}|[^\w\s]"

MAX_RECORD_BYTES = 4 * 1024 * 1024  # a longer line is quarantined: no scorer context holds it
_BOM = b"\xef\xbb\xbf"

RECORD_SCHEMA = {
    "record_id": pl.String,
    "source": pl.String,
    "group_id": pl.String,
    "format": pl.String,
    "layout": pl.String,
    **{f: pl.String for f in TEXT_FIELDS},
    "n_tokens": pl.Int64,
    "origin_file": pl.String,
    "origin_line": pl.Int64,
}

QUARANTINE_SCHEMA = {
    "source": pl.String,
    "origin_file": pl.String,
    "origin_line": pl.Int64,
    "kind": pl.String,  # the reason's class, for counting: "invalid JSON", "duplicate", "no layout", ...
    "reason": pl.String,
    "excerpt": pl.String,
}


@dataclass(slots=True)
class Unit:
    """One thing read from a file: a raw JSONL line still to decode, or an already decoded value."""

    position: int  # 1-based line (JSONL), element (JSON array) or row (Parquet) in its file
    raw: bytes | None = None
    obj: Any = None
    error: str | None = None  # the unit could not be read at all (the broken tail of a JSON array, a bad row)
    oversize: int | None = None  # a line over the cap: its size in bytes (raw then holds only its head)
    member: str | None = None  # the archive member it was read from (position then counts within the member)


def estimate_tokens(text: str) -> int:
    """An offline token estimate: it tracks BPE tokenizers within roughly +-25% on English prose and code; it is
    used for budgets and the offline length check. The serving path can count with the server's tokenizer."""
    return count_tokens(pl.Series([text], dtype=pl.String))[0]


def count_tokens(texts: pl.Series) -> pl.Series:
    """estimate_tokens over a whole column at once (null counts 0)."""
    return pl.select(token_count(pl.lit(texts))).to_series()


def token_count(text: pl.Expr) -> pl.Expr:
    """estimate_tokens as a polars expression (null counts 0)."""
    return text.fill_null("").str.count_matches(TOKEN_PATTERN).cast(pl.Int64)


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:  # one scan instead of two replaces for the usual text without any
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


class Record(BaseModel):
    record_id: str
    source: str
    group_id: str
    format: Family
    layout: str
    question: str | None = None
    thinking: str | None = None
    answer: str | None = None
    task: str | None = None
    trajectory: str | None = None
    outcome: str | None = None
    n_tokens: int
    origin_file: str
    origin_line: int


def records_from(df: pl.DataFrame) -> list[Record]:
    """The frame's rows (raw_records' columns, any others ignored) as validated Records."""
    return [Record(**row) for row in df.select(list(RECORD_SCHEMA)).iter_rows(named=True)]


def iter_records(df: pl.DataFrame) -> Iterator[Record]:
    """The frame's rows as Records, one at a time and not validated again: raw_records' rows were validated at
    ingest (its schema), and a scored source streams millions of them."""
    for row in df.select(list(RECORD_SCHEMA)).iter_rows(named=True):
        yield Record.model_construct(**row)


def record_text(row: Mapping[str, Any], limit: int = 4000) -> str:
    """A record's text fields joined, cut to `limit` characters: what is embedded to compare sources."""
    return "\n".join(row[f] for f in TEXT_FIELDS if row.get(f))[:limit]


# The canonical form the record_id hashes (a fixed contract): json.dumps(..., ensure_ascii=False, sort_keys=True).
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def record_id_of(fields: dict[str, str | None]) -> str:
    """Hash of the normalised content only, so the same content in two sources has one id."""
    return _id_of_normalised({k: normalise_text(v) for k, v in fields.items() if v})


def _id_of_normalised(fields: dict[str, str]) -> str:
    canon = {k: v for k, v in sorted(fields.items()) if v}
    blob = _CANONICAL.encode(canon).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# One unit -> (layout, normalised fields), or why not.


class Rejected(Exception):
    """A unit that cannot become a record: (kind, reason)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _no_constant(name: str) -> Any:
    raise Rejected("invalid JSON", f"invalid JSON: {name} is not a JSON value")


# Built once: json.loads / json.dumps with non-default arguments build a new decoder / encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=lambda text: _finite(float(text), text))


def _finite(value: float, text: str) -> float:
    if value in (float("inf"), float("-inf")):  # 1e999: no number a text field can hold
        raise Rejected("invalid JSON", f"invalid JSON: {text[:40]} is out of range for a number")
    return value


def decode_line(raw: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """The JSON value of one JSONL line; raises Rejected with the reason."""
    if raw.startswith(_BOM):  # a byte-order mark (first line of a file written by some Windows tools)
        raw = raw[3:]
    if not raw or raw.isspace():  # no copy of the line, unlike strip()
        raise Rejected("blank line", "blank line")
    if len(raw) > max_bytes:
        raise Rejected(
            "too large", f"record of {len(raw):,} bytes is over the {max_bytes:,}-byte limit (max_record_bytes)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not UTF-8", f"not valid UTF-8 (byte {exc.start})") from None
    try:
        # the standard library keeps big integers exact (a math answer may be one); NaN/Infinity are refused
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise Rejected("invalid JSON", f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise Rejected("invalid JSON", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit limit
        raise Rejected("invalid JSON", f"invalid JSON: {str(exc).splitlines()[0][:200]}") from None


def to_fields(obj: Any, family: Family, mapping: FieldMapping | None) -> tuple[str, Fields]:
    """(layout, normalised text fields) of one decoded object; raises Rejected."""
    if not isinstance(obj, dict):
        raise Rejected("not an object", f"expected a JSON object, got {_json_type(obj)}")
    if mapping is not None:
        name, fields = MAPPED_LAYOUT, mapping.apply(obj)
    else:
        found = match(obj, family)
        if found is None:
            raise Rejected("no layout", f"no {family} layout matches keys {sorted(map(str, obj))[:12]}")
        name, fields = found
    fields = {k: normalise_text(v) for k, v in fields.items()}
    missing = [f for f in REQUIRED[family] if not fields.get(f)]
    if missing:
        raise Rejected("empty field", f"layout {name}: empty required field(s) {missing}")
    return name, fields


def _json_type(obj: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(obj), type(obj).__name__)


def unit_value(unit: Unit, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """The JSON value a unit holds (a decoded line, an array element, a Parquet row); raises Rejected when it
    holds none: unreadable, over the size limit, or not valid JSON."""
    if unit.error is not None:
        raise Rejected("unreadable", unit.error)
    if unit.oversize is not None:
        raise Rejected(
            "too large", f"record of {unit.oversize:,} bytes is over the {max_bytes:,}-byte limit (max_record_bytes)"
        )
    return decode_line(unit.raw, max_bytes) if unit.raw is not None else unit.obj


def parse_unit(unit: Unit, family: Family, mapping: FieldMapping | None, max_bytes: int) -> tuple[str, Fields, str]:
    """(layout, normalised fields, record_id) of a unit; raises Rejected for anything that goes wrong, so that no
    unit, however malformed, escapes as an exception."""
    try:
        obj = unit_value(unit, max_bytes)
        layout, fields = to_fields(obj, family, mapping)
        if sum(map(len, fields.values())) > max_bytes:  # objects from JSON arrays and Parquet have no line size
            raise Rejected("too large", f"record text is over the {max_bytes:,}-character limit (max_record_bytes)")
        return layout, fields, _id_of_normalised(fields)  # hashing UTF-8 refuses lone surrogates ("\ud800")
    except Rejected:
        raise
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\ud800") that decoded but is no text
        raise Rejected("not UTF-8", f"text is not valid Unicode ({exc.reason} at character {exc.start})") from None
    except RecursionError:
        raise Rejected("invalid JSON", "nested too deeply to read") from None
    except Exception as exc:  # anything else in one unit is that unit's problem only
        raise Rejected("error", f"could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None


def _excerpt(unit: Unit) -> str:
    """At most 200 characters of what the unit held, from the configured file itself."""
    if unit.raw is not None:
        return unit.raw[:200].decode("utf-8", errors="replace")
    try:
        return json.dumps(unit.obj, ensure_ascii=False, default=str)[:200]
    except Exception:  # a value json cannot render (a lone surrogate, deep nesting): its repr, if it has one
        try:
            return repr(unit.obj)[:200]
        except Exception:
            return f"<a {type(unit.obj).__name__} nested too deeply to show>"


def printable(text: str) -> str:
    """Text that is valid Unicode (a lone surrogate from the data, quoted in a reason, becomes '?')."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


# ---------------------------------------------------------------------------------------------
# A whole source, as a stream of batches.


@dataclass
class IngestStats:
    """What reading a source found, for metadata, the summary and `mira inspect`."""

    units_read: int = 0
    records: int = 0
    quarantined: int = 0
    tokens: int = 0
    files: list[str] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)
    units_per_file: dict[str, int] = field(default_factory=dict)
    layouts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # by kind


class BatchParser:
    """Turns batches of one source's units into (records, quarantine) frames, counting into `stats`.

    Duplicates inside the source (same record_id) are quarantined as "duplicate of <file:line>"; duplicates
    across sources are resolved at selection (one owner per record_id). `seen` (record_id -> "file:line") are
    records an earlier ingest of the source read, so a new line that repeats one of them is a duplicate as in a
    whole read."""

    def __init__(
        self,
        source: str,
        group_id: str,
        family: Family,
        *,
        max_bytes: int = MAX_RECORD_BYTES,
        mapping: FieldMapping | None = None,
        seen: dict[str, str] | None = None,
        stats: IngestStats | None = None,
    ) -> None:
        self.source, self.group_id, self.family = source, group_id, family
        self.max_bytes, self.mapping = max_bytes, mapping
        self.stats = stats or IngestStats()
        self._seen: dict[str, str] = dict(seen or {})  # record_id -> "file:line" of its first occurrence

    def parse(self, name: str, units: list[Unit]) -> Parsed:
        """Decode, normalise, hash and deduplicate one batch of file `name` (all per-record Python)."""
        parsed = Parsed()
        for unit in units:
            try:
                layout, fields, rid = parse_unit(unit, self.family, self.mapping, self.max_bytes)
                if rid in self._seen:
                    raise Rejected("duplicate", f"duplicate of {self._seen[rid]}")
            except Rejected as rej:
                parsed.rejected.append((unit.position, rej.kind, printable(str(rej)), printable(_excerpt(unit))))
                continue
            self._seen[rid] = f"{name}:{unit.position}"
            parsed.record_id.append(rid)
            parsed.layout.append(layout)
            parsed.position.append(unit.position)
            for f in TEXT_FIELDS:
                parsed.text[f].append(fields.get(f))
        return parsed

    def frames(self, name: str, parsed: Parsed) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Token counts and the two frames of one parsed batch (polars: it releases the GIL)."""
        records = pl.DataFrame(
            {"record_id": parsed.record_id, "layout": parsed.layout, "origin_line": parsed.position, **parsed.text},
            schema={c: RECORD_SCHEMA[c] for c in ("record_id", "layout", "origin_line", *TEXT_FIELDS)},
        )
        records = records.with_columns(
            pl.lit(self.source).alias("source"),
            pl.lit(self.group_id).alias("group_id"),
            pl.lit(self.family).alias("format"),
            pl.sum_horizontal(token_count(pl.col(f)) for f in TEXT_FIELDS).alias("n_tokens"),
            pl.lit(name).alias("origin_file"),
        ).select(list(RECORD_SCHEMA))
        rejected = parsed.rejected
        columns = ("origin_line", "kind", "reason", "excerpt")
        quarantine = pl.DataFrame(
            {
                "source": [self.source] * len(rejected),
                "origin_file": [name] * len(rejected),
                **{c: [row[i] for row in rejected] for i, c in enumerate(columns)},
            },
            schema=QUARANTINE_SCHEMA,
        )
        self.stats.records += records.height
        self.stats.quarantined += quarantine.height
        self.stats.tokens += int(records["n_tokens"].sum()) if records.height else 0
        self.stats.layouts.update(parsed.layout)
        self.stats.reasons.update(kind for _, kind, _, _ in rejected)
        return records, quarantine


@dataclass
class Parsed:
    """One batch after decoding, normalising and deduplicating: column lists of the records, and the rejected."""

    record_id: list[str] = field(default_factory=list)
    layout: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    text: dict[str, list[str | None]] = field(default_factory=lambda: {f: [] for f in TEXT_FIELDS})
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)


# Bump when a change to ingest changes what it writes for the same files: every source is then re-ingested.
INGEST_CODE_VERSION = "2026-11-26"


def entry_fingerprint(entry: BaseModel, max_record_bytes: int) -> str:
    """What changes a source's raw_records besides its files: its registry entry (group, format, files, fields
    mapping), the record size cap and the ingest code version."""
    parts = [entry.model_dump_json(), str(max_record_bytes), INGEST_CODE_VERSION]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

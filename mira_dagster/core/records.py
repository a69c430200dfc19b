"""Turning what a source's files hold into normalised records, with a quarantine for everything that is not one.

Files are read by io/readers.py (JSONL, JSON arrays, Parquet; compressed or not), objects are mapped onto the
prompt family's text fields by a layout found without configuration (core/layouts.py) or by the source's field
mapping (core/mapping.py), and each batch becomes a frame of records and a frame of quarantine rows:

- `qa_with_think` and `qa`: question, thinking (may be empty), answer;
- `agent`: task, trajectory (rendered turns), outcome (the final patch or submission).

Every unit read (line, element, row) ends as exactly one record or one quarantine row with a reason: no error in
one unit, whatever it is, stops the others. Token counts are computed per batch, column by column
(core/columnar.token_counts), not per record.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import polars as pl
import pyarrow as pa
from pydantic import BaseModel

from mira_dagster.core.columnar import PY_SPACE, Placed, place, plain_lines, token_counts, within, without_constants
from mira_dagster.core.config import Family
from mira_dagster.core.layouts import (
    NON_TEXT,
    PREFERENCE_LAYOUTS,
    REQUIRED,
    Fields,
    Side,
    WrittenFloat,
    as_object,
    hh_turns,
    match,
    normalise_text,
    not_chosen_key,
    ranked_answers,
)
from mira_dagster.core.mapping import MAPPED_LAYOUT, FieldMapping, suggest_with_unused

TEXT_FIELDS = ("question", "thinking", "answer", "task", "trajectory", "outcome")

# Words cut into pieces of at most 4 characters, plus punctuation: the number of matches of this pattern under
# polars' (Rust) regex engine, for batches and single strings alike, so there is one definition ("word" is
# Unicode's: letters, marks, digits, connector punctuation). core/columnar.token_counts counts the same without the
# regex (tests/core/test_columnar.py checks it against this pattern).
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

# raw_records as stored: the record columns, then what the producer wrote. `original` is the unit's JSON value as
# JSON text (a JSON Lines line's own text, unchanged: no re-serialisation), `original_form` says which export form
# gives it back: "json" (JSON Lines, JSON documents and arrays) or "row" (a table's row: Parquet and other tables).
# The scorer never reads them (RECORD_SCHEMA's columns are what it selects).
RAW_RECORD_SCHEMA = {**RECORD_SCHEMA, "original_form": pl.String, "original": pl.String}

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
    table: Any = None  # (Arrow record batch, row) of a table row not converted yet (readers.materialise)


def estimate_tokens(text: str) -> int:
    """An offline token estimate: it tracks BPE tokenizers within roughly +-25% on English prose and code; it is
    used for budgets and the offline length check. The serving path can count with the server's tokenizer."""
    return int(token_counts(pa.array([text], type=pa.large_string()))[0])


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


class RecordRow(NamedTuple):
    """A raw_records row as the scoring path reads it: Record's fields, as a plain tuple (no pydantic object per
    record; the rows were validated at ingest, and a scored source streams millions of them)."""

    record_id: str
    source: str
    group_id: str
    format: Family
    layout: str
    question: str | None
    thinking: str | None
    answer: str | None
    task: str | None
    trajectory: str | None
    outcome: str | None
    n_tokens: int
    origin_file: str
    origin_line: int


# What prompts and score rows are built from: a validated Record or a row read from raw_records.
RecordLike = Record | RecordRow


def record_rows(df: pl.DataFrame) -> Iterator[RecordRow]:
    """The frame's rows (raw_records' columns, any others ignored) as RecordRows, one at a time, straight from its
    columns."""
    return map(RecordRow._make, df.select(list(RECORD_SCHEMA)).iter_rows())


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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key appears twice has two values for one field: which one the user meant is a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise Rejected(
            "invalid JSON",
            f"invalid JSON: key {json.dumps(twice, ensure_ascii=False)[:80]} appears twice in one object",
        )
    return obj


# Built once: json.loads / json.dumps with non-default arguments build a new decoder / encoder on every call.
_DECODER = json.JSONDecoder(
    parse_constant=_no_constant,
    parse_float=lambda text: _finite(float(text), text),
    object_pairs_hook=_unique_keys,
)


def _finite(value: float, text: str) -> float:
    if value in (float("inf"), float("-inf")):  # 1e999: no number a text field can hold
        raise Rejected("invalid JSON", f"invalid JSON: {text[:40]} is out of range for a number")
    return WrittenFloat(value, text)


def _decode(raw: bytes, max_bytes: int) -> tuple[Any, str]:
    """(JSON value, its text) of one line."""
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
        return _DECODER.decode(text), text
    except json.JSONDecodeError as exc:
        raise Rejected("invalid JSON", f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise Rejected("invalid JSON", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's 4,300-digit limit
        raise Rejected("invalid JSON", f"invalid JSON: {str(exc).splitlines()[0][:200]}") from None


def to_fields(obj: Any, family: Family, mapping: FieldMapping | None, side: Side = "chosen") -> tuple[str, Fields]:
    """(layout, normalised text fields) of one decoded value; raises Rejected. An object, or a bare list of chat
    turns (one conversation); a `fields:` mapping applies to any value (JMESPath indexes a list as well)."""
    if mapping is not None:
        if not isinstance(obj, dict | list):
            raise Rejected("not an object", f"expected a JSON object or list, got {_json_type(obj)}")
        name, fields = MAPPED_LAYOUT, mapping.apply(obj)
    else:
        if as_object(obj) is None:
            if isinstance(obj, list):
                raise Rejected("not an object", f"a list that is not a conversation ({_list_shape(obj)})")
            raise Rejected("not an object", f"expected a JSON object, got {_json_type(obj)}")
        found = match(obj, family, side)
        if found is None:
            keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else "of a list of turns"
            raise Rejected("no layout", f"no {family} layout matches keys {keys}")
        name, fields = found
    fields = {k: normalise_text(v) for k, v in fields.items()}
    missing = [f for f in REQUIRED[family] if not fields.get(f)]
    if missing:
        raise Rejected("empty field", f"layout {name}: empty required field(s) {missing}")
    if only := [f for f in REQUIRED[family] if NON_TEXT in fields[f] and _ONLY_NON_TEXT.fullmatch(fields[f])]:
        raise Rejected("empty field", f"layout {name}: required field(s) {only} hold no text, only non-text parts")
    return name, fields


_ONLY_NON_TEXT = re.compile(rf"(?:\[{re.escape(NON_TEXT)}[^\]\n]*\]\s*)+")


def _list_shape(value: list) -> str:
    if not value:
        return "empty"
    first = value[0]
    what = f"keys {sorted(map(str, first))[:8]}" if isinstance(first, dict) else _json_type(first)
    return f"{len(value)} items, the first {what}"


def _json_type(obj: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(obj), type(obj).__name__)


def unit_value(unit: Unit, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """The JSON value a unit holds (a decoded line, an array element, a Parquet row); raises Rejected when it
    holds none: unreadable, over the size limit, or not valid JSON."""
    return read_unit(unit, max_bytes)[0]


def read_unit(unit: Unit, max_bytes: int = MAX_RECORD_BYTES) -> tuple[Any, str | None]:
    """(JSON value, the line's own text for a JSON Lines line, else None); raises Rejected as unit_value."""
    if unit.error is not None:
        raise Rejected("unreadable", unit.error)
    if unit.oversize is not None:
        raise Rejected(
            "too large", f"record of {unit.oversize:,} bytes is over the {max_bytes:,}-byte limit (max_record_bytes)"
        )
    if unit.raw is None:
        return unit.obj, None
    try:
        return _decode(unit.raw, max_bytes)
    except RecursionError:
        raise Rejected("invalid JSON", "nested too deeply to read") from None


def original_text(value: Any, text: str | None) -> str:
    """What the producer wrote, as JSON text: a line's own text (surrounding whitespace dropped, nothing else
    touched), else the value serialised (a table's row: its columns; dates as ISO 8601, decimals as text, bytes as
    UTF-8 text or, when they are not text, base64)."""
    if text is not None:
        return text.strip() if text[:1].isspace() or text[-1:].isspace() else text
    return json.dumps(value, ensure_ascii=False, default=_json_scalar)


def _json_scalar(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)  # Decimal, UUID, ...: their exact text


def record_of(
    obj: Any, family: Family, mapping: FieldMapping | None, max_bytes: int, side: Side = "chosen"
) -> tuple[str, Fields, str]:
    """(layout, normalised fields, record_id) of a decoded value; raises Rejected only."""
    return _guarded(_record_of, obj, family, mapping, max_bytes, side)


def _record_of(
    obj: Any, family: Family, mapping: FieldMapping | None, max_bytes: int, side: Side
) -> tuple[str, Fields, str]:
    layout, fields = to_fields(obj, family, mapping, side)
    if sum(map(len, fields.values())) > max_bytes:  # objects from JSON arrays and Parquet have no line size
        raise Rejected("too large", f"record text is over the {max_bytes:,}-character limit (max_record_bytes)")
    return layout, fields, _id_of_normalised(fields)  # hashing UTF-8 refuses lone surrogates ("\ud800")


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), any exception but Rejected turned into one, so one unit never stops the others."""
    try:
        return fn(*args)
    except Rejected:
        raise
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\ud800") that decoded but is no text
        raise Rejected("not UTF-8", f"text is not valid Unicode ({exc.reason} at character {exc.start})") from None
    except RecursionError:
        raise Rejected("invalid JSON", "nested too deeply to read") from None
    except Exception as exc:  # anything else in one unit is that unit's problem only
        raise Rejected("error", f"could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None


# Item 5: a layout that matched but left prose unused. A key is named when its string value is long prose (at
# least UNUSED_MIN_CHARS, with a space, not a serialised structure) and most of five windows of it (spread over
# its inside) are in no field; the sides of a preference pair are left out on purpose.
UNUSED_MIN_CHARS = 40
_PROBE, _PROBES = 24, 5


def unused_text_keys(obj: Any, fields: Mapping[str, str]) -> list[str]:
    """Top-level keys of `obj` holding prose that none of the record's fields contains: a string, or a list of
    strings any one of which is (OpenR1's `generations`: the traces besides the one a layout read)."""
    if not isinstance(obj, dict):
        return []
    texts = [t for t in fields.values() if t]
    unused = []
    for key, value in obj.items():
        if _side_key(key):
            continue
        values = value if isinstance(value, list) and all(isinstance(v, str | None) for v in value) else [value]
        if any(_unused_prose(v, texts) for v in values):
            unused.append(str(key))
    return unused


def _unused_prose(value: Any, texts: list[str]) -> bool:
    if not isinstance(value, str) or len(value) < UNUSED_MIN_CHARS:
        return False
    text = normalise_text(value)
    if len(text) < UNUSED_MIN_CHARS or text[0] in "[{" or " " not in text:
        return False
    if (turns := hh_turns(value)) and all(
        any(normalise_text(t["content"]) in f for f in texts) for t in turns if t["content"].strip()
    ):
        return False  # a Human/Assistant transcript read turn by turn (its markers become roles)
    # windows inside the text (a layout may drop tags at its ends or split it in the middle)
    size = max(12, min(_PROBE, len(text) // 6))  # short texts: shorter windows, fewer across a split
    step = max(1, (len(text) - size) // (_PROBES + 1))
    probes = [text[i * step : i * step + size] for i in range(1, _PROBES + 1)]
    return sum(any(p in t for t in texts) for p in probes) <= _PROBES // 2  # a common phrase may be anywhere


def _side_key(key: Any) -> bool:
    return not_chosen_key(key) or "chosen" in str(key).lower()


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
    # rows beyond the first of one unit (`preference: both` makes up to two of each pair): units read =
    # records + quarantined - extra_rows
    extra_rows: int = 0
    # keys holding prose a detected layout left out (item 5): key -> records, the first "file:line", and a
    # `fields:` mapping that takes them in, made from the first such record
    unused_keys: Counter[str] = field(default_factory=Counter)
    unused_first: dict[str, str] = field(default_factory=dict)
    suggested_fields: dict[str, str] = field(default_factory=dict)


class BatchParser:
    """Turns batches of one source's units into (records, quarantine) frames, counting into `stats`.

    Duplicates inside the source (same record_id) are quarantined as "duplicate of <file:line>"; duplicates
    across sources are resolved at selection (one owner per record_id). `earlier(ids)` answers which of a batch's
    record ids an earlier ingest of the source read (record_id -> "file:line"), so a new line that repeats one of
    them is a duplicate as in a whole read; it is asked once per batch, so no structure over the earlier records
    is held here (an append's memory does not grow with the source)."""

    def __init__(
        self,
        source: str,
        group_id: str,
        family: Family,
        *,
        max_bytes: int = MAX_RECORD_BYTES,
        mapping: FieldMapping | None = None,
        earlier: Callable[[list[str]], Mapping[str, str]] | None = None,
        stats: IngestStats | None = None,
        preference: Literal["chosen", "rejected", "both"] = "chosen",
        decode: Callable[[list[bytes]], pa.Table | None] | None = None,
        materialise: Callable[[list[Unit]], None] | None = None,
    ) -> None:
        """`decode(lines)`, when given, decodes a batch's plain JSON Lines lines into an Arrow table (one row a
        line, None when it cannot): the rows the common layouts place are then read as columns (core/columnar.py),
        the others per record. `materialise(units)` gives table rows read lazily (`Unit.table`) their values, for
        the rows the columns do not place."""
        self.source, self.group_id, self.family = source, group_id, family
        self.max_bytes, self.mapping = max_bytes, mapping
        self.stats = stats or IngestStats()
        self._earlier = earlier
        self._seen: dict[str, str] = {}  # record_id -> "file:line" of its first occurrence in this read
        self.sides: tuple[Side, ...] = ("chosen", "rejected") if preference == "both" else (preference,)
        self._decode = decode if mapping is None and preference == "chosen" else None
        self._materialise = materialise

    def _columnar(self, units: list[Unit], form: str) -> tuple[Placed, list[int]] | None:
        """The batch's units read as columns: (what columnar.place placed, the unit index of each placed row)."""
        if self._decode is None or self.family == "agent":
            return None
        if units[0].table is not None:
            return self._columnar_rows(units)
        if form != "json":
            return None
        lines = plain_lines([u.raw if u.oversize is None and u.error is None else None for u in units], self.max_bytes)
        if not lines:
            return None
        try:
            raws: list[bytes] = [units[i].raw for i in lines]  # type: ignore[misc]
            table = self._decode(raws)
            keep = without_constants(raws, table) if table is not None else None
            if keep is not None and len(keep) < len(lines):
                lines = [lines[i] for i in keep]
                table = self._decode([raws[i] for i in keep]) if keep else None
            placed = place(table, self.family) if table is not None else None
        except Exception:  # anything the columns cannot read is read per record, which says why
            return None
        if placed is None:
            return None
        placed = within(placed, self.max_bytes)
        return placed, [lines[r] for r in placed.rows]

    def _columnar_rows(self, units: list[Unit]) -> tuple[Placed, list[int]] | None:
        """A table's rows (units holding their record batch) read as columns, their originals as JSON text."""
        runs: list[list[Any]] = []  # [record batch, first row, rows]: consecutive rows of one batch
        for unit in units:
            batch, row = unit.table
            if runs and runs[-1][0] is batch and runs[-1][1] + runs[-1][2] == row:
                runs[-1][2] += 1
            else:
                runs.append([batch, row, 1])
        slices = [batch.slice(row, n) for batch, row, n in runs]
        try:
            table = pa.Table.from_batches(slices)
            placed = place(table, self.family, rows=True)
        except Exception:  # mixed schemas, a type the columns do not read: per record
            return None
        if placed is None:
            return None
        placed = within(placed, self.max_bytes)
        return placed, placed.rows

    def parse(self, name: str, units: list[Unit], form: str = "json") -> Parsed:
        """Decode, normalise, hash and deduplicate one batch of file `name`: the rows the columns place
        (core/columnar.py) as columns, the others per record in Python; duplicates and the stats in unit order.
        `form` is how the file holds its values: "json" or "row" (a table), kept with each record's original."""
        parsed = Parsed(form=form)
        columnar = self._columnar(units, form)
        at: dict[int, int] = {}  # unit index -> its row in the columnar result
        if columnar is not None:
            at = {u: k for k, u in enumerate(columnar[1])}
        if units[0].table is not None:  # table rows read lazily: the others get their values now
            assert self._materialise is not None, "lazy table units need materialise"
            self._materialise([u for i, u in enumerate(units) if i not in at])
        # first pass: decode and hash every unit of the batch; then one question to `earlier` for the whole batch
        decoded: list[tuple[Unit, Any, Any, list[tuple[Side, Any]] | Rejected | int]] = []
        for i, unit in enumerate(units):
            if i in at:
                decoded.append((unit, None, None, at[i]))
                continue
            try:
                obj, text = _guarded(read_unit, unit, self.max_bytes)
            except Rejected as rej:
                decoded.append((unit, None, None, rej))
                continue
            # `preference: both`: the two sides of a pair are two records, each a record or a quarantine row
            sides = self.sides if len(self.sides) == 1 or is_pair(obj) else self.sides[:1]
            outcomes: list[tuple[Side, Any]] = []
            for side in sides:
                try:
                    outcomes.append((side, record_of(obj, self.family, self.mapping, self.max_bytes, side)))
                except Rejected as rej:
                    outcomes.append((side, rej))
            decoded.append((unit, obj, text, outcomes))
        ids = [o[2] for *_, outs in decoded if isinstance(outs, list) for _, o in outs if not isinstance(o, Rejected)]
        if columnar is not None:
            ids += columnar[0].record_id
        earlier = self._earlier(ids) if self._earlier is not None and ids else {}
        for unit, obj, text, outs in decoded:
            if isinstance(outs, int):
                self._place_columnar(name, unit, outs, columnar[0], earlier, parsed)  # type: ignore[index]
                continue
            if isinstance(outs, Rejected):
                parsed.rejected.append((unit.position, outs.kind, printable(str(outs)), printable(_excerpt(unit))))
                continue
            original: str | None = None
            for side, outcome in outs:
                try:
                    if isinstance(outcome, Rejected):
                        raise outcome
                    layout, fields, rid = outcome
                    if (first := earlier.get(rid) or self._seen.get(rid)) is not None:
                        raise Rejected("duplicate", f"duplicate of {first}")
                except Rejected as rej:
                    reason = f"{side} side: {rej}" if len(outs) > 1 else str(rej)
                    parsed.rejected.append((unit.position, rej.kind, printable(reason), printable(_excerpt(unit))))
                    continue
                self._seen[rid] = f"{name}:{unit.position}"
                if layout in PREFERENCE_LAYOUTS:  # the side a record holds is part of its layout's name
                    layout = f"{layout}:{side}"
                elif self.mapping is None:
                    self._note_unused(name, unit.position, obj, layout, fields)
                if original is None:
                    original = _guarded(original_text, obj, text)
                parsed.record_id.append(rid)
                parsed.layout.append(layout)
                parsed.position.append(unit.position)
                parsed.original.append(original)
                for f in TEXT_FIELDS:
                    parsed.text[f].append(fields.get(f))
            self.stats.extra_rows += len(outs) - 1
        if parsed.placed_rows:
            parsed.placed = columnar[0]  # type: ignore[index]
        return parsed

    def _place_columnar(
        self, name: str, unit: Unit, k: int, placed: Placed, earlier: Mapping[str, str], parsed: Parsed
    ) -> None:
        """Row k of the columnar result, as the per-record loop treats a record: a duplicate, or kept."""
        rid = placed.record_id[k]
        if (first := earlier.get(rid) or self._seen.get(rid)) is not None:
            reason = printable(f"duplicate of {first}")
            # a row's excerpt is its JSON text's head (json.dumps of its text, number and boolean values)
            excerpt = _excerpt(unit) if placed.original is None else placed.original[k][:200]
            parsed.rejected.append((unit.position, "duplicate", reason, printable(excerpt)))
            return
        self._seen[rid] = f"{name}:{unit.position}"
        keys = placed.unused[k]
        if keys is None or (keys and not self.stats.suggested_fields):  # decided, or the suggestion made, per record
            if unit.table is not None:
                obj = unit.table[0].slice(unit.table[1], 1).to_pylist()[0]
            else:
                obj = _DECODER.decode(unit.raw.decode("utf-8"))  # type: ignore[union-attr]
            fields = {f: v for f, v in zip(placed.fields.columns, placed.fields.row(k), strict=True)}
            self._note_unused(name, unit.position, obj, placed.layout, fields)
        elif keys:
            self.stats.unused_keys.update(keys)
            for key in keys:
                self.stats.unused_first.setdefault(key, f"{name}:{unit.position}")
        parsed.placed_rows.append(k)
        parsed.placed_raw.append(unit.raw or b"")
        parsed.placed_position.append(unit.position)

    def _note_unused(self, name: str, position: int, obj: Any, layout: str, fields: Fields) -> None:
        keys = unused_text_keys(obj, fields)
        if not keys:
            return
        self.stats.unused_keys.update(keys)
        for key in keys:
            self.stats.unused_first.setdefault(key, f"{name}:{position}")
        if not self.stats.suggested_fields:
            self.stats.suggested_fields = suggest_with_unused(obj, fields, keys, self.family)

    def frames(self, name: str, parsed: Parsed) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Token counts and the two frames of one parsed batch (polars: it releases the GIL)."""
        columns = {"record_id": parsed.record_id, "layout": parsed.layout, "origin_line": parsed.position}
        records = pl.DataFrame(
            {**columns, **parsed.text, "original": parsed.original},
            schema={c: RAW_RECORD_SCHEMA[c] for c in (*columns, *TEXT_FIELDS, "original")},
        )
        records = self._finish(records, name, parsed)
        if parsed.placed is not None:  # the two paths' rows in the units' order (a sort only when both made some)
            placed = self._placed_frame(name, parsed)
            both = records.height > 0
            records = pl.concat([records, placed]).sort("origin_line", maintain_order=True) if both else placed
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
        if parsed.placed is not None:
            self.stats.layouts[parsed.placed.layout] += len(parsed.placed_rows)
        self.stats.reasons.update(kind for _, kind, _, _ in rejected)
        return records, quarantine

    def _placed_frame(self, name: str, parsed: Parsed) -> pl.DataFrame:
        """The columnar rows kept (not duplicates) as raw_records rows, the line's own text as their original."""
        placed = parsed.placed
        assert placed is not None
        every = parsed.placed_rows == list(range(placed.fields.height))  # no copy when every row was kept
        fields = placed.fields if every else placed.fields[parsed.placed_rows]
        if placed.original is not None:  # a table's rows: their JSON text
            original = placed.original if every else placed.original.gather(parsed.placed_rows)
        else:  # JSON Lines: the line's own text
            original = pl.Series(parsed.placed_raw, dtype=pl.Binary).cast(pl.String).str.strip_chars(PY_SPACE)
        frame = fields.with_columns(
            pl.Series("record_id", [placed.record_id[k] for k in parsed.placed_rows], dtype=pl.String),
            pl.lit(placed.layout).alias("layout"),
            pl.Series("origin_line", parsed.placed_position, dtype=pl.Int64),
            original.alias("original"),
            *(pl.lit(None, dtype=pl.String).alias(f) for f in TEXT_FIELDS if f not in fields.columns),
        )
        return self._finish(frame, name, parsed)

    def _finish(self, frame: pl.DataFrame, name: str, parsed: Parsed) -> pl.DataFrame:
        """A batch's rows with what every row of it shares, their token counts, in raw_records' columns."""
        return frame.with_columns(
            pl.lit(self.source).alias("source"),
            pl.lit(self.group_id).alias("group_id"),
            pl.lit(self.family).alias("format"),
            pl.Series("n_tokens", sum(token_counts(frame[f]) for f in TEXT_FIELDS), dtype=pl.Int64),
            pl.lit(name).alias("origin_file"),
            pl.lit(parsed.form).alias("original_form"),
        ).select(list(RAW_RECORD_SCHEMA))


@dataclass
class Parsed:
    """One batch after decoding, normalising and deduplicating: column lists of the records, and the rejected."""

    record_id: list[str] = field(default_factory=list)
    layout: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    text: dict[str, list[str | None]] = field(default_factory=lambda: {f: [] for f in TEXT_FIELDS})
    original: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    form: str = "json"
    # rows read as columns (core/columnar.py) and kept: their rows in `placed`, their lines and positions
    placed: Placed | None = None
    placed_rows: list[int] = field(default_factory=list)
    placed_raw: list[bytes] = field(default_factory=list)
    placed_position: list[int] = field(default_factory=list)


def is_pair(obj: Any) -> bool:
    """A value holding two sides (chosen / rejected, or ranked answers): `preference: both` makes it two records."""
    return isinstance(obj, dict) and ("chosen" in obj and "rejected" in obj or ranked_answers(obj) is not None)


# Bump when a change to ingest changes what it writes for the same files: every source is then re-ingested.
INGEST_CODE_VERSION = "2026-12-07"  # + tool results name their tool


def entry_fingerprint(entry: BaseModel, max_record_bytes: int) -> str:
    """What changes a source's raw_records besides its files: its registry entry (group, format, files, fields
    mapping), the record size cap and the ingest code version."""
    parts = [entry.model_dump_json(), str(max_record_bytes), INGEST_CODE_VERSION]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

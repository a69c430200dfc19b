"""The common layouts read as columns: a batch of decoded rows (an Arrow table) becomes records without a Python
object per row, byte for byte what the per-record path (core/records.py) makes of the same rows.

Only what is decided by the batch's schema is read here: a layout is applied to a batch when every layout tried
before it lacks one of its keys in the whole batch (no row can match it), and to the rows that hold its keys as
text. Everything else (a null where a key is needed, a blank required field, a record over the size limit, a
text the layouts would read differently) is handed back, by row, to the per-record path, which decides it as it
always did. The record_id is the same contract: SHA-256 of `json.dumps(fields, ensure_ascii=False,
sort_keys=True)`, the canonical text built with column expressions and hashed row by row from the Arrow buffer."""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from mira_dagster.core.config import Family
from mira_dagster.core.layouts import REQUIRED, not_chosen_key

# str.isspace's characters (Python's strip), which differ from Rust's whitespace (U+001C..U+001F); none is above
# U+3000 (tests/core/test_columnar.py checks the whole range), so importing this does not scan 1.1M characters
PY_SPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())


# The QA layouts tried before the ones read here, in core/layouts.py's order, each with keys it cannot match
# without (any one absent from the whole batch rules it out for every row).
_QA_ORDER: list[tuple[str, tuple[str, ...]]] = [
    ("responses_rollout", ("responses_create_params", "response")),
    ("question_answer", ("question", "answer")),
    ("prompt_solution", ("prompt", "solution")),
    ("instruction_response", ("instruction", "response")),
    ("lean_cot_proof", ("cot", "correct_proof")),
    ("lean_formal", ("formal_statement", "formal_proof")),
]
_QA_FIELDS = ("question", "thinking", "answer")

# Deeper values than this are left to the per-record path, which refuses what Python's decoder cannot nest
MAX_DEPTH = 100

# the unused-text check of core/records.unused_text_keys, its constants and the columns it reads
_TEXTS = (pl.String, pl.List(pl.String))
_UNUSED_MIN, _PROBE, _PROBES = 40, 24, 5


@dataclass
class Placed:
    """Rows of a batch read as records: `rows` (indices into the batch) with their layout, normalised fields,
    record_id and the keys of unused prose (for the stats); rows not listed are the per-record path's."""

    rows: list[int]
    layout: str
    fields: pl.DataFrame  # question, thinking, answer (normalised; thinking may be "")
    record_id: list[str]
    unused: list[list[str] | None]  # None: a transcript-like value, for the per-record check
    original: pl.Series | None = None  # a table's rows: each row's JSON text (JSON Lines keep the line's)


def place(table: pa.Table, family: Family, rows: bool = False) -> Placed | None:
    """The rows of `table` one of the layouts read here places, or None when the batch is not one of them.
    `rows`: the table is a Parquet / Arrow file's rows, whose original is their JSON text (made here: only
    tables of text, integer and boolean columns are read so)."""
    if family not in ("qa", "qa_with_think") or table.num_rows == 0:
        return None
    if type_depth(table.schema) > MAX_DEPTH:
        return None
    names = set(table.column_names)
    chosen = next((name for name, keys in _QA_ORDER if all(k in names for k in keys)), None)
    if chosen is None or chosen not in _LAYOUTS:
        return None
    df = pl.from_arrow(table, rechunk=False)  # no copy: Arrow's JSON reader gives a chunk per block
    assert isinstance(df, pl.DataFrame)
    if rows and not all(dtype in _JSON_TYPES for dtype in df.schema.values()):
        return None
    reader = _LAYOUTS[chosen]
    needed = dict(_QA_ORDER)[chosen]
    for key in (*needed, *reader.optional):  # a key read as text: anything else is read row by row in Python
        if key in names and df.schema[key] not in (pl.String, pl.Null):
            return None
    if any(k in names for k in reader.refuse):
        return None
    # rows holding every key the layout needs (a null may be a missing key: those rows are Python's)
    ok = pl.all_horizontal(pl.col(k).is_not_null() for k in needed)
    raw = _kept(df.with_row_index("_row"), ok)
    if raw.height == 0:
        return None
    fields = raw.select(pl.col("_row"), *reader.fields(raw))
    fields = normalised(fields, list(_QA_FIELDS))
    # required fields non-empty after normalising, and the record within its size: else Python says why
    req = REQUIRED[family]
    fields = _kept(fields, pl.all_horizontal(pl.col(f).str.len_bytes() > 0 for f in req))
    if fields.height == 0:
        return None
    texts = fields.select(_QA_FIELDS)
    ids = record_ids(texts)
    at = fields["_row"]
    held = df if at.len() == df.height else df[at]  # the rows placed (a copy only when some are not)
    text_keys = [c for c in table.column_names if df.schema[c] in _TEXTS and c not in reader.verbatim]
    unused = unused_keys(held, texts, text_keys)
    original = row_json(held) if rows else None
    return Placed(at.to_list(), chosen, texts, ids, unused, original)


def type_depth(schema: pa.Schema) -> int:
    """How deeply the schema's types nest (a list of structs of lists: 3), without recursion."""
    deepest, stack = 0, [(f.type, 1) for f in schema]
    while stack:
        typ, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack += [(typ.field(i).type, depth + 1) for i in range(typ.num_fields)]
    return deepest


def plain_lines(raws: list[bytes | None], max_bytes: int) -> list[int]:
    """The indices of the JSON Lines lines worth giving the Arrow reader: text within the size limit, no
    byte-order mark (Arrow skips it where the per-record path keeps the line's own text), not blank."""
    return [
        i
        for i, raw in enumerate(raws)
        if raw is not None and 0 < len(raw) <= max_bytes and not raw.isspace() and not raw.startswith(b"\xef\xbb\xbf")
    ]


def without_constants(raws: list[bytes], table: pa.Table) -> list[int] | None:
    """Arrow reads NaN and Infinity as numbers, which the per-record path refuses: when the batch has a floating
    column (at any depth), the indices of the lines that spell neither, else None (no line can hold one)."""
    stack = [f.type for f in table.schema]
    while stack:
        typ = stack.pop()
        if pa.types.is_floating(typ):
            return [i for i, raw in enumerate(raws) if b"NaN" not in raw and b"Infinity" not in raw]
        stack += [typ.field(i).type for i in range(typ.num_fields)]
    return None


def _kept(df: pl.DataFrame, keep: pl.Expr) -> pl.DataFrame:
    """`df.filter(keep)`, without copying the frame when every row is kept (the usual batch)."""
    mask = df.select(keep.fill_null(False)).to_series()
    return df if mask.all() else df.filter(mask)


def within(placed: Placed, max_bytes: int) -> Placed:
    """`placed` without the rows whose text is over `max_bytes` characters (the per-record path quarantines them)."""
    size = placed.fields.select(pl.sum_horizontal(pl.col(f).str.len_chars() for f in _QA_FIELDS)).to_series()
    keep = (size <= max_bytes).to_list()
    if all(keep):
        return placed
    idx = [i for i, k in enumerate(keep) if k]
    return Placed(
        [placed.rows[i] for i in idx],
        placed.layout,
        placed.fields[idx],
        [placed.record_id[i] for i in idx],
        [placed.unused[i] for i in idx],
        None if placed.original is None else placed.original.gather(idx),
    )


# ---------------------------------------------------------------------------------------------
# The layouts (core/layouts.py), as expressions over the rows that hold their keys.


def _s(key: str, names: set[str]) -> pl.Expr:
    """`_str(d.get(key))`: the text, "" for null or an absent key (the column is text or all null)."""
    return pl.col(key).cast(pl.String).fill_null("") if key in names else pl.lit("", dtype=pl.String)


@dataclass(frozen=True)
class _Reader:
    fields: Callable[[pl.DataFrame], list[pl.Expr]]
    optional: tuple[str, ...] = ()  # keys read with d.get (text or absent)
    refuse: tuple[str, ...] = ()  # keys that change the layout's output: such batches stay per record
    verbatim: tuple[str, ...] = ()  # keys whose text is a field's, whole: never unused


def _split_think(text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """layouts._split_think: (thinking, answer) around the first `</think>`; none: ("", text)."""
    parts = text.str.splitn("</think>", 2)
    found = parts.struct.field("field_1").is_not_null()
    thinking = pl.when(found).then(parts.struct.field("field_0").str.replace_all("<think>", "", literal=True))
    answer = pl.when(found).then(parts.struct.field("field_1"))
    return thinking.otherwise(pl.lit("")), answer.otherwise(text)


def _until_tag_or_end(rest: pl.Expr, closing: str) -> pl.Expr:
    """layouts._until_tag_or_end on what follows the opening tag (`rest`): up to `closing`, else to the end less
    one final newline."""
    parts = rest.str.splitn(closing, 2)
    return (
        pl.when(parts.struct.field("field_1").is_not_null())
        .then(parts.struct.field("field_0"))
        .otherwise(rest.str.strip_suffix("\n"))
    )


def _question_answer(df: pl.DataFrame) -> list[pl.Expr]:
    names = set(df.columns)
    return [
        _s("question", names).alias("question"),
        _s("thinking", names).alias("thinking"),
        _s("answer", names).alias("answer"),
    ]


def _prompt_solution(df: pl.DataFrame) -> list[pl.Expr]:
    prompt = pl.col("prompt")
    head = prompt.str.strip_chars_end(PY_SPACE)
    question = pl.when(head.str.ends_with("<think>")).then(head.str.head(-len("<think>"))).otherwise(prompt)
    parts = pl.col("solution").str.splitn("</think>", 2)
    found = parts.struct.field("field_1").is_not_null()
    thinking = pl.when(found).then(parts.struct.field("field_0")).otherwise(pl.lit(""))
    answer = pl.when(found).then(parts.struct.field("field_1")).otherwise(pl.col("solution"))
    return [question.alias("question"), thinking.alias("thinking"), answer.alias("answer")]


def _instruction_response(df: pl.DataFrame) -> list[pl.Expr]:
    resp = pl.col("response")
    after_open = resp.str.splitn("<Thought>", 2).struct.field("field_1")
    closing = after_open.str.splitn("</Thought>", 2)
    paired = closing.struct.field("field_1").is_not_null()  # a <Thought> with its </Thought> after it
    out = resp.str.splitn("<Output>", 2).struct.field("field_1")  # searched from the start, as the layout does
    answer_t = pl.when(out.is_not_null()).then(_until_tag_or_end(out, "</Output>"))
    answer_t = answer_t.otherwise(closing.struct.field("field_1"))
    thinking_k, answer_k = _split_think(resp)
    thinking = pl.when(paired).then(closing.struct.field("field_0")).otherwise(thinking_k)
    answer = pl.when(paired).then(answer_t).otherwise(answer_k)
    return [pl.col("instruction").alias("question"), thinking.alias("thinking"), answer.alias("answer")]


# what layouts._theorem_statement finds: the first `theorem` followed by a space character, through the next `:=`
_SPACE_CLASS = "".join(f"\\x{{{ord(c):x}}}" for c in PY_SPACE)
_THEOREM = f"(?s)theorem[{_SPACE_CLASS}].*?:="


def _lean_cot_proof(df: pl.DataFrame) -> list[pl.Expr]:
    names = set(df.columns)
    proof, cot = pl.col("correct_proof"), pl.col("cot")
    stmt = proof.str.extract(_THEOREM, 0)
    question = pl.concat_str(pl.lit("Prove in Lean 4: "), pl.coalesce(stmt, _s("name", names)))
    rest = cot.str.splitn("<think>", 2).struct.field("field_1")
    thinking = pl.when(rest.is_not_null()).then(_until_tag_or_end(rest, "</think>")).otherwise(pl.lit(""))
    return [question.alias("question"), thinking.alias("thinking"), proof.alias("answer")]


def _lean_formal(df: pl.DataFrame) -> list[pl.Expr]:
    names = set(df.columns)
    question = pl.concat_str(_s("informal_prefix", names), pl.col("formal_statement"))
    answer = pl.concat_str(pl.col("formal_statement"), pl.col("formal_proof"))
    return [question.alias("question"), pl.lit("").alias("thinking"), answer.alias("answer")]


_LAYOUTS: dict[str, _Reader] = {
    "question_answer": _Reader(_question_answer, optional=("thinking",), verbatim=("question", "thinking", "answer")),
    "prompt_solution": _Reader(_prompt_solution),
    # databricks-dolly's `context` joins the question: such batches are read per record
    "instruction_response": _Reader(_instruction_response, refuse=("context",), verbatim=("instruction",)),
    "lean_cot_proof": _Reader(_lean_cot_proof, optional=("name",), verbatim=("correct_proof",)),
    "lean_formal": _Reader(_lean_formal, optional=("informal_prefix",)),
}


# ---------------------------------------------------------------------------------------------
# Text, ids and the unused-prose check, as columns.


@functools.cache
def _nfc_ranges() -> tuple[tuple[int, int], ...]:
    """The code point ranges of every character NFC may change or compose with what precedes it: characters with
    a canonical decomposition, the characters after the first in those decompositions, combining marks, Hangul
    jamo and syllables (none is ASCII). Text without any of them is its own NFC."""
    chars: set[int] = set(range(0x1100, 0x1200)) | set(range(0xAC00, 0xD7A4))
    for c in range(0x30000):  # no character above has a decomposition
        ch = chr(c)
        if unicodedata.combining(ch):
            chars.add(c)
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            chars.add(c)
            chars.update(int(x, 16) for x in d.split()[1:])  # a first character composes only with what follows
    ranges: list[tuple[int, int]] = []
    for c in sorted(chars):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return tuple(ranges)


@functools.cache
def _nfc_pattern() -> str:
    """_nfc_ranges as a regex class."""
    return "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in _nfc_ranges()) + "]"


@functools.cache
def _nfc_table() -> np.ndarray:
    """_nfc_ranges as a flag per code point."""
    table = np.zeros(0x110000, dtype=bool)
    for a, b in _nfc_ranges():
        table[a : b + 1] = True
    return table


def nfc_candidates(texts: pl.Series) -> np.ndarray:
    """Which values hold a character NFC may change (_nfc_ranges; null: False), read from the UTF-8 bytes: only
    the first bytes of non-ASCII characters are decoded, so mostly ASCII text costs about one comparison a byte
    (polars' regex over the class ran at under 1 GB/s)."""
    arr = _large_strings(texts)
    _, offsets_buf, data_buf = arr.buffers()
    if len(arr) == 0 or data_buf is None:
        return np.zeros(len(arr), dtype=bool)
    off = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)[: off[-1]]
    lead = np.flatnonzero(data[off[0] :] >= 0xC0) + off[0]
    hit = lead[_nfc_table()[_code_points(data, lead)]]
    found = np.diff(np.searchsorted(hit, off)) > 0
    if arr.null_count:
        found &= ~np.asarray(arr.is_null())
    return found


def _large_strings(texts: pl.Series | pa.Array | pa.ChunkedArray) -> pa.Array:
    """The values as one Arrow large_string array (its offsets and data buffers read directly)."""
    arr = texts.to_arrow() if isinstance(texts, pl.Series) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    return arr if arr.type == pa.large_string() else arr.cast(pa.large_string())


def normalised(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """layouts.normalise_text of each value of `columns`: NFC, line ends as LF, no surrounding (str.isspace)
    whitespace. The columns are scanned together (polars runs them on every core); only values holding a
    character NFC may change go through Python (faster than polars' normalize), and only changed ones are written
    back; line ends are rewritten only in columns holding a CR."""
    if not columns or df.height == 0:
        return df
    flags = df.select(
        *(pl.col(c).str.contains("\r", literal=True).any().alias(f"cr_{i}") for i, c in enumerate(columns))
    )
    out = []
    for i, c in enumerate(columns):
        s = df[c]
        idx = np.flatnonzero(nfc_candidates(s))
        if idx.size:
            values = s.gather(idx).to_list()
            changed = [
                (j, n) for j, v in zip(idx.tolist(), values, strict=True) if (n := unicodedata.normalize("NFC", v)) != v
            ]
            if changed:
                s = s.scatter([j for j, _ in changed], pl.Series([n for _, n in changed], dtype=pl.String))
        e = pl.lit(s)
        if flags[f"cr_{i}"][0]:
            e = e.str.replace_all("\r\n", "\n", literal=True).str.replace_all("\r", "\n", literal=True)
        out.append(e.str.strip_chars(PY_SPACE).alias(c))
    return df.with_columns(out)


def _escaped(text: pl.Expr) -> pl.Expr:
    """The inside of json.dumps(text, ensure_ascii=False)'s quotes: polars' JSON encoding of the string, which
    escapes every character as Python's does (tests/core/test_columnar.py checks each code point), at three times
    the speed of replacing the escapes."""
    return pl.struct(text.alias("v")).struct.json_encode().str.strip_prefix('{"v":"').str.strip_suffix('"}')


_JSON_TYPES = frozenset(
    {pl.String, pl.Boolean, pl.Null, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64}
)


def row_json(df: pl.DataFrame) -> pl.Series:
    """records.original_text of each row of a table of text, integer and boolean columns: json.dumps of the row
    as a dict (keys in column order, ensure_ascii=False), built with column expressions."""
    if not df.columns:
        return pl.Series([("{}")] * df.height, dtype=pl.String)
    parts = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if dtype == pl.String:
            value = pl.concat_str(pl.lit('"'), _escaped(col), pl.lit('"'))
        elif dtype == pl.Boolean:
            value = pl.when(col).then(pl.lit("true")).otherwise(pl.lit("false"))
        elif dtype == pl.Null:
            value = pl.lit(None, dtype=pl.String)
        else:
            value = col.cast(pl.String)
        value = pl.when(col.is_null()).then(pl.lit("null")).otherwise(value)
        parts.append(pl.concat_str(pl.lit(json.dumps(name, ensure_ascii=False) + ": "), value))
    return df.select(pl.concat_str(pl.lit("{"), pl.concat_str(parts, separator=", "), pl.lit("}"))).to_series()


def record_ids(fields: pl.DataFrame) -> list[str]:
    """records._id_of_normalised of each row of normalised text columns: the canonical JSON (keys sorted, empty
    values left out) built with column expressions, its SHA-256 taken row by row from the Arrow buffer."""
    keys = sorted(fields.columns)
    members = [
        pl.when(pl.col(k).str.len_bytes() > 0).then(
            pl.concat_str(pl.lit(f'"{k}": "'), _escaped(pl.col(k)), pl.lit('"'))
        )
        for k in keys
    ]
    canon = fields.select(
        pl.concat_str(pl.lit("{"), pl.concat_str(members, separator=", ", ignore_nulls=True), pl.lit("}"))
    ).to_series()
    return sha256_prefixes(canon)


def sha256_prefixes(texts: pl.Series) -> list[str]:
    """The first 32 hex digits of each value's UTF-8 SHA-256, read from the Arrow buffer (no Python string each)."""
    arr = texts.to_arrow()
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks != 1 else arr.chunk(0)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1].tolist()
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    sha = hashlib.sha256
    return [sha(data[offsets[i] : offsets[i + 1]]).hexdigest()[:32] for i in range(len(arr))]


def unused_keys(raw: pl.DataFrame, fields: pl.DataFrame, text_columns: list[str]) -> list[list[str] | None]:
    """records.unused_text_keys of each row: top-level text keys holding long prose none of the fields contains.
    A value that may read as a Human/Assistant transcript is not decided here: its row is None and the caller asks
    the per-record check (rare). Only long values are looked at, a value equal to a field is used, and the probes
    are looked for field by field, the rows decided by one field not looked at again."""
    out: list[list[str] | None] = [[] for _ in range(raw.height)]
    names = list(fields.columns)
    for key in (c for c in text_columns if not _side_key(c)):
        frame = pl.concat([raw.select(pl.col(key).alias("_value")), fields], how="horizontal").with_row_index("_i")
        if raw.schema[key] != pl.String:  # a list of strings: each string looked at, the row's key named once
            frame = frame.explode("_value")
        frame = _kept(frame, pl.col("_value").str.len_chars() >= _UNUSED_MIN)
        if frame.height == 0:
            continue
        frame = normalised(frame.with_columns(pl.col("_value").alias("_text")), ["_text"])
        text = pl.col("_text")
        n = text.str.len_chars()
        value = pl.col("_value")
        hh = value.str.starts_with("Human:") | value.str.starts_with("Assistant:")
        hh = hh | value.str.starts_with("\n\nHuman:") | value.str.starts_with("\n\nAssistant:")
        prose = (n >= _UNUSED_MIN) & ~text.str.starts_with("[") & ~text.str.starts_with("{")
        prose = prose & text.str.contains(" ", literal=True)
        frame = _kept(frame, prose).with_columns(hh.alias("_hh"))
        frame = _kept(frame, ~pl.any_horizontal(pl.col("_text") == pl.col(f) for f in names))  # a field is it
        if frame.height == 0:
            continue
        size = pl.max_horizontal(pl.lit(12), pl.min_horizontal(pl.lit(_PROBE), n // 6))
        step = pl.max_horizontal(pl.lit(1), (n - size) // (_PROBES + 1))
        probes = [f"_p{i}" for i in range(1, _PROBES + 1)]
        frame = frame.with_columns(text.str.slice(i * step, size).alias(p) for i, p in enumerate(probes, 1))
        frame = frame.with_columns(pl.lit(False).alias(f"_found{p}") for p in probes)
        undecided = frame
        for f in sorted(names, key=lambda f: -fields[f].str.len_bytes().sum()):  # the longest field first
            undecided = undecided.with_columns(
                (pl.col(f"_found{p}") | pl.col(f).str.contains(pl.col(p), literal=True).fill_null(False)).alias(
                    f"_found{p}"
                )
                for p in probes
            )
            count = pl.sum_horizontal(pl.col(f"_found{p}").cast(pl.Int32) for p in probes)
            undecided = _kept(undecided, (count <= _PROBES // 2) | pl.col("_hh"))
            if undecided.height == 0:
                break
        for i, hh_row in zip(undecided["_i"].to_list(), undecided["_hh"].to_list(), strict=True):
            row = out[i]
            if hh_row or row is None:
                out[i] = None
            elif not row or row[-1] != key:
                row.append(key)
    return out


def _side_key(key: str) -> bool:
    return not_chosen_key(key) or "chosen" in key.lower()


# ---------------------------------------------------------------------------------------------
# Token counts: records.TOKEN_PATTERN (`\w{1,4}|[^\w\s]`) counted without the regex. Its matches are exactly one
# per character that is neither word nor space, plus ceil(L / 4) per maximal run of L word characters (the
# leftmost-first `\w{1,4}` takes four of a run at a time; `[^\w\s]` never starts inside a run). polars' regex pays
# per match (about 130 MB/s); here each byte is classified with a few vector comparisons, the word flags packed
# into 64-bit words, and runs counted by length class: a run of L characters has ceil(L / 4) = the number of k >= 0
# with L >= 4k + 1, each k one AND of shifted words; the few runs longer than 4 * _LEVELS are measured one by one.

_CHUNK = 1 << 18  # bytes classified at a time (in cache); a multiple of 64, so each chunk's packed flags align
_LEVELS = 4  # length classes counted as masks; runs of more than 4 * _LEVELS characters are measured
_ONE = np.uint64(1)
_WORDS = np.dtype("<u8")


@functools.cache
def char_classes() -> np.ndarray:
    """Each code point's class under polars' (Rust regex) Unicode `\\w` and `\\s`: 1 word, 0 space, 2 neither.
    Read from polars' regex itself, so the counts agree with it whatever Unicode version it carries."""
    cps = np.arange(0x110000, dtype="<u4")
    text = pl.Series([cps[(cps < 0xD800) | (cps > 0xDFFF)].tobytes().decode("utf-32-le")])
    table = np.full(0x110000, 2, dtype=np.uint8)
    for pattern, cls in ((r"\w+", 1), (r"\s+", 0)):
        found = "".join(text.str.extract_all(pattern).explode().drop_nulls().to_list())
        table[np.frombuffer(found.encode("utf-32-le"), dtype="<u4")] = cls
    return table


def token_counts(texts: pl.Series | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The number of records.TOKEN_PATTERN matches in each value (null counts 0), as int64."""
    arr = _large_strings(texts)
    _, offsets_buf, data_buf = arr.buffers()
    off = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1] if len(arr) else None
    if off is None or data_buf is None or off[-1] == off[0]:
        return np.zeros(len(arr), dtype=np.int64)
    counts = _counts(np.frombuffer(data_buf, dtype=np.uint8)[off[0] : off[-1]], off - off[0])
    if arr.null_count:
        counts[np.asarray(arr.is_null())] = 0
    return counts


def _counts(data: np.ndarray, off: np.ndarray) -> np.ndarray:
    """token_counts of the UTF-8 strings data[off[i]:off[i+1]], worked out on byte positions: every byte of a word
    character is flagged word, so runs of word bytes are runs of word characters, and the runs holding a
    multi-byte word character are corrected from their length in bytes to their length in characters."""
    word, space, cont, wide = _classified(data)
    chars = np.diff(off) - np.diff(np.searchsorted(cont, off))
    words = np.diff(_ranks(word, off)) - np.diff(np.searchsorted(wide, off))
    other = chars - words - np.diff(_ranks(space, off))
    # a run continues at byte i: word at i and i - 1, i not a string's first byte
    first = np.zeros_like(word)
    starts = off[:-1][np.diff(off) > 0]
    np.bitwise_or.at(first, starts >> 6, _ONE << (starts & 63).astype(np.uint64))
    cont_run = word & _prev(word) & ~first
    mask = word & ~cont_run  # run starts: every run counts 1, and one more per length class it reaches
    masks = [mask]
    four = cont_run & _next(cont_run, 1)
    four &= _next(four, 2)
    four = _next(four, 1)  # bit i: the run continues at i + 1 .. i + 4
    for k in range(_LEVELS):  # starts of runs of at least 4k + 5 bytes
        mask = mask & _next(four, 4 * k)
        if not mask.any():
            break
        masks.append(mask)
    total = np.diff(_ranks_sum(masks, off))
    if len(masks) > _LEVELS:
        starts = _positions(mask)
        total += _per_string(
            starts, (_next_end(cont_run, starts + 4 * _LEVELS + 1) - starts + 3) // 4 - len(masks), off
        )
    if wide.size:
        total += _wide_runs(cont_run, wide, off)
    return total + other


def _classified(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(packed word flags, packed space flags, positions of UTF-8 continuation bytes, those of word characters),
    by chunks: every byte of a non-ASCII character takes its code point's class (char_classes), a space only at its
    first byte."""
    n = data.size
    word = np.zeros(n // 64 + 2, dtype=_WORDS)
    space = np.zeros(n // 64 + 2, dtype=_WORDS)
    word_bytes, space_bytes = word.view(np.uint8), space.view(np.uint8)
    x, y = np.empty(_CHUNK, dtype=np.uint8), np.empty(_CHUNK, dtype=bool)
    w, s = np.empty(_CHUNK, dtype=bool), np.empty(_CHUNK, dtype=bool)
    conts: list[np.ndarray] = []
    wides: list[np.ndarray] = []
    for start in range(0, n, _CHUNK):
        b = data[start : start + _CHUNK]
        m = b.size
        xx, yy, ww, ss = x[:m], y[:m], w[:m], s[:m]
        np.bitwise_or(b, np.uint8(0x20), out=xx)  # ASCII letters, digits, underscore; \t \n \v \f \r and space
        xx -= np.uint8(ord("a"))
        np.less(xx, 26, out=ww)
        np.subtract(b, np.uint8(ord("0")), out=xx)
        np.less(xx, 10, out=yy)
        ww |= yy
        np.equal(b, ord("_"), out=yy)
        ww |= yy
        np.subtract(b, np.uint8(9), out=xx)
        np.less(xx, 5, out=ss)
        np.equal(b, ord(" "), out=yy)
        ss |= yy
        if b.max() >= 0x80:
            hi = np.flatnonzero(b >= 0x80)
            at = hi + start
            is_cont = b[hi] < 0xC0
            lead = at.copy()  # each byte's character's first byte: at most three back
            for _ in range(3):
                back = is_cont & (data[lead] < 0xC0)
                lead[back] -= 1
            lead[is_cont & (data[lead] < 0xC0)] = 0  # not reached on valid UTF-8
            cls = char_classes()[_code_points(data, lead)]
            ww[hi] = cls == 1
            ss[hi] = (cls == 0) & ~is_cont
            conts.append(at[is_cont])
            wides.append(at[is_cont & (cls == 1)])
        word_bytes[start // 8 : start // 8 + (m + 7) // 8] = np.packbits(ww, bitorder="little")
        space_bytes[start // 8 : start // 8 + (m + 7) // 8] = np.packbits(ss, bitorder="little")
    empty = np.zeros(0, dtype=np.int64)
    return word, space, np.concatenate(conts) if conts else empty, np.concatenate(wides) if wides else empty


def _code_points(data: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """The code points of the UTF-8 sequences starting at `lead` (valid UTF-8: Arrow strings are)."""
    last = data.size - 1
    b0 = data[lead].astype(np.uint32)
    b1, b2, b3 = (data[np.minimum(lead + i, last)].astype(np.uint32) & 0x3F for i in (1, 2, 3))
    two = ((b0 & 0x1F) << 6) | b1
    three = ((b0 & 0x0F) << 12) | (b1 << 6) | b2
    four = ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
    return np.where(b0 < 0xE0, two, np.where(b0 < 0xF0, three, four))


def _prev(words: np.ndarray) -> np.ndarray:
    """The stream shifted by one: bit i of the result is bit i - 1."""
    out = words << _ONE
    out[1:] |= words[:-1] >> np.uint64(63)
    return out


def _next(words: np.ndarray, k: int) -> np.ndarray:
    """The stream shifted the other way by k < 64: bit i of the result is bit i + k."""
    if k == 0:
        return words
    out = words >> np.uint64(k)
    carry = words[1:] << np.uint64(64 - k)
    out[:-1] |= carry
    return out


def _ranks(words: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The number of set bits before each position."""
    return _ranks_sum([words], positions)


def _ranks_sum(masks: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """The number of set bits of all the masks before each position (one running sum for all of them)."""
    q = positions >> 6
    low = (_ONE << (positions & 63).astype(np.uint64)) - _ONE
    counts = np.bitwise_count(masks[0]).astype(np.int64)
    partial = np.bitwise_count(masks[0][q] & low).astype(np.int64)
    for mask in masks[1:]:
        counts += np.bitwise_count(mask)
        partial += np.bitwise_count(mask[q] & low)
    before = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=before[1:])
    return before[q] + partial


def _positions(words: np.ndarray) -> np.ndarray:
    """The positions of the set bits, in order."""
    at = np.flatnonzero(words)
    row, col = np.nonzero(np.unpackbits(words[at].view(np.uint8), bitorder="little").reshape(-1, 64))
    return at[row] * 64 + col


def _next_end(cont_run: np.ndarray, after: np.ndarray) -> np.ndarray:
    """For each position, the first at or after it where no run continues (a run's end: one past its last byte).
    The words after the data are zero, so there is always one."""
    ends = ~cont_run
    q = after >> 6
    here = ends[q] & ~((_ONE << (after & 63).astype(np.uint64)) - _ONE)
    before = np.zeros(ends.size + 1, dtype=np.int64)
    np.cumsum(np.bitwise_count(ends), out=before[1:])
    q = np.where(here != 0, q, np.searchsorted(before, before[q + 1], side="right") - 1)
    found = np.where(here != 0, here, ends[q])
    return q * 64 + np.bitwise_count((found & (~found + _ONE)) - _ONE).astype(np.int64)


def _run_start(cont_run: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each position inside a run, the run's first byte: the last position at or before it not continuing."""
    starts = ~cont_run
    q = at >> 6
    upto = (_ONE << (at & 63).astype(np.uint64) << _ONE) - _ONE  # bits 0..at & 63 (all when 63: wraps to 0 - 1)
    here = starts[q] & upto
    before = np.zeros(starts.size + 1, dtype=np.int64)
    np.cumsum(np.bitwise_count(starts), out=before[1:])
    q = np.where(here != 0, q, np.searchsorted(before, before[q], side="left") - 1)
    found = np.where(here != 0, here, starts[q])
    for shift in (1, 2, 4, 8, 16, 32):  # all bits below the highest set
        found |= found >> np.uint64(shift)
    return q * 64 + np.bitwise_count(found).astype(np.int64) - 1


def _wide_runs(cont_run: np.ndarray, wide: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Per string, the correction for the runs holding multi-byte word characters (continuation bytes `wide`):
    ceil(characters / 4) - ceil(bytes / 4). One position per stretch of wide characters is looked up (a byte
    more than two after the previous one, or in another string), then each run once."""
    string = np.searchsorted(off, wide, side="right")
    new = np.ones(wide.size, dtype=bool)
    new[1:] = (np.diff(wide) > 2) | (string[1:] != string[:-1])
    starts = np.unique(_run_start(cont_run, wide[new]))
    ends = _next_end(cont_run, starts + 1)
    chars = ends - starts - (np.searchsorted(wide, ends) - np.searchsorted(wide, starts))
    return _per_string(starts, (chars + 3) // 4 - (ends - starts + 3) // 4, off)


def _per_string(at: np.ndarray, values: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The values summed by the string their position (sorted) falls in."""
    summed = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(values, out=summed[1:])
    return np.diff(summed[np.searchsorted(at, off)])

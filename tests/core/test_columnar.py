"""core/columnar.py's pieces against the per-record definitions they stand for: the layout order, Python's
whitespace, the NFC shortcut, the canonical JSON and id, a table row's JSON text, the token count."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from unittest.mock import patch

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mira_dagster.core import columnar
from mira_dagster.core.layouts import LAYOUTS, normalise_text
from mira_dagster.core.records import TEXT_FIELDS, TOKEN_PATTERN, _id_of_normalised, estimate_tokens, original_text
from mira_dagster.io.ingest import SourceIngest
from tests.conftest import SAMPLE


def test_the_layouts_read_as_columns_are_tried_in_the_layouts_order() -> None:
    """A layout inserted in core/layouts.py before one of these would be skipped by the columns: this fails first."""
    names = [name for name, _ in LAYOUTS["qa_with_think"]]
    order = [name for name, _ in columnar._QA_ORDER]
    assert names[: len(order)] == order
    assert set(columnar._LAYOUTS) <= set(order)


def test_python_whitespace_is_all_below_u3001() -> None:
    assert "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) == columnar.PY_SPACE


def test_text_without_a_character_of_the_nfc_class_is_its_own_nfc() -> None:
    """Every character outside the class is NFC alone and after any character outside it (the pairs NFC could
    compose), checked over the whole BMP against a sample of first characters."""
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    inside = pl.Series(chars).str.contains(columnar._nfc_pattern()).to_list()
    outside = [c for c, flag in zip(chars, inside, strict=True) if not flag]
    assert all(unicodedata.normalize("NFC", c) == c for c in outside)
    starters = outside[::97]
    for first in starters:
        assert all(unicodedata.normalize("NFC", first + c) == first + c for c in outside[::7])


texts = st.lists(
    st.characters(blacklist_categories=("Cs",))
    | st.sampled_from(["\r\n", "\r", " ", "\t", "\x1c", "\u00a0", "e\u0301", "\u212b", '"', "\\", "\x00", "\x7f"]),
    max_size=40,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | texts, max_size=8))
def test_nfc_candidates_are_the_values_the_class_finds(values: list[str | None]) -> None:
    series = pl.Series(values, dtype=pl.String)
    expected = series.str.contains(columnar._nfc_pattern()).fill_null(False).to_list()
    assert columnar.nfc_candidates(series).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(question=texts, thinking=texts, answer=texts)
def test_normalised_text_and_record_id_are_the_per_record_ones(question: str, thinking: str, answer: str) -> None:
    df = pl.DataFrame({"question": [question], "thinking": [thinking], "answer": [answer]})
    normal = columnar.normalised(df, ["question", "thinking", "answer"])
    fields = {"question": question, "thinking": thinking, "answer": answer}
    expected = {k: normalise_text(v) for k, v in fields.items()}
    assert normal.row(0, named=True) == expected
    assert columnar.record_ids(normal) == [_id_of_normalised(expected)]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "text": st.none() | texts,
                'k "é"\t': st.none() | st.integers(-(2**63), 2**63 - 1),
                "flag": st.none() | st.booleans(),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_table_rows_json_text_is_json_dumps_of_the_row(rows: list[dict]) -> None:
    df = pl.DataFrame(rows, schema={"text": pl.String, 'k "é"\t': pl.Int64, "flag": pl.Boolean})
    rows = [{k: r[k] for k in df.columns} for r in rows]  # a table row's keys come in column order
    assert columnar.row_json(df).to_list() == [original_text(r, None) for r in rows]
    assert all(json.loads(t) == r for t, r in zip(columnar.row_json(df).to_list(), rows, strict=True))


def test_every_character_is_escaped_as_json_dumps_escapes_it() -> None:
    """The canonical JSON's strings: polars' JSON encoding against json.dumps(ensure_ascii=False), every code point
    (in strings of 512, so a difference anywhere shows)."""
    codes = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["".join(map(chr, codes[i : i + 512])) for i in range(0, len(codes), 512)]
    escaped = pl.select(columnar._escaped(pl.lit(pl.Series(texts)))).to_series().to_list()
    assert escaped == [json.dumps(t, ensure_ascii=False)[1:-1] for t in texts]


# Token counts without the regex: token_counts against polars' count of records.TOKEN_PATTERN.


def _regex_counts(texts: list[str | None]) -> list[int]:
    series = pl.Series(texts, dtype=pl.String)
    return series.fill_null("").str.count_matches(TOKEN_PATTERN).cast(pl.Int64).to_list()


def test_word_and_space_characters_are_disjoint_and_as_polars_reads_them() -> None:
    """The table is polars' regex classes, read back one code point at a time for a sample of each class."""
    table = columnar.char_classes()
    assert table.shape == (0x110000,)
    codes = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000][::53]
    chars = pl.Series([chr(c) for c in codes])
    word = chars.str.contains(r"^\w$").to_list()
    space = chars.str.contains(r"^\s$").to_list()
    assert [int(table[c]) for c in codes] == [1 if w else 0 if s else 2 for w, s in zip(word, space, strict=True)]


_TRICKY = [
    "a",
    "Z",
    "_",
    "7",
    "٣",
    "é",
    "e\u0301",
    "\u0301",
    "中",
    "ß",
    "ǅ",
    "Ⅻ",
    "²",
    "½",
    "\u200d",
    "\u200c",
    "‿",
    "𝔸",
    "𝟘",
    "😀",
    "\U000e0041",
    "\U0010fffd",
    " ",
    "\t",
    "\n",
    "\x0b",
    "\x0c",
    "\r",
    "\x1c",
    "\x1f",
    "\x85",
    "\xa0",
    "\u1680",
    "\u2028",
    "\u3000",
    "\u200b",
    "-",
    ".",
    "'",
    "\x00",
    "\x7f",
    "∀",
    "ℕ",
    "→",
    "，",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.text(st.characters(exclude_categories=["Cs"]), max_size=60), max_size=12))
def test_token_counts_equal_the_regex_on_any_unicode_text(texts: list[str | None]) -> None:
    assert columnar.token_counts(pl.Series(texts, dtype=pl.String)).tolist() == _regex_counts(texts)


_PIECES = st.sampled_from(_TRICKY) | st.sampled_from(["ab1_", "é" * 9, "x" * 23, "中" * 6])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.none() | st.lists(_PIECES, max_size=60).map("".join), max_size=12),
    st.sampled_from([64, 128, 1 << 18]),
)
def test_token_counts_equal_the_regex_on_runs_of_every_kind_of_character(texts: list[str | None], chunk: int) -> None:
    """Long runs (the measured path), runs of multi-byte word characters (the byte-to-character correction),
    strings ending or starting inside a run, and chunks of 64 bytes, so characters and runs straddle chunks."""
    with patch.object(columnar, "_CHUNK", chunk):
        counts = columnar.token_counts(pl.Series(texts, dtype=pl.String)).tolist()
    assert counts == _regex_counts(texts)


def test_token_counts_on_long_values_and_a_sliced_array() -> None:
    texts = ["x" * 300_001, ("中文" * 50_000 + " ") * 3, "é_" * 140_000 + "!", "", None, "a" * 17, "a" * 16 + "é"]
    assert columnar.token_counts(pl.Series(texts, dtype=pl.String)).tolist() == _regex_counts(texts)
    sliced = pa.array(texts, type=pa.large_string()).slice(2, 4)
    assert columnar.token_counts(sliced).tolist() == _regex_counts(texts[2:6])
    assert columnar.token_counts(pa.array([], type=pa.string())).tolist() == []
    assert estimate_tokens("hello, world") == 5


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in _strings(item)] + [str(k) for k in (value if isinstance(value, dict) else [])]


@pytest.mark.parametrize("path", sorted(SAMPLE.glob("*.jsonl")), ids=lambda p: p.stem)
def test_token_counts_equal_the_regex_on_every_sample_text(path: Path) -> None:
    """Every string of the sample file (values and keys at any depth), and the records' n_tokens read from it."""
    texts = [
        s for line in path.read_text(encoding="utf-8").splitlines() if line.strip() for s in _strings(json.loads(line))
    ]
    assert columnar.token_counts(pl.Series(texts, dtype=pl.String)).tolist() == _regex_counts(texts)
    family = "agent" if path.name.startswith("swe_") else "qa_with_think"
    ingest = SourceIngest("s", "g", family, [path])
    for records, _ in ingest.batches():
        fields = records.select(pl.col(f).fill_null("").str.count_matches(TOKEN_PATTERN) for f in TEXT_FIELDS)
        assert records["n_tokens"].to_list() == fields.sum_horizontal().cast(pl.Int64).to_list()

"""core/columnar.py's pieces against the per-record definitions they stand for: the layout order, Python's
whitespace, the NFC shortcut, the canonical JSON and id, a table row's JSON text."""

from __future__ import annotations

import json
import unicodedata

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from mira_dagster.core import columnar
from mira_dagster.core.layouts import LAYOUTS, normalise_text
from mira_dagster.core.records import _id_of_normalised, original_text


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

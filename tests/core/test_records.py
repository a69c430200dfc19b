from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mira_dagster.core.records import estimate_tokens, record_id_of
from mira_dagster.io.readers import SourceFileError
from tests.conftest import SAMPLE
from tests.helpers import read_source

# (file, family, expected layout) for every bundled sample file
SAMPLES = [
    ("math_think_thoughtanchors_r1distill.jsonl", "qa_with_think", "prompt_solution"),
    ("math_think_marco_o1_cot_demo.part1.jsonl", "qa_with_think", "instruction_response"),
    ("lean_kimina_prover_minif2f_test_solved.jsonl", "qa_with_think", "lean_cot_proof"),
    ("lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl", "qa_with_think", "lean_formal"),
    ("swe_openhands_multiswebench_output.jsonl", "agent", "agent_turns"),
    ("swe_openhands_resolver_output.jsonl", "agent", "agent_turns"),
    ("swe_sweagent_trajs.jsonl", "agent", "agent_turns"),
    ("swe_swesmith_trajs.jsonl", "agent", "agent_turns"),
    ("swe_swesmith_ft_xml_messages.jsonl", "agent", "agent_turns"),
]


@pytest.mark.parametrize(("name", "family", "layout"), SAMPLES)
def test_every_sample_line_becomes_a_record(name: str, family: str, layout: str) -> None:
    path = SAMPLE / name
    read = read_source("s", "g", family, [path])
    n_lines = len(path.read_bytes().splitlines())
    assert read.lines_read == n_lines == len(read.records) + len(read.quarantined)
    assert read.quarantined == []
    assert {r.layout for r in read.records} == {layout}
    for r in read.records:
        assert r.n_tokens > 0
        if family == "agent":
            assert r.trajectory and r.task
        else:
            assert r.question and r.answer


def test_thinking_is_split_from_answer() -> None:
    rec = read_source("s", "g", "qa_with_think", [SAMPLE / "math_think_thoughtanchors_r1distill.jsonl"]).records[0]
    assert "\\boxed" in rec.answer
    assert "</think>" not in rec.answer and "</think>" not in rec.thinking
    assert not rec.question.endswith("<think>")
    marco = read_source("s", "g", "qa_with_think", [SAMPLE / "math_think_marco_o1_cot_demo.part1.jsonl"]).records[0]
    assert marco.thinking and "<Thought>" not in marco.thinking and "<Output>" not in marco.answer


def test_agent_outcome_is_the_patch() -> None:
    recs = read_source("s", "g", "agent", [SAMPLE / "swe_openhands_resolver_output.jsonl"]).records
    assert all(r.outcome and "diff --git" in r.outcome for r in recs)
    swe = read_source("s", "g", "agent", [SAMPLE / "swe_sweagent_trajs.jsonl"]).records
    assert sum(bool(r.outcome) for r in swe) >= 10


def test_record_id_is_content_only() -> None:
    a = record_id_of({"question": "What is 2+2?", "answer": "4"})
    assert a == record_id_of({"answer": "4\r\n", "question": "  What is 2+2?"})
    assert a != record_id_of({"question": "What is 2+3?", "answer": "4"})


def test_same_content_in_two_sources_has_one_id(tmp_path: Path) -> None:
    line = (SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (tmp_path / "a.jsonl").write_text(line + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(line + "\n", encoding="utf-8")
    a = read_source("a", "2", "qa_with_think", [tmp_path / "a.jsonl"]).records[0]
    b = read_source("b", "2", "qa_with_think", [tmp_path / "b.jsonl"]).records[0]
    assert a.record_id == b.record_id and a.source != b.source


def test_bad_lines_are_quarantined_with_reasons(tmp_path: Path) -> None:
    good = {"question": "Q?", "thinking": "t", "answer": "A."}
    lines = [
        json.dumps(good).encode(),
        b"{not json",
        b"",
        b"[1, 2]",
        json.dumps({"foo": 1}).encode(),
        json.dumps({"question": "  ", "answer": "x"}).encode(),
        json.dumps(good).encode(),
        b'{"question": "caf\xe9", "answer": "x"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    read = read_source("s", "g", "qa_with_think", [path])
    assert read.lines_read == 8
    assert len(read.records) == 1
    reasons = {q.origin_line: q.reason for q in read.quarantined}
    assert reasons[2].startswith("invalid JSON")
    assert reasons[3] == "blank line"
    assert reasons[4] == "a list that is not a conversation (2 items, the first number)"
    assert reasons[5].startswith("no qa_with_think layout matches keys ['foo']")
    assert "empty required field(s) ['question']" in reasons[6]
    assert reasons[7] == "duplicate of bad.jsonl:1"
    assert reasons[8].startswith("not valid UTF-8")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceFileError, match="nope.jsonl"):
        read_source("s", "g", "qa", [tmp_path / "nope.jsonl"])


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello, world") == 5  # hell o , worl d
    assert estimate_tokens("a b c") == 3


def _good_line(i: int) -> bytes:
    return json.dumps({"question": f"Q{i}?", "thinking": "t", "answer": f"A{i}."}).encode()


def test_a_10_mb_record_is_quarantined_and_the_rest_kept(tmp_path: Path) -> None:
    huge = json.dumps({"question": "Q?", "thinking": "x" * (10 * 1024 * 1024), "answer": "A."}).encode()
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join([_good_line(1), huge, _good_line(2)]) + b"\n")
    read = read_source("s", "g", "qa_with_think", [path])
    assert len(read.records) == 2 and read.lines_read == 3
    (q,) = read.quarantined
    assert q.origin_line == 2 and "over the 4,194,304-byte limit" in q.reason and len(q.excerpt) <= 200


def test_empty_file_is_reported_not_lost(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "a.jsonl").write_bytes(_good_line(1) + b"\n")
    read = read_source("s", "g", "qa_with_think", [tmp_path / "empty.jsonl", tmp_path / "a.jsonl"])
    assert read.empty_files == [str(tmp_path / "empty.jsonl")] and len(read.records) == 1


def _while_reading(monkeypatch: pytest.MonkeyPatch, at_line: int, act: Callable[[], None]) -> None:
    """Run `act` (another writer touching the file) just as the reader parses line `at_line`: per record, or in
    the batch the columnar path reads (core/columnar.py: it reads a batch's lines at once)."""
    from mira_dagster.core import records

    read, lines = records.read_unit, records.plain_lines
    calls: list[int] = []

    def once(n: int) -> None:
        if len(calls) < at_line <= len(calls) + n:
            act()
        calls.extend([1] * n)

    def read_and_act(unit: object, max_bytes: int) -> object:
        once(1)
        return read(unit, max_bytes)

    def lines_and_act(raws: list, max_bytes: int) -> list[int]:
        once(len(raws))
        return lines(raws, max_bytes)

    monkeypatch.setattr(records, "read_unit", read_and_act)
    monkeypatch.setattr(records, "plain_lines", lines_and_act)


def test_file_replaced_while_read_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(_good_line(i) for i in range(50)) + b"\n")

    def replace() -> None:  # a writer swaps in a new version mid-read, as `mv new a.jsonl` would
        (tmp_path / "new.jsonl").write_bytes(_good_line(99) + b"\n")
        os.replace(tmp_path / "new.jsonl", path)

    _while_reading(monkeypatch, 10, replace)
    with pytest.raises(SourceFileError, match=r"a\.jsonl was replaced or changed while being read"):
        read_source("s", "g", "qa_with_think", [path])


def test_file_appended_while_read_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(_good_line(i) for i in range(5)) + b"\n")

    def append() -> None:  # a writer still appending to the file being read
        with path.open("ab") as fh:
            fh.write(b'{"question": "late')

    _while_reading(monkeypatch, 2, append)
    with pytest.raises(SourceFileError, match="changed while being read"):
        read_source("s", "g", "qa_with_think", [path])


def test_record_rows_are_records_fields_in_the_schemas_order() -> None:
    """The scoring path's rows (no pydantic object per record) hold what a Record holds, field for field."""
    import polars as pl

    from mira_dagster.core.records import RECORD_SCHEMA, Record, RecordRow, record_rows

    assert RecordRow._fields == tuple(RECORD_SCHEMA) == tuple(Record.model_fields)
    row = {
        **dict.fromkeys(RECORD_SCHEMA, None),
        "record_id": "r1",
        "source": "s",
        "group_id": "g",
        "format": "qa",
        "layout": "l",
        "question": "q",
        "answer": "a",
        "n_tokens": 3,
        "origin_file": "f.jsonl",
        "origin_line": 7,
    }
    df = pl.DataFrame([{**row, "extra": 1}], schema={**RECORD_SCHEMA, "extra": pl.Int64})
    (got,) = record_rows(df)
    assert got._asdict() == Record(**row).model_dump()

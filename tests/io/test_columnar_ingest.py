"""The columnar ingest (core/columnar.py, Arrow-decoded batches) against the per-record path it replaces where it
can: over every sample file, every layout and container fixture, every bad-input case and lines written to sit
on the edges between the two, both give the same records (all columns, same order), the same quarantine rows and
the same stats."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.config import PROJECT_ROOT, Family
from mira_dagster.io.ingest import SourceIngest
from tests.io.test_bad_input import CASES, good

SAMPLE = PROJECT_ROOT / "data" / "sample"
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"


def _read(files: list[Path], family: Family, columnar: bool, batch_size: int = 2048) -> tuple:
    ingest = SourceIngest("s", "g", family, files, columnar=columnar, batch_size=batch_size)
    frames = list(ingest.batches())
    records = pl.concat([r for r, _ in frames]) if frames else pl.DataFrame()
    quarantine = pl.concat([q for _, q in frames]) if frames else pl.DataFrame()
    stats = ingest.stats
    summary = (
        stats.records,
        stats.quarantined,
        stats.tokens,
        dict(stats.layouts),
        dict(stats.reasons),
        dict(stats.unused_keys),
        stats.unused_first,
        stats.suggested_fields,
        stats.units_read,
    )
    return records, quarantine, summary


def _same(files: list[Path], family: Family, batch_size: int = 2048) -> pl.DataFrame:
    old = _read(files, family, columnar=False, batch_size=batch_size)
    new = _read(files, family, columnar=True, batch_size=batch_size)
    assert old[0].equals(new[0], null_equal=True), "records differ"
    assert old[1].equals(new[1], null_equal=True), "quarantine rows differ"
    assert old[2] == new[2], "stats differ"
    return new[0]


def _family(path: Path) -> Family:
    return "agent" if path.name.startswith("swe_") else "qa_with_think"


@pytest.mark.parametrize("path", sorted(SAMPLE.glob("*.jsonl")), ids=lambda p: p.name)
def test_every_sample_file_reads_the_same(path: Path) -> None:
    records = _same([path], _family(path))
    assert records.height > 0


def _placed(files: list[Path], family: Family, batch_size: int = 2048) -> list[int]:
    """How many rows of each batch the columnar path placed."""
    from mira_dagster.core.records import BatchParser

    seen: list[int] = []
    original = BatchParser._columnar

    def spy(self: BatchParser, units: list, form: str) -> object:
        out = original(self, units, form)
        seen.append(0 if out is None else len(out[1]))
        return out

    BatchParser._columnar = spy  # type: ignore[method-assign]
    try:
        _read(files, family, columnar=True, batch_size=batch_size)
    finally:
        BatchParser._columnar = original  # type: ignore[method-assign]
    return seen


def test_the_sample_is_mostly_read_as_columns() -> None:
    """The check above means something: the QA sample files go through the columnar path (a batch the columns
    cannot read would fall back per record and still compare equal)."""
    seen = _placed([p for p in sorted(SAMPLE.glob("*.jsonl")) if _family(p) == "qa_with_think"], "qa_with_think")
    assert all(n > 0 for n in seen) and sum(seen) > 400


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (*FIXTURES.joinpath("layouts").iterdir(), *FIXTURES.joinpath("containers").iterdir())
        if p.is_file() and p.suffix != ".py" and p.name not in ("README.md", "sample_golden.json")
    ),
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("family", ["qa_with_think", "agent"])
def test_every_fixture_reads_the_same(path: Path, family: Family) -> None:
    _same([path], family)


@pytest.mark.parametrize(("kind", "name", "write", "n_records", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_reads_the_same(tmp_path: Path, kind: str, name: str, write, n_records: int, kinds) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    write(path)
    _same([path], "qa_with_think")


def _q(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


EDGES = [
    # text the normalisation changes: NFC, CR, surrounding spaces of both kinds
    _q(question="cafe\u0301 \u212b  ", answer="\r\nx\ry\r\n", thinking="\x1c\u00a0 t \u2003"),
    _q(question="q \u2260 r", answer="a"),
    # escapes the canonical JSON writes: quotes, backslashes, control characters, DEL, a line separator
    _q(question='"quoted" \\ back\tslash\b\f\x00\x01\x1f\x7f\u2028', answer="a"),
    # the per-record path decides these rows inside a columnar batch
    _q(question="q", answer="   "),  # blank required field
    _q(question=None, answer="a"),  # a null where a key is needed
    b'{"answer": "only an answer", "thinking": "t"}',
    _q(question="q", answer=5),  # not text: the batch is read per record
    _q(question="q", answer="a", extra="Human: hi there, this is long enough to count as prose\n\nAssistant: ok"),
    _q(question="q", answer="a", notes="some unused prose that no field of the record holds, long enough to count"),
    _q(question="q", answer="a", rejected_answer="prose under a side key is never called unused, whatever it says"),
    _q(question="q", answer="a", thinking=None),
    b'  {"question": "padded line", "answer": "a"}  ',
    b'{"question": "NaN inside text", "answer": "a"}',
    b'{"question": "\\ud83d\\ude00 a pair", "answer": "a"}',
    good(7),
    good(7),  # a duplicate of the line before
]


TRACE = "Let me work through this carefully, one step after another, before I answer"
LISTED = [
    # lists of prose: a trace a field holds is used, another one is not (OpenR1's `generations`)
    _q(question="q1", thinking=TRACE, answer="a", generations=[TRACE, "a second attempt at the problem, never shown"]),
    _q(question="q2", thinking=TRACE, answer="a", generations=[TRACE]),
    _q(question="q3", answer="a", generations=[None, "a null beside prose that no field of the record holds"]),
    _q(question="q4", answer="a", generations=[]),
    _q(question="q5", answer="a", generations=None),
    _q(question="q6", answer="a", tags=["short", "tags"]),
]


@pytest.mark.parametrize("batch_size", [1, 2, 2048])
def test_a_list_of_prose_left_unused_is_named_the_same(tmp_path: Path, batch_size: int) -> None:
    """A list of strings any one of which is prose no field holds is a key left unused, on both paths; before, only
    top-level strings were looked at and the second trace went unmentioned."""
    path = tmp_path / "listed.jsonl"
    path.write_bytes(b"\n".join(LISTED) + b"\n")
    _same([path], "qa_with_think", batch_size)
    _, _, stats = _read([path], "qa_with_think", columnar=True, batch_size=batch_size)
    assert stats[5] == {"generations": 2}
    if batch_size == 2048:
        assert _placed([path], "qa_with_think") == [6]  # the columnar path decided them


@pytest.mark.parametrize("batch_size", [1, 3, 2048])
def test_edge_lines_read_the_same(tmp_path: Path, batch_size: int) -> None:
    path = tmp_path / "edges.jsonl"
    path.write_bytes(b"\n".join(EDGES) + b"\n")
    records = _same([path], "qa_with_think", batch_size)
    assert records.height >= 8


@pytest.mark.parametrize(
    "rows",
    [
        [{"prompt": "p <think>\n", "solution": "t</think>a"}, {"prompt": "p2", "solution": "no tag"}],
        [
            {"instruction": "i", "response": "<Thought>t</Thought><Output>a</Output>"},
            {"instruction": "i2", "response": "<Output>first</Output><Thought>t</Thought> rest\n"},
            {"instruction": "i3", "response": "<Thought>t</Thought> after\n"},
            {"instruction": "i4", "response": "<Thought>open only <think>x</think> y"},
            {"instruction": "i5", "response": "<think>t</think>a <think>"},
            {"instruction": "i6", "response": "<Thought>t</Thought><Output>cut\n"},
        ],
        [
            {"cot": "<think>c</think> lean", "correct_proof": "theorem\tfoo : 1 = 1 := by rfl", "name": "n"},
            {"cot": "no tag\n", "correct_proof": "theorems: none", "name": "n2"},
            {"cot": "<think>open\n", "correct_proof": "lemma x := y"},
            {"cot": "x", "correct_proof": "theorem\x1cbar := z theorem baz := w", "name": None},
        ],
        [
            {"informal_prefix": "/-- p -/\n", "formal_statement": "theorem t : True :=", "formal_proof": " by trivial"},
            {"formal_statement": "theorem u : True :=", "formal_proof": " trivial"},
        ],
        [{"question": "q", "answer": "a", "response": "r"}, {"instruction": "i", "response": "r"}],
        [{"instruction": "i", "response": "r", "context": "c"}],
    ],
    ids=["prompt_solution", "instruction_response", "lean_cot_proof", "lean_formal", "mixed", "dolly"],
)
def test_each_layout_read_as_columns_reads_the_same(tmp_path: Path, rows: list[dict]) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _same([path], "qa_with_think")


def _parquet_of(objs: list[dict], path: Path) -> bool:
    """`objs` as a Parquet file, when Arrow can type them (False when a key mixes types)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def safe(v: object) -> object:  # Parquet has no struct without fields
        if isinstance(v, dict):
            return {k: safe(x) for k, x in v.items()} or None
        return [safe(x) for x in v] if isinstance(v, list) else v

    try:
        table = pa.Table.from_pylist([safe(o) for o in objs])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    pq.write_table(table, path, row_group_size=50)
    return True


@pytest.mark.parametrize("path", sorted(SAMPLE.glob("*.jsonl")), ids=lambda p: p.name)
def test_every_sample_file_as_parquet_reads_the_same(tmp_path: Path, path: Path) -> None:
    objs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    target = tmp_path / f"{path.stem}.parquet"
    if not _parquet_of(objs + objs[:5], target):  # with duplicates of its first rows
        pytest.skip("Arrow cannot type this file (a key mixes types)")
    _same([target], _family(path), batch_size=100)
    if _family(path) == "qa_with_think":  # and its rows went through the columns
        assert sum(_placed([target], "qa_with_think", batch_size=100)) >= len(objs)


def test_table_rows_of_every_simple_type_read_the_same(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "question": ["q1", 'q "2"\n\\', None, "q4", "q5", "q1", "  "],
            "answer": ["a", "b", "c", "d\u0301", "e\r\n", "a", "x"],
            'odd "key"\t': [1, None, -3, 2**62, 0, 1, 5],
            "flag": [True, False, None, True, False, True, False],
            "nothing": pa.nulls(7),
            "clé": ["été", "\x00\x1f\x7f", "", None, "\u2028", "été", "z"],
            "notes": ["long unused prose that no field of this record holds, at some length"] * 7,
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=3)
    records = _same([path], "qa_with_think", batch_size=4)
    assert records.height == 4  # a null and a blank question, a duplicate
    assert sum(_placed([path], "qa_with_think", batch_size=4)) == 5  # all but the null and the blank question
    arrow = tmp_path / "t.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    _same([arrow], "qa_with_think")


def test_table_rows_of_other_types_are_read_per_record_the_same(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"question": ["q1", "q2"], "answer": ["a", "b"], "score": [0.5, float("nan")]})
    pq.write_table(table, tmp_path / "f.parquet")
    _same([tmp_path / "f.parquet"], "qa_with_think")


def test_lines_that_would_make_arrow_infer_for_minutes_are_read_quickly_and_the_same(tmp_path: Path) -> None:
    """Inferring a schema over lines nested hundreds deep, or whose keys all differ, is superlinear in Arrow (2,048
    lines of distinct keys 1,000 deep: 459 s); the reader infers from a sample of plain lines and holds the rest to
    it, so such batches are read per record at once."""
    import time

    deep = [b'{"k%d": ' % i + b"[" * 300 + b"]" * 300 + b', "question": "q", "answer": "a"}' for i in range(300)]
    wide = [
        json.dumps({**{f"k{i}_{j}": "v" for j in range(100)}, "question": f"w{i}", "answer": "a"}).encode()
        for i in range(300)
    ]
    path = tmp_path / "adversarial.jsonl"
    path.write_bytes(b"\n".join([good(1), *deep, good(2), *wide, good(3)]) + b"\n")
    start = time.perf_counter()
    records = _same([path], "qa_with_think")
    assert time.perf_counter() - start < 20
    assert records.height == 304  # one deep line is a record, the others its duplicates; every wide line

"""The bad-input corpus: every kind of broken input we know of, each with its expected outcome.

For each kind: the units read equal records + quarantine rows (and the independent count of the file), the
quarantine kinds are as expected, and nothing raises or hangs. File-level problems raise SourceFileError naming
the file (the raw_records partition of that source fails alone: tests/defs/test_ingest_asset.py)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mira_dagster.io.readers import SourceFileError, count_units
from tests.helpers import read_source

GOOD = {"question": "What is 2 + 2?", "thinking": "Two and two.", "answer": "4"}


def good(i: int = 0) -> bytes:
    return json.dumps({**GOOD, "question": f"What is {i} + {i}?"}).encode()


def lines(*parts: bytes) -> bytes:
    return b"\n".join(parts) + b"\n"


Writer = Callable[[Path], None]


def jsonl(content: bytes) -> Writer:
    return lambda p: p.write_bytes(content)


def parquet(rows: list[dict]) -> Writer:
    return lambda p: pq.write_table(pa.Table.from_pylist(rows), p)


def tar_gz(*members: bytes) -> Writer:
    """A .tar.gz of JSON Lines members (issue 23: its headers were read as text glued to the first records)."""

    def write(p: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for i, data in enumerate(members):
                info = tarfile.TarInfo(f"part{i}.jsonl")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        p.write_bytes(gzip.compress(buf.getvalue()))

    return write


# (kind, file name, writer, expected records, expected quarantine kinds)
CASES: list[tuple[str, str, Writer, int, dict[str, int]]] = [
    ("invalid JSON", "a.jsonl", jsonl(lines(good(), b'{"question": "cut')), 1, {"invalid JSON": 1}),
    ("blank line", "a.jsonl", jsonl(lines(good(), b"", good(1))), 2, {"blank line": 1}),
    ("whitespace-only line", "a.jsonl", jsonl(lines(good(), b" \t ")), 1, {"blank line": 1}),
    ("array instead of object", "a.jsonl", jsonl(lines(b"[1, 2]", good())), 1, {"not an object": 1}),
    ("string, number, null lines", "a.jsonl", jsonl(lines(b'"hi"', b"42", b"null", good())), 1, {"not an object": 3}),
    (
        "lone surrogate escape",
        "a.jsonl",
        jsonl(lines(b'{"question": "\\ud800", "answer": "x"}', good())),
        1,
        {"not UTF-8": 1},
    ),
    (
        "nested 10,000 deep",
        "a.jsonl",
        jsonl(lines(b'{"q": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", good())),
        1,
        {"invalid JSON": 1},
    ),
    (
        "5,000-digit integer",
        "a.jsonl",
        jsonl(lines(b'{"question": "q", "answer": ' + b"9" * 5000 + b"}", good())),
        1,
        {"invalid JSON": 1},
    ),
    ("NaN", "a.jsonl", jsonl(lines(b'{"question": "q", "answer": NaN}', good())), 1, {"invalid JSON": 1}),
    ("Infinity", "a.jsonl", jsonl(lines(b'{"question": "q", "answer": -Infinity}', good())), 1, {"invalid JSON": 1}),
    ("invalid UTF-8", "a.jsonl", jsonl(lines(b'{"question": "caf\xe9", "answer": "x"}', good())), 1, {"not UTF-8": 1}),
    ("BOM on the first line", "a.jsonl", jsonl(b"\xef\xbb\xbf" + lines(good(), good(1))), 2, {}),
    ("a line that is only a BOM", "a.jsonl", jsonl(lines(b"\xef\xbb\xbf", good())), 1, {"blank line": 1}),
    ("CRLF line ends", "a.jsonl", jsonl(good() + b"\r\n" + good(1) + b"\r\n"), 2, {}),
    ("no newline at the end", "a.jsonl", jsonl(good() + b"\n" + good(1)), 2, {}),
    (
        "old Mac CR-only line ends",
        "a.jsonl",
        jsonl(good() + b"\r" + good(1) + b"\r" + b"{x\r" + good(2)),
        3,
        {"invalid JSON": 1},
    ),
    (
        "CR-only line ends, gzipped",
        "a.jsonl.gz",
        lambda p: p.write_bytes(gzip.compress(good() + b"\r" + good(1) + b"\r")),
        2,
        {},
    ),
    (
        "raw control byte in a string",
        "a.jsonl",
        jsonl(lines(b'{"question": "a\x01b", "answer": "x"}', good())),
        1,
        {"invalid JSON": 1},
    ),
    ("escaped NUL in a string is text", "a.jsonl", jsonl(lines(b'{"question": "a\\u0000b", "answer": "x"}')), 1, {}),
    ("trailing garbage", "a.jsonl", jsonl(lines(good() + b" x", good(1))), 1, {"invalid JSON": 1}),
    # one line, two objects: JSON values written one after another, each a record (issue 21)
    ("two objects on one line alone", "a.jsonl", jsonl(lines(good() + good(1))), 2, {}),
    (
        "two objects on one line of JSON Lines",
        "a.jsonl",
        jsonl(lines(good(), good(1) + good(2))),
        1,
        {"invalid JSON": 1},
    ),
    (
        "line over max_record_bytes",
        "a.jsonl",
        jsonl(lines(good(), json.dumps({**GOOD, "thinking": "x" * 5_000_000}).encode())),
        1,
        {"too large": 1},
    ),
    ("no layout matches", "a.jsonl", jsonl(lines(b'{"foo": 1, "bar": "baz"}', good())), 1, {"no layout": 1}),
    (
        "required field blank",
        "a.jsonl",
        jsonl(lines(b'{"question": "   ", "answer": "x"}', good())),
        1,
        {"empty field": 1},
    ),
    ("duplicate inside the source", "a.jsonl", jsonl(lines(good(), good(), good(1))), 2, {"duplicate": 1}),
    (
        "duplicate after normalisation",
        "a.jsonl",
        jsonl(lines(good(), json.dumps({**GOOD, "question": "What is 0 + 0?  \r\n"}).encode())),
        1,
        {"duplicate": 1},
    ),
    (
        "numeric, boolean and list answers",
        "a.jsonl",
        jsonl(
            lines(
                b'{"question": "q1", "answer": 42}',
                b'{"question": "q2", "answer": false}',
                b'{"question": "q3", "answer": [1, 2]}',
                b'{"question": "q4", "answer": 123456789012345678901234567890}',
            )
        ),
        4,
        {},
    ),
    (
        "deep but reasonable nesting is fine",
        "a.jsonl",
        jsonl(lines(json.dumps({**GOOD, "meta": json.loads("[" * 200 + "]" * 200)}).encode())),
        1,
        {},
    ),
    (
        "JSON array with a broken tail",
        "a.json",
        jsonl(b"[" + good() + b", " + good(1) + b', {"question": '),
        2,
        {"unreadable": 1},
    ),
    (
        "JSON array with non-object elements",
        "a.json",
        jsonl(b"[" + good() + b', 7, "x", null]'),
        1,
        {"not an object": 3},
    ),
    (
        "JSON array nested 10,000 deep",
        "a.json",
        jsonl(b"[" + good() + b", " + b"[" * 10_000 + b"]" * 10_000 + b"]"),
        1,
        {"not an object": 1},
    ),
    (
        "Parquet row with a null required field",
        "a.parquet",
        parquet([GOOD, {**GOOD, "question": None}]),
        1,
        {"empty field": 1},
    ),
    (
        "gzip with a bad line inside",
        "a.jsonl.gz",
        lambda p: p.write_bytes(gzip.compress(lines(good(), b"{oops"))),
        1,
        {"invalid JSON": 1},
    ),
    ("empty file", "a.jsonl", jsonl(b""), 0, {}),
    (
        "a .tar.gz of two JSON Lines files",
        "data.tar.gz",
        tar_gz(lines(*[good(i) for i in range(20)]), lines(*[good(i) for i in range(20, 40)])),
        40,
        {},
    ),
    ("UTF-16 with its BOM, named .jsonl", "a.jsonl", jsonl(lines(good(), good(1)).decode().encode("utf-16")), 2, {}),
    (
        "number out of range (1e999)",
        "a.jsonl",
        jsonl(lines(b'{"question": "q", "answer": 1e999}', good())),
        1,
        {"invalid JSON": 1},
    ),
    (
        "a line that looks like an internal marker",
        "a.jsonl",
        jsonl(lines(b"\x00oversized:zz", good())),
        1,
        {"invalid JSON": 1},
    ),
    (
        "JSON Lines named .json, first line broken",
        "a.json",
        jsonl(lines(b'{"question": "cut', good(), good(1), good(2))),
        3,
        {"invalid JSON": 1},
    ),
    ("JSON Lines named .json, blank first line", "a.json", jsonl(lines(b"", good(), good(1))), 2, {"blank line": 1}),
    # a key given twice: two values for one field, and which one the producer meant is a guess (JSON's last wins)
    (
        "a key twice in one object",
        "a.jsonl",
        jsonl(lines(b'{"question": "first", "question": "second", "answer": "x"}', good())),
        1,
        {"invalid JSON": 1},
    ),
    (
        "a key twice in a nested object",
        "a.jsonl",
        jsonl(lines(good(), b'{"question": "q", "answer": "a", "meta": [{"k": 1, "k": 2}]}', good(1))),
        2,
        {"invalid JSON": 1},
    ),
    (
        "JSON array element with a key twice",
        "a.json",
        jsonl(
            b"[" + b", ".join([good(i) for i in range(9)] + [b'{"question": "q", "answer": "a", "answer": "b"}']) + b"]"
        ),
        9,
        {"unreadable": 1},
    ),
    (
        "Parquet row with a value Python cannot hold",
        "a.parquet",
        lambda p: pq.write_table(
            pa.table(
                {"question": ["q1", "q2"], "answer": ["a", "b"], "when": pa.array([0, 10**15], type=pa.timestamp("s"))}
            ),
            p,
        ),
        1,
        {"unreadable": 1},
    ),
]


@pytest.mark.parametrize(("kind", "name", "write", "n_records", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_kind(
    tmp_path: Path, kind: str, name: str, write: Writer, n_records: int, kinds: dict[str, int]
) -> None:
    path = tmp_path / name
    write(path)
    start = time.perf_counter()
    read = read_source("s", "g", "qa_with_think", [path])
    assert time.perf_counter() - start < 10, "no kind may hang the reader"
    assert len(read.records) == n_records
    assert dict(Counter(q.kind for q in read.quarantined)) == kinds
    # every unit accounted for, and the independent count agrees
    assert read.lines_read == len(read.records) + len(read.quarantined) == count_units(path)
    for q in read.quarantined:
        assert q.reason and len(q.excerpt) <= 200 and q.origin_file == name


def test_the_bad_corpus_has_at_least_25_kinds() -> None:
    assert len(CASES) + len(FILE_ERRORS) >= 25


def test_values_are_rendered_never_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        lines(b'{"question": "q1", "answer": 0}', b'{"question": "q4", "answer": 123456789012345678901234567890}')
    )
    answers = [r.answer for r in read_source("s", "g", "qa_with_think", [path]).records]
    assert answers == ["0", "123456789012345678901234567890"]  # exact, not a float


def test_a_4_mib_line_of_repeated_tags_is_linear(tmp_path: Path) -> None:
    """Layout detection must not backtrack: each line, just under the 4 MiB cap, is one tag repeated in a field
    that some layout searches for tags."""
    cap = 4 * 1024 * 1024
    rows = []
    for tag in ("<Thought>", "<think>", "</think>", "<Output>", "theorem ", ":=", "<Thought><Output>"):
        for key in ("response", "solution", "cot", "correct_proof", "answer"):
            obj = {"instruction": "q", "prompt": "q<think>", "question": "q", "name": "n", key: ""}
            obj[key] = tag * ((cap - 500) // len(tag))
            rows.append(json.dumps(obj).encode())
            assert len(rows[-1]) < cap
    path = tmp_path / "tags.jsonl"
    path.write_bytes(lines(*rows))
    start = time.perf_counter()
    read = read_source("s", "g", "qa_with_think", [path])
    elapsed = time.perf_counter() - start
    assert read.lines_read == len(rows) == len(read.records) + len(read.quarantined)
    assert elapsed < len(rows) * 0.5, f"{elapsed:.1f} s for {len(rows)} lines of 4 MiB"


# File-level problems: the source's partition fails with the file named; nothing is half-written.
FILE_ERRORS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing file", lambda d: d / "nope.jsonl", "file not found"),
    ("glob matching nothing", lambda d: d / "*.jsonl.gz", "no file matches"),
    ("folder without supported files", lambda d: (d / "f").mkdir() or d / "f", "holds no supported file"),
    (
        "truncated gzip",
        lambda d: (
            (d / "t.jsonl.gz").write_bytes(gzip.compress(lines(*[good(i) for i in range(500)]))[:-30])
            and d / "t.jsonl.gz"
        ),
        "cannot read",
    ),
    ("corrupt Parquet", lambda d: (d / "c.parquet").write_bytes(b"PAR1garbage") and d / "c.parquet", "cannot read"),
    (
        "a FIFO, not a regular file",
        lambda d: __import__("os").mkfifo(d / "p.jsonl") or d / "p.jsonl",
        "not a regular file",
    ),
    (
        "truncated zstd (the stream reader alone would end early without a word)",
        lambda d: (
            (d / "t.jsonl.zst").write_bytes(
                zstandard.ZstdCompressor().compress(lines(*[good(i) for i in range(2000)]))[:-200]
            )
            and d / "t.jsonl.zst"
        ),
        "truncated",
    ),
    (
        "a .parquet that is not Parquet (a git-LFS pointer)",
        lambda d: (d / "l.parquet").write_text("version https://git-lfs.github.com/spec/v1\n") and d / "l.parquet",
        "git-LFS pointer, not the data: run git lfs pull",
    ),
    (
        "a git-LFS pointer named .jsonl",
        lambda d: (
            (d / "l.jsonl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
            and d / "l.jsonl"
        ),
        "git-LFS pointer, not the data: run git lfs pull",
    ),
    (
        "a Parquet file naming a column twice",
        lambda d: (
            pq.write_table(
                pa.Table.from_arrays(
                    [pa.array(["q"]), pa.array(["a"]), pa.array(["b"])], names=["question", "answer", "answer"]
                ),
                d / "d.parquet",
            )
            or d / "d.parquet"
        ),
        "names column 'answer' twice",
    ),
    (
        "a Parquet struct naming a field twice",
        lambda d: (
            pq.write_table(
                pa.table(
                    {
                        "question": ["q"],
                        "answer": ["a"],
                        "meta": pa.StructArray.from_arrays([pa.array([1]), pa.array([2])], names=["k", "k"]),
                    }
                ),
                d / "s.parquet",
            )
            or d / "s.parquet"
        ),
        "names column 'meta.k' twice",
    ),
    (
        "a CSV quote never closed (it would swallow every later row into one field)",
        lambda d: (d / "q.csv").write_text('question,answer\nq1,"a1\nq2,a2\nq3,a3\n') and d / "q.csv",
        "CSV row 1 cannot be read: unexpected end of data",
    ),
    (
        "a CSV field with text after its closing quote (read as the text without its quotes)",
        lambda d: (d / "t.csv").write_text('question,answer\nq1,a1\n"ab"c,d\n') and d / "t.csv",
        "CSV row 2 cannot be read",
    ),
    (
        "a .parquet that is empty (a half-downloaded file)",
        lambda d: (d / "e.parquet").write_bytes(b"") or d / "e.parquet",
        "not a Parquet file",
    ),
]


@pytest.mark.parametrize(("kind", "make", "message"), FILE_ERRORS, ids=[c[0] for c in FILE_ERRORS])
def test_file_level_problems_name_the_file(
    tmp_path: Path, kind: str, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(SourceFileError, match=message) as err:
        read_source("my_src", "g", "qa_with_think", [path])
    assert "my_src" in str(err.value)


def test_a_key_twice_names_the_key(tmp_path: Path) -> None:
    """The quarantine row says which key was given twice, for a JSON Lines line and a JSON array element alike."""
    (tmp_path / "a.jsonl").write_bytes(lines(b'{"question": "first", "question": "second", "answer": "x"}'))
    (tmp_path / "b.json").write_bytes(b'[{"question": "q", "answer": "a", "answer": "b"}]')
    for name, key in (("a.jsonl", "question"), ("b.json", "answer")):
        read = read_source("s", "g", "qa_with_think", [tmp_path / name])
        assert not read.records
        [row] = read.quarantined
        assert f"{key}" in row.reason and "twice" in row.reason, row.reason
        assert key in row.excerpt

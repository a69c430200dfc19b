"""Every accepted file format and layout of `files:` entries, read to the same records."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from mira_dagster.io.readers import SourceFileError, count_units, expand_files, iter_units, sniff, split_name
from tests.helpers import read_source

ROWS = [{"question": f"What is {i} + {i}?", "thinking": f"add {i} twice", "answer": i + i} for i in range(1, 8)]


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _answers(path_or_paths: Path | list[Path]) -> list[str]:
    paths = path_or_paths if isinstance(path_or_paths, list) else [path_or_paths]
    read = read_source("s", "g", "qa_with_think", paths)
    assert read.quarantined == []
    return [r.answer for r in read.records]


EXPECTED = [str(r["answer"]) for r in ROWS]


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("a.jsonl", lambda p: p.write_bytes(_jsonl(ROWS))),
        ("a.ndjson", lambda p: p.write_bytes(_jsonl(ROWS))),
        ("a.jsonl.gz", lambda p: p.write_bytes(gzip.compress(_jsonl(ROWS)))),
        ("a.jsonl.zst", lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(_jsonl(ROWS)))),
        ("a.jsonl.bz2", lambda p: p.write_bytes(bz2.compress(_jsonl(ROWS)))),
        ("a.jsonl.xz", lambda p: p.write_bytes(lzma.compress(_jsonl(ROWS)))),
        ("a.json", lambda p: p.write_text(json.dumps(ROWS, indent=2))),  # an Alpaca-style array, pretty-printed
        ("a.json.gz", lambda p: p.write_bytes(gzip.compress(json.dumps(ROWS).encode()))),
        ("a.json", lambda p: p.write_bytes(_jsonl(ROWS))),  # JSON Lines named .json, as many hub files are
        ("a.parquet", lambda p: pq.write_table(pa.Table.from_pylist(ROWS), p)),
        ("a.txt", lambda p: p.write_bytes(_jsonl(ROWS))),  # an unknown name: JSON Lines
        ("a.data", lambda p: p.write_bytes(gzip.compress(_jsonl(ROWS)))),  # misnamed: gzip found by its magic
        ("a.bin", lambda p: pq.write_table(pa.Table.from_pylist(ROWS), p)),  # misnamed Parquet
    ],
)
def test_every_format_reads_the_same_records(tmp_path: Path, name: str, write) -> None:
    path = tmp_path / name
    write(path)
    assert _answers(path) == EXPECTED
    assert count_units(path) == len(ROWS)


def test_a_pretty_printed_single_document_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ROWS[0], indent=2))
    assert _answers(path) == EXPECTED[:1] and count_units(path) == 1


def test_parquet_shards_in_a_folder_as_hubs_and_spark_write_them(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[3:]), root / "data" / "train-00001-of-00002.parquet")
    (root / "data" / "_SUCCESS").write_bytes(b"")
    (root / "data" / "_committed_123").write_bytes(b"{}")  # Spark's markers: hidden, not read by globs either
    (root / ".cache").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), root / ".cache" / "stale.parquet")  # hidden: not read
    (root / "README.md").write_text("# card")
    assert _answers(root) == EXPECTED
    assert _answers(tmp_path / "dataset" / "data" / "*.parquet") == EXPECTED  # a glob
    assert _answers(tmp_path / "**" / "train-*.parquet") == EXPECTED  # a recursive glob


def test_a_path_with_glob_characters_is_taken_literally(tmp_path: Path) -> None:
    folder = tmp_path / "runs[1]" / "what?"
    folder.mkdir(parents=True)
    path = folder / "a*b.jsonl"
    path.write_bytes(_jsonl(ROWS))
    assert expand_files([path], "s") == [path]
    assert _answers(path) == EXPECTED
    assert _answers(folder) == EXPECTED
    assert _answers(folder / "*.jsonl") == EXPECTED  # a glob below folders whose names hold [ and ?


def test_a_file_named_by_a_path_and_a_glob_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(_jsonl(ROWS))
    assert expand_files([tmp_path / "a.jsonl", tmp_path / "*.jsonl"], "s") == [tmp_path / "a.jsonl"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing.jsonl", "file not found"),
        ("*.parquet", "no file matches"),
        ("empty_dir", "holds no supported file"),
    ],
)
def test_entries_that_stand_for_nothing_name_themselves(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.txt").write_text("x")
    with pytest.raises(SourceFileError, match=message) as err:
        expand_files([tmp_path / entry], "my_source")
    assert "my_source" in str(err.value) and str(tmp_path) in str(err.value)


def test_a_truncated_archive_is_a_file_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl(ROWS * 50))[:-40])
    with pytest.raises(SourceFileError, match=r"cut\.jsonl\.gz"):
        read_source("s", "g", "qa_with_think", [path])


def test_a_corrupt_parquet_file_is_a_file_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(SourceFileError, match=r"bad\.parquet"):
        read_source("s", "g", "qa_with_think", [path])


def test_lines_are_read_with_a_size_cap_not_whole(tmp_path: Path) -> None:
    """A 30 MB line comes back as a short marker: it is never held whole."""
    path = tmp_path / "big.jsonl"
    big = json.dumps({"question": "q", "answer": "x" * 30_000_000}).encode()
    path.write_bytes(_jsonl(ROWS[:1]) + big + b"\n" + _jsonl(ROWS[1:2]))
    units = [u for batch in iter_units(path, "s", max_bytes=1 << 20) for u in batch]
    assert [u.position for u in units] == [1, 2, 3]
    assert len(units[1].raw) < 300
    read = read_source("s", "g", "qa_with_think", [path], max_bytes=1 << 20)
    assert len(read.records) == 2 and "30,000,0" in read.quarantined[0].reason


def test_split_name_and_sniff(tmp_path: Path) -> None:
    assert split_name("New-Proofs.JSONL.GZ") == ("New-Proofs", ".jsonl", ".gz")
    assert split_name("part-0.parquet") == ("part-0", ".parquet", None)
    assert split_name("notes.txt") == ("notes.txt", None, None)
    (tmp_path / "x.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"{}\n"))
    assert sniff(tmp_path / "x.jsonl.zst") == ("jsonl", "zst")

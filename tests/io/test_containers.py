"""Containers found by content and named (issue 21 item 3; issue 23 items 3 and 5): JSON Lines whose lines are
lists, JSON values one after another, a JSON array of turns, CSV/TSV, Hugging Face save_to_disk folders, Arrow
IPC, archives member by member, UTF-16/32 text, and the formats refused by their magic bytes.

The fixtures under tests/fixtures/containers/ were written by make_fixtures.py, each as its producer writes it."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from mira_dagster.io import readers
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.readers import (
    ArchiveLimits,
    SourceFileError,
    count_units,
    describe_container,
    expand_files,
    file_versions,
    iter_units,
)
from tests.helpers import read_source

FIX = Path(__file__).parents[1] / "fixtures" / "containers"
QA = [{"question": f"What is {i} times 3?", "answer": str(3 * i)} for i in range(1, 7)]


def _units(path: Path, max_bytes: int = 1 << 22) -> list:
    return [u for batch in iter_units(path, "s", max_bytes) for u in batch]


def _value(unit) -> object:
    return json.loads(unit.raw) if unit.raw is not None else unit.obj


@pytest.mark.parametrize(
    ("name", "described", "units"),
    [
        ("chat_lists.jsonl", "JSON Lines", 4),
        ("pretty_values.jsonl", "JSON values one after another", 4),
        ("compact_values.json", "JSON values one after another", 4),
        ("trajectory.json", "JSON array of turns", 1),
        ("sharegpt_one.json", "JSON array of turns", 1),
        ("records.json", "JSON array of records", 6),
        ("qa.csv", "CSV with a header", 4),
        ("qa.tsv", "TSV with a header", 4),
        ("qa_utf16.jsonl", "UTF-16 text, transcoded to UTF-8", 6),
        ("hf_dataset", "Hugging Face datasets folder (save_to_disk, 2 Arrow file(s)", 6),
        ("table.arrow", "Arrow IPC", 6),
        ("qa.tar.gz", "tar archive (read member by member), gz-compressed", 6),
        ("qa.zip", "zip archive", 6),
        ("binary.parquet", "Parquet", 3),
    ],
)
def test_each_container_is_named_and_counted(name: str, described: str, units: int) -> None:
    path = FIX / name
    assert described in describe_container(path)
    assert len(_units(path)) == units == count_units(path)


def test_a_line_holding_a_list_of_messages_is_one_unit_the_whole_list() -> None:
    path = FIX / "chat_lists.jsonl"
    got = _units(path)
    assert [u.position for u in got] == [1, 2, 3, 4]
    expected = [json.loads(line) for line in path.read_text().splitlines()]
    assert [_value(u) for u in got] == expected and all(len(v) == 5 for v in expected)


@pytest.mark.parametrize("name", ["pretty_values.jsonl", "compact_values.json"])
def test_json_values_one_after_another_are_each_a_record(tmp_path: Path, name: str) -> None:
    read = read_source("s", "g", "qa", [FIX / name])
    assert read.quarantined == []
    assert [(r.question, r.answer, r.origin_line) for r in read.records] == [
        (row["question"], row["answer"], i) for i, row in enumerate(QA[:4], 1)
    ]
    renamed = tmp_path / "values.json"  # the same content under the other name reads the same
    shutil.copy(FIX / name, renamed)
    assert [r.answer for r in read_source("s", "g", "qa", [renamed]).records] == [r["answer"] for r in QA[:4]]


def test_concatenated_values_with_a_broken_tail_keep_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps(QA[0], indent=2) + "\n" + json.dumps(QA[1], indent=2) + '\n{\n  "question": "cut')
    read = read_source("s", "g", "qa", [path])
    assert len(read.records) == 2 and [q.kind for q in read.quarantined] == ["unreadable"]
    assert "after value 2" in read.quarantined[0].reason
    assert read.lines_read == 3 == count_units(path)


def test_many_concatenated_values_are_streamed(tmp_path: Path, monkeypatch) -> None:
    """Each value is yielded as it is parsed: the first unit comes before the file is read to its end."""
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(QA[i % 6], indent=1) + "\n" for i in range(20_000)))
    batches = iter_units(path, "s", 1 << 20, batch_size=100)
    first = next(batches)
    assert [u.position for u in first] == list(range(1, 101))
    assert sum(len(b) for b in batches) + 100 == 20_000 == count_units(path)


@pytest.mark.parametrize("name", ["trajectory.json", "sharegpt_one.json"])
def test_a_json_array_of_turns_is_one_unit_holding_the_whole_array(name: str) -> None:
    (unit,) = _units(FIX / name)
    assert unit.position == 1 and unit.obj == json.loads((FIX / name).read_text())


def test_an_array_of_records_still_streams_element_by_element() -> None:
    read = read_source("s", "g", "qa", [FIX / "records.json"])
    assert [(r.answer, r.origin_line) for r in read.records] == [(row["answer"], i) for i, row in enumerate(QA, 1)]


def test_turns_are_told_from_records_by_their_keys(tmp_path: Path) -> None:
    records_with_text = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]  # no role: records
    (tmp_path / "r.json").write_text(json.dumps(records_with_text))
    assert "array of records" in describe_container(tmp_path / "r.json")
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    (tmp_path / "t.json").write_text(json.dumps(turns, indent=4))
    assert "array of turns" in describe_container(tmp_path / "t.json")
    steps = [{"thought": "look", "action": "ls", "observation": "a.py"}, {"thought": "fix", "action": "edit a.py"}]
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    assert [u.obj for u in _units(tmp_path / "steps.json")] == [steps]  # SWE-agent steps: one trajectory
    (tmp_path / "two.json").write_text(json.dumps(turns, indent=2) + "\n" + json.dumps(turns, indent=2))
    assert [u.obj for u in _units(tmp_path / "two.json")] == [turns, turns]  # two trajectories one after another


@pytest.mark.parametrize("name", ["qa.csv", "qa.tsv"])
def test_csv_and_tsv_rows_are_dicts_of_the_header_with_values_as_written(tmp_path: Path, name: str) -> None:
    read = read_source("s", "g", "qa", [FIX / name])
    assert read.quarantined == [] and [r.origin_line for r in read.records] == [1, 2, 3, 4]
    assert read.records[-1].question == 'A "quoted", comma\nand a newline?' and read.records[-1].answer == "yes, 1,000"
    unnamed = tmp_path / "table.txt"  # found by content, whatever the name
    shutil.copy(FIX / name, unnamed)
    assert "with a header" in describe_container(unnamed)
    assert [u.obj for u in _units(unnamed)] == [u.obj for u in _units(FIX / name)]


def test_csv_values_stay_strings_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("question,answer,score\nq1,007,1e3\nq2,,-0.50\n")
    assert [u.obj for u in _units(path)] == [
        {"question": "q1", "answer": "007", "score": "1e3"},
        {"question": "q2", "answer": "", "score": "-0.50"},
    ]


def test_a_csv_row_of_the_wrong_width_is_quarantined_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("question,answer\nq1,a1\nq2,a2,extra\nq3,a3\n")
    read = read_source("s", "g", "qa", [path])
    assert len(read.records) == 2 and "3 fields, the header has 2 columns" in read.quarantined[0].reason
    assert read.lines_read == 3 == count_units(path)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer,answer\nq,a,b\n")
    with pytest.raises(SourceFileError, match="names column 'answer' twice"):
        read_source("s", "g", "qa", [path])


def test_text_that_is_neither_json_nor_a_table_stays_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some words\nand more words\n")
    assert "JSON Lines" in describe_container(path)
    assert {q.kind for q in read_source("s", "g", "qa", [path]).quarantined} == {"invalid JSON"}


def test_a_hugging_face_save_to_disk_folder_reads_its_arrow_files_in_order() -> None:
    read = read_source("s", "g", "qa", [FIX / "hf_dataset"])
    assert read.quarantined == [] and [r.answer for r in read.records] == [r["answer"] for r in QA]
    assert expand_files([FIX / "hf_dataset"], "s") == [FIX / "hf_dataset"]  # the folder, not its .json files


def test_a_dataset_dict_folder_reads_every_split_and_not_its_metadata() -> None:
    files = expand_files([FIX / "hf_dict"], "s")
    assert files == [FIX / "hf_dict" / "test", FIX / "hf_dict" / "train"]
    read = read_source("s", "g", "qa", [FIX / "hf_dict"])
    assert sorted(r.answer for r in read.records) == sorted(r["answer"] for r in QA) and read.quarantined == []


def test_a_hugging_face_folder_changes_its_fingerprint_when_a_data_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(FIX / "hf_dataset", folder)
    before = file_versions([folder])
    data = folder / "data-00001-of-00002.arrow"
    data.write_bytes(data.read_bytes() + b"\x00" * 8)
    assert file_versions([folder]) != before


def test_a_state_json_naming_a_file_outside_its_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(FIX / "hf_dataset", folder)
    (tmp_path / "secret.arrow").write_bytes((folder / "data-00000-of-00002.arrow").read_bytes())
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": "../secret.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(SourceFileError, match="not a file name in the folder"):
        read_source("s", "g", "qa", [folder])


def test_an_arrow_ipc_file_and_binary_text_columns_are_read_as_text() -> None:
    assert [r.answer for r in read_source("s", "g", "qa", [FIX / "table.arrow"]).records] == [r["answer"] for r in QA]
    read = read_source("s", "g", "qa", [FIX / "binary.parquet"])
    assert [r.answer for r in read.records] == ["3", "6"]  # bytes decoded as UTF-8, not "empty field"
    (bad,) = read.quarantined
    assert bad.kind == "unreadable" and "column 'answer' holds bytes that are not UTF-8 text" in bad.reason


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-be", "utf-8-sig"])
def test_utf16_and_utf32_text_is_read(tmp_path: Path, encoding: str) -> None:
    text = "".join(
        json.dumps({"question": "Qu'est-ce que é?", "answer": str(i)}, ensure_ascii=False) + "\n" for i in range(3)
    )
    path = tmp_path / "u.jsonl"
    data = text.encode(encoding)
    if encoding == "utf-32-be":
        data = b"\x00\x00\xfe\xff" + data  # the big-endian UTF-32 BOM
    path.write_bytes(data)
    read = read_source("s", "g", "qa", [path])
    assert [r.answer for r in read.records] == ["0", "1", "2"] and read.quarantined == []
    assert read.records[0].question == "Qu'est-ce que é?"


@pytest.mark.parametrize("name", ["qa.tar.gz", "qa.zip"])
def test_archives_are_read_member_by_member_each_named_in_the_origin(name: str) -> None:
    read = read_source("s", "g", "qa", [FIX / name])
    assert read.quarantined == [] and [r.answer for r in read.records] == [r["answer"] for r in QA]
    assert [(r.origin_file, r.origin_line) for r in read.records] == [
        *((f"{name}!/part1.jsonl", i) for i in (1, 2, 3)),
        *((f"{name}!/sub/part2.jsonl", i) for i in (1, 2, 3)),
    ]


def _tar(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())
    return path


def test_a_plain_tar_named_jsonl_is_read_as_an_archive_not_as_text(tmp_path: Path) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in QA[:3]).encode()
    path = _tar(tmp_path / "misnamed.jsonl", {"a.jsonl": lines, "b.jsonl": lines.replace(b"times", b"by")})
    read = read_source("s", "g", "qa", [path])
    assert len(read.records) == 6 and read.quarantined == []  # no tar header glued to a first record


def test_unreadable_members_are_one_unit_each_naming_why(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        good = (json.dumps(QA[0]) + "\n").encode()
        info = tarfile.TarInfo("good.jsonl")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        link = tarfile.TarInfo("key.jsonl")
        link.type, link.linkname = tarfile.SYMTYPE, "/home/user/.ssh/id_ed25519"
        tf.addfile(link)
        inner = (FIX / "qa.zip").read_bytes()
        nested = tarfile.TarInfo("inner.zip")
        nested.size = len(inner)
        tf.addfile(nested, io.BytesIO(inner))
        lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 10\n"
        pointer = tarfile.TarInfo("big.jsonl")
        pointer.size = len(lfs)
        tf.addfile(pointer, io.BytesIO(lfs))
    path = tmp_path / "mixed.tar"
    path.write_bytes(buf.getvalue())
    read = read_source("s", "g", "qa", [path])
    assert len(read.records) == 1
    reasons = {q.origin_file: q.reason for q in read.quarantined}
    assert "is a link inside the archive" in reasons["mixed.tar!/key.jsonl"]
    assert "itself a zip archive" in reasons["mixed.tar!/inner.zip"]
    assert "git-LFS pointer" in reasons["mixed.tar!/big.jsonl"]
    assert read.lines_read == 4 == count_units(path)


def test_a_zip_bomb_is_refused_in_one_line_before_it_is_unpacked(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.jsonl", b"\n" * (64 << 20))  # 64 MiB of blank lines, 64 KiB compressed
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(readers, "ARCHIVE_LIMITS", ArchiveLimits(max_member_bytes=8 << 20))
    with pytest.raises(SourceFileError, match=r"zeros\.jsonl unpacks to more than 8,388,608 bytes") as err:
        read_source("s", "g", "qa", [path])
    assert "\n" not in str(err.value)
    monkeypatch.setattr(readers, "ARCHIVE_LIMITS", ArchiveLimits(max_total_bytes=8 << 20))
    with pytest.raises(SourceFileError, match="archive unpacks to more than 8,388,608 bytes"):
        read_source("s", "g", "qa", [path])
    # by default: past the floor, no more than 200 times the archive's own size (here 64 MiB from 64 KiB)
    monkeypatch.setattr(readers, "ARCHIVE_LIMITS", ArchiveLimits(ratio_floor_bytes=1 << 20))
    with pytest.raises(SourceFileError, match="200 times its size: a zip bomb"):
        read_source("s", "g", "qa", [path])


def test_the_member_count_is_capped(tmp_path: Path, monkeypatch) -> None:
    path = _tar(tmp_path / "many.tar", {f"m{i}.jsonl": b"{}\n" for i in range(5)})
    monkeypatch.setattr(readers, "ARCHIVE_LIMITS", ArchiveLimits(max_members=3))
    with pytest.raises(SourceFileError, match="more than 3 members"):
        read_source("s", "g", "qa", [path])


def test_members_are_unpacked_to_a_private_folder_removed_after_reading(tmp_path: Path, monkeypatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(readers.tempfile, "tempdir", str(scratch))
    assert len(read_source("s", "g", "qa", [FIX / "qa.tar.gz"]).records) == 6
    assert list(scratch.iterdir()) == []


# Issue 23 item 5: the real cause, whatever the extension.
def test_a_git_lfs_pointer_is_named_whatever_its_name(tmp_path: Path) -> None:
    for name in ("data.jsonl", "data.parquet", "data.csv", "data"):
        path = tmp_path / name
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 132\n")
        with pytest.raises(SourceFileError, match="git-LFS pointer, not the data: run git lfs pull"):
            read_source("s", "g", "qa", [path])


@pytest.mark.parametrize(
    ("magic", "what"),
    [
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "7-Zip archive"),
        (b"Rar!\x1a\x07\x01\x00", "RAR archive"),
        (b"SQLite format 3\x00", "SQLite database"),
        (b"\x80\x04\x95\x10\x00", "Python pickle"),
    ],
)
def test_formats_we_do_not_read_are_named_by_their_magic_bytes(tmp_path: Path, magic: bytes, what: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(magic + b"\x00" * 64)
    with pytest.raises(SourceFileError, match=what) as err:
        read_source("s", "g", "qa", [path])
    assert "invalid JSON" not in str(err.value) and "\n" not in str(err.value)


def test_zip_and_arrow_named_jsonl_are_read_by_their_magic_bytes(tmp_path: Path) -> None:
    shutil.copy(FIX / "qa.zip", tmp_path / "a.jsonl")
    shutil.copy(FIX / "table.arrow", tmp_path / "b.jsonl")
    stream = tmp_path / "c.jsonl"  # an Arrow IPC stream, as a single `.arrow` file of datasets
    shutil.copy(FIX / "hf_dataset" / "data-00000-of-00002.arrow", stream)
    for path, n in ((tmp_path / "a.jsonl", 6), (tmp_path / "b.jsonl", 6), (stream, 3)):
        read = read_source("s", "g", "qa", [path])
        assert len(read.records) == n and read.quarantined == []


def test_an_arrow_schema_of_nested_rows_keeps_its_values(tmp_path: Path) -> None:
    table = pa.table({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    path = tmp_path / "m.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (unit,) = _units(path)
    assert unit.obj == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def test_a_document_whose_inner_lines_look_like_json_lines_is_still_one_value(tmp_path: Path) -> None:
    """`{"messages": [` then one compact message per line: the last message line parses alone, but the first value
    runs over every line, so the file is one value, not JSON Lines."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = tmp_path / "one.jsonl"
    path.write_text('{"messages": [\n' + ",\n".join(json.dumps(t) for t in turns) + "\n]}\n")
    assert "JSON values" in describe_container(path)
    assert [u.obj for u in _units(path)] == [{"messages": turns}]


def test_a_big_archive_of_ordinary_text_is_within_the_ratio(tmp_path: Path, monkeypatch) -> None:
    """Distinct JSON lines compress far below the ratio: a realistic archive is read under a tight floor."""
    lines = "".join(
        json.dumps({"question": f"What is {i} times {i * 7}?", "answer": str(i * i * 7)}) + "\n" for i in range(50_000)
    )
    path = _tar(tmp_path / "big.tar.gz", {"qa.jsonl": lines.encode()}, compress=True)
    monkeypatch.setattr(readers, "ARCHIVE_LIMITS", ArchiveLimits(ratio_floor_bytes=1 << 20))
    assert count_units(path) == 50_000


def test_a_csv_field_over_the_size_limit_fails_the_file_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("question,answer\nq1,a1\nq2," + "x" * (2 << 20) + "\n")
    with pytest.raises(SourceFileError, match="CSV row 2 cannot be read: field larger than field limit"):
        read_source("s", "g", "qa", [path], max_bytes=1 << 20)


def test_the_ingest_names_each_files_container() -> None:
    ingest = SourceIngest("s", "g", "qa", [FIX / "qa.csv", FIX / "qa.tar.gz", FIX / "hf_dataset"])
    list(ingest.batches())
    assert ingest.containers == {
        "qa.csv": "CSV with a header (each row one unit)",
        "qa.tar.gz": "tar archive (read member by member), gz-compressed",
        "hf_dataset": "Hugging Face datasets folder (save_to_disk, 2 Arrow file(s); each row a unit)",
    }

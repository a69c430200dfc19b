"""Watched folders: every supported format becomes a source; symlinks, loops and odd entries never break loading
and never let text from outside the folder in."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mira_dagster.io.registry import load_config

LINE = json.dumps({"question": "q?", "answer": "a"}) + "\n"


def _registry(tmp_path: Path, folder: Path) -> Path:
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        json.dumps(
            {
                "groups": {"g": {"family": "qa", "student_model": "m"}},
                "sources": {},
                "watch": {"g": str(folder)},
            }
        )
    )
    return cfg


def test_every_supported_format_is_a_source(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "Plain-One.jsonl").write_text(LINE)
    (inbox / "zipped.jsonl.gz").write_bytes(gzip.compress(LINE.encode()))
    (inbox / "array.json").write_text("[" + LINE + "]")
    pq.write_table(pa.Table.from_pylist([json.loads(LINE)]), inbox / "table.parquet")
    (inbox / "notes.txt").write_text("not data")  # another format: ignored, no word
    (inbox / ".partial.jsonl").write_text(LINE)  # hidden (a download in progress): ignored
    (inbox / "shards.parquet").mkdir()  # a folder: not a regular file
    cfg = load_config(_registry(tmp_path, inbox))
    assert sorted(cfg.sources) == ["array", "plain_one", "table", "zipped"]
    assert any("shards.parquet" in r and "not a regular file" in r for r in cfg.rejected_files)


def test_symlinks_out_of_the_folder_loops_and_dangling_links_are_skipped(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.jsonl").write_text(LINE)
    os.symlink("/proc/self/environ", inbox / "secrets.jsonl")  # would put the environment into excerpts
    outside = tmp_path / "outside.jsonl"
    outside.write_text(LINE)
    os.symlink(outside, inbox / "outside.jsonl")
    os.symlink(inbox / "loop_b.jsonl", inbox / "loop_a.jsonl")
    os.symlink(inbox / "loop_a.jsonl", inbox / "loop_b.jsonl")
    os.symlink(tmp_path / "gone.jsonl", inbox / "dangling.jsonl")
    os.symlink(inbox / "good.jsonl", inbox / "alias.jsonl")  # inside the folder: allowed
    cfg = load_config(_registry(tmp_path, inbox))
    assert sorted(cfg.sources) == ["alias", "good"]
    rejected = "\n".join(cfg.rejected_files)
    for name in ("secrets.jsonl", "outside.jsonl", "loop_a.jsonl", "loop_b.jsonl", "dangling.jsonl"):
        assert name in rejected
    assert "outside the watched folder" in rejected


def test_definitions_load_with_a_looping_watched_folder(tmp_path: Path, monkeypatch) -> None:
    """The code location must load whatever sits in a watched folder."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.symlink(inbox / "x.jsonl", inbox / "x.jsonl")  # a link to itself
    cfg = _registry(tmp_path, inbox)
    monkeypatch.setenv("MIRA_CONFIG", str(cfg))
    loaded = load_config(cfg)
    assert loaded.sources == {} and "x.jsonl" in loaded.rejected_files[0]


def test_names_that_cannot_be_source_names_get_derived_ones(tmp_path: Path) -> None:
    """`数据.jsonl` or `2024.jsonl` becomes a source under a derived valid name, never silently skipped."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("数据.jsonl", "2024.jsonl", "Ünïcode-2.jsonl", "x" * 80 + ".jsonl"):
        (inbox / name).write_text(LINE)
    cfg = load_config(_registry(tmp_path, inbox))
    assert cfg.rejected_files == []
    assert len(cfg.sources) == 4
    by_file = {src.files[0].name: name for name, src in cfg.sources.items()}
    assert by_file["数据.jsonl"].startswith("f_") and len(by_file["数据.jsonl"]) == 10
    assert by_file["2024.jsonl"].startswith("f_2024_")
    assert by_file["Ünïcode-2.jsonl"].startswith("unicode_2_")
    assert len(by_file["x" * 80 + ".jsonl"]) <= 64
    assert load_config(_registry(tmp_path, inbox)).source_names() == cfg.source_names()  # stable


def test_two_files_mapping_to_one_name_are_both_named(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "Math-QA.jsonl").write_text(LINE)
    (inbox / "math qa.jsonl").write_text(LINE)
    (inbox / "other.jsonl").write_text(LINE)
    cfg = load_config(_registry(tmp_path, inbox))
    assert sorted(cfg.sources) == ["other"]
    assert len(cfg.rejected_files) == 2
    for line in cfg.rejected_files:
        assert "'Math-QA.jsonl'" in line and "'math qa.jsonl'" in line and "'math_qa'" in line


def test_mira_run_reports_skipped_files_and_fails(tmp_path: Path, capsys) -> None:
    from mira_dagster.cli import _report_skipped

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "Math-QA.jsonl").write_text(LINE)
    (inbox / "math_qa.jsonl").write_text(LINE)
    assert _report_skipped(load_config(_registry(tmp_path, inbox))) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("mira: SKIPPED ") for line in err) == 2
    (inbox / "math_qa.jsonl").unlink()
    assert _report_skipped(load_config(_registry(tmp_path, inbox))) == 0

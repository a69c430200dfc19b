"""EarlierRecords: which of a batch's ids an earlier partition holds, read from its Parquet by DuckDB."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mira_dagster.io.earlier import EarlierRecords


def test_answers_the_held_ids_with_their_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    ids = [f"{i:016x}" for i in range(100_000)]
    pl.DataFrame(
        {"record_id": ids, "origin_file": ["a.jsonl"] * 50_000 + ["b.jsonl"] * 50_000, "origin_line": range(1, 100_001)}
    ).write_parquet(path, row_group_size=10_000)
    earlier = EarlierRecords(path)
    try:
        asked = [ids[0], ids[60_000], "not-there", ids[99_999], ids[0]]
        assert earlier(asked) == {ids[0]: "a.jsonl:1", ids[60_000]: "b.jsonl:60001", ids[99_999]: "b.jsonl:100000"}
        assert earlier(["nothing", "held"]) == {}
        assert earlier([]) == {}
    finally:
        earlier.close()

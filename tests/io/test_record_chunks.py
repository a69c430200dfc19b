"""Scoring's read of a source (io/sending.record_chunks): chunks of `size` ids for the reply cache's lookup, their
rows read TEXT_BATCH_ROWS at a time; every record once, in stored order, the same rows DuckDB's scan of the
partition gives, with and without the teacher's id filter, across row groups and whatever part of a chunk's rows
its reader takes."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from mira_dagster.core.records import RECORD_SCHEMA
from mira_dagster.io import sending
from mira_dagster.io.sending import record_chunks
from mira_dagster.io.store import Store
from tests.helpers import raw_records_frame

N = 2_600


def _records(source: str, n: int) -> pl.DataFrame:
    return raw_records_frame(source, n, lambda i: f"{(i * 7919) % 10_007:05d}-{source}")  # stored order is not id order


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "home")
    store.write("raw_records", _records("s", N), "s")
    store.write("raw_records", _records("t", 5), "t")
    path = tmp_path / "home" / "tables" / "raw_records" / "s.parquet"
    pq.write_table(pq.read_table(path), path, row_group_size=700)  # several row groups, not batch-aligned
    return store


def _duckdb(store: Store, source: str) -> pl.DataFrame:
    """The rows as the scoring step read them before (DuckDB over the catalogue's view, stored order)."""
    sql = f"SELECT {', '.join(RECORD_SCHEMA)} FROM raw_records WHERE source = $source"
    return store.query_sql(sql, source=source)


def _read(chunks: object) -> list[tuple[list[str], list[pl.DataFrame]]]:
    """Each chunk's ids and its frames, taken before the next chunk is read (as the scoring loop does)."""
    return [(chunk.ids, list(chunk.frames)) for chunk in chunks]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("size", "text_rows"), [(7, 3), (333, 256), (333, 1_024), (1_024, 1_024), (2_600, 256), (20_000, 1_024)]
)
def test_chunks_hold_every_record_once_in_stored_order(
    store: Store, size: int, text_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sending, "TEXT_BATCH_ROWS", text_rows)
    got, frames = [], []
    chunks = _read(record_chunks(store, "s", size))
    for ids, parts in chunks:
        assert 0 < len(ids) <= size
        assert all(0 < df.height <= text_rows for df in parts)
        got += ids
        frames += parts
    assert [len(ids) for ids, _ in chunks[:-1]] == [size] * (len(chunks) - 1)
    rows = pl.concat(frames)
    assert rows["record_id"].to_list() == got
    assert rows.schema == pl.Schema(RECORD_SCHEMA)
    assert rows.equals(_duckdb(store, "s"))


def test_the_teacher_filter_reads_only_the_wanted_rows(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "TEXT_BATCH_ROWS", 64)
    every = _duckdb(store, "s")
    wanted = set(every["record_id"].to_list()[::7]) | {"no-such-id"}
    chunks = _read(record_chunks(store, "s", 100, only=wanted))
    rows = pl.concat(df for _, parts in chunks for df in parts)
    assert rows.equals(every.filter(pl.col("record_id").is_in(wanted)))
    assert [len(ids) for ids, _ in chunks] == [100, 100, 100, 72]


def test_rows_a_reader_leaves_are_passed_over(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that takes only the ids (the cost plan's count) or part of a chunk's rows still gets the next
    chunk's own rows."""
    monkeypatch.setattr(sending, "TEXT_BATCH_ROWS", 100)
    every = _duckdb(store, "s")
    taken = []
    for i, chunk in enumerate(record_chunks(store, "s", 500)):
        if i % 3 == 1:
            continue  # none taken
        frames = iter(chunk.frames)
        first = next(frames)
        assert first["record_id"].to_list() == chunk.ids[: first.height]
        taken.append(first if i % 3 == 2 else pl.concat([first, *frames]))
    expect = [every.slice(i * 500, 100 if i % 3 == 2 else 500) for i in range(6) if i % 3 != 1]
    assert pl.concat(taken).equals(pl.concat(expect))


def test_a_chunks_rows_are_not_handed_out_after_the_next_chunk(store: Store) -> None:
    chunks = record_chunks(store, "s", 500)
    first = next(chunks)
    next(chunks)
    with pytest.raises(RuntimeError, match="after the next chunk"):
        next(iter(first.frames))


def test_a_source_without_a_partition_has_no_chunks(store: Store) -> None:
    assert list(record_chunks(store, "never-ingested", 10)) == []
    small = _read(record_chunks(store, "t", 10))
    assert [len(ids) for ids, _ in small] == [5]
    assert pl.concat(small[0][1]).equals(_duckdb(store, "t"))
    ones = _read(record_chunks(store, "t", 1))
    assert [ids for ids, _ in ones] == [[i] for i in _duckdb(store, "t")["record_id"]]
    assert pl.concat(df for _, parts in ones for df in parts).equals(_duckdb(store, "t"))


def test_a_partition_written_before_a_column_existed_reads_it_as_null(tmp_path: Path) -> None:
    """An older raw_records partition without a later column (here `layout`) is read with that column null, as
    DuckDB's scan of the table did, instead of failing the scoring step."""
    store = Store(tmp_path / "home")
    store.write("raw_records", _records("s", 10).drop("layout"), "s")
    [(ids, frames)] = _read(record_chunks(store, "s", 100))
    rows = pl.concat(frames)
    assert rows.columns == list(RECORD_SCHEMA) and rows["layout"].null_count() == 10 and len(ids) == 10

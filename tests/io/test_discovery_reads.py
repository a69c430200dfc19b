"""Discovery's reads of raw_records without a structure per record: the hash sample drawn by DuckDB
(sql/hash_sample.sql) is core/sampling.hash_sample's, same ids, same order; records_of reads the text of exactly the
wanted records, across row groups."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mira_dagster.core.records import RECORD_SCHEMA
from mira_dagster.core.sampling import hash_sample
from mira_dagster.io.sending import records_of, sample_records, source_counts
from mira_dagster.io.store import Store
from tests.helpers import raw_records_frame

# file order is not name order: "a-b.parquet" < "a.parquet" ('-' sorts before '.'), while "a" < "a-b"
SOURCES = {"a": 7, "a-b": 300, "B": 50, "z": 2_500}


def _records(source: str, n: int) -> pl.DataFrame:
    return raw_records_frame(source, n)


def _store(tmp_path: Path) -> tuple[Store, dict[str, pl.DataFrame]]:
    store = Store(tmp_path / "home")
    frames = {s: _records(s, n) for s, n in SOURCES.items()}
    for source, df in frames.items():
        store.write("raw_records", df, source)
    return store, frames


def _python_sample(frames: dict[str, pl.DataFrame], order: list[str], n: int, seed: int, purpose: str) -> pl.DataFrame:
    """The rule as it was drawn in Python: the ids of every source, each source's smallest hashes first."""
    ids = pl.concat(frames[s].select("source", "record_id") for s in order)
    return pl.concat(hash_sample(part, n, seed, purpose) for _, part in ids.group_by("source", maintain_order=True))


def test_the_duckdb_sample_is_the_hash_sample_rule(tmp_path: Path) -> None:
    store, frames = _store(tmp_path)
    file_order = ["B", "a-b", "a", "z"]
    for n, seed, purpose in ((3, 0, "embed"), (40, 7, "judge"), (10_000, 1, "judge")):
        got = sample_records(store, None, n, seed, purpose)
        want = _python_sample(frames, file_order, n, seed, purpose)
        assert got.select("source", "record_id").equals(want), (n, seed, purpose)
        assert got.columns == list(RECORD_SCHEMA)
    unit = sample_records(store, ["z", "a"], 5, 0, "judge")
    assert unit.select("source", "record_id").equals(_python_sample(frames, ["a", "z"], 5, 0, "judge"))


def test_counts_and_records_of_across_row_groups(tmp_path: Path) -> None:
    store, frames = _store(tmp_path)
    assert source_counts(store) == SOURCES
    assert source_counts(store, ["a", "nope"]) == {"a": 7}
    # several row groups in one partition: the reader goes through them one at a time
    path = store.partition_path("raw_records", "z")
    pq.write_table(frames["z"].to_arrow(), path, row_group_size=128)
    assert pq.ParquetFile(path).num_row_groups > 10
    wanted = pl.DataFrame(
        {"source": ["z", "z", "a", "z", "gone"], "record_id": ["z-02499-id", "z-00000-id", "a-00003-id", "x", "y"]}
    ).with_row_index("_order")
    got = records_of(store, wanted).sort("_order")
    assert got["_order"].to_list() == [0, 1, 2]
    full = pl.concat(frames.values()).select(list(RECORD_SCHEMA))
    expected = full.join(wanted, on=["source", "record_id"]).sort("_order")
    assert got.equals(expected)

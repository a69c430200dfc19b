"""Store.materialize: a named SQL's result written by DuckDB's COPY as a table partition, atomically; DuckDB's
memory limit and spill folder; Store.stream for results read in batches."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from mira_dagster.io.store import Store
from mira_dagster.io.tables import UnreadableTable


def _store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "home", memory_limit="512MB", temp_directory=tmp_path / "spill")
    s.write("student_scores", pl.DataFrame({"source": ["a", "a", "b"], "n_tokens": [3, 5, 7]}), "a")
    return s


def test_connect_sets_memory_limit_and_spill_folder(tmp_path: Path) -> None:
    s = _store(tmp_path)
    with s.connect() as con:
        settings = con.sql("SELECT current_setting('memory_limit'), current_setting('temp_directory')")
        limit, spill = settings.fetchall()[0]
    assert limit == "488.2 MiB"  # 512 MB as DuckDB prints it
    assert spill == str(tmp_path / "spill")


def test_materialize_writes_the_partition_and_refreshes_views(tmp_path: Path, monkeypatch) -> None:
    s = _store(tmp_path)
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "tokens.sql").write_text(
        "-- a comment on the last line must not swallow COPY's closing parenthesis\n"
        "SELECT source, sum(n_tokens) AS tokens FROM student_scores WHERE n_tokens > $min GROUP BY source "
        "ORDER BY source -- trailing comment",
        encoding="utf-8",
    )
    monkeypatch.setattr("mira_dagster.io.tables.SQL_DIR", sql)
    assert s.materialize("tokens", "tokens", "p1", min=4) == 2
    assert s.read("tokens", "p1").to_dicts() == [{"source": "a", "tokens": 5}, {"source": "b", "tokens": 7}]
    assert s.query_sql("SELECT count(*) FROM tokens").item() == 2  # the new table has a view at once
    # an empty result with keep_empty=False leaves the old partition as it was, and no staging file behind
    before = s.partition_path("tokens", "p1").read_bytes()
    assert s.materialize("tokens", "tokens", "p1", keep_empty=False, min=100) == 0
    assert s.partition_path("tokens", "p1").read_bytes() == before
    assert [p.name for p in s.partition_path("tokens", "p1").parent.iterdir()] == ["p1.parquet"]
    # by default an empty result replaces it
    assert s.materialize("tokens", "tokens", "p1", min=100) == 0
    assert s.read("tokens", "p1").height == 0


def test_stream_yields_batches(tmp_path: Path, monkeypatch) -> None:
    s = _store(tmp_path)
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "rows.sql").write_text("SELECT range AS i FROM range($n) ORDER BY i", encoding="utf-8")
    monkeypatch.setattr("mira_dagster.io.tables.SQL_DIR", sql)
    batches = list(s.stream("rows", batch_rows=1000, n=2500))
    assert sum(b.num_rows for b in batches) == 2500 and max(b.num_rows for b in batches) <= 1000
    assert pl.concat([pl.from_arrow(b) for b in batches])["i"].to_list() == list(range(2500))


def test_a_table_with_an_unreadable_file_fails_only_the_queries_that_read_it(tmp_path: Path) -> None:
    """A partition file cut short: the other tables' views, in a connection and in the catalogue, are there; a
    query of that table fails naming the file (before, every connection and every catalogue refresh failed)."""
    s = _store(tmp_path)
    s.write("raw_records", pl.DataFrame({"source": ["a"], "n_tokens": [1]}), "a")
    cut = s.home / "tables" / "student_scores" / "a.parquet"
    cut.write_bytes(cut.read_bytes()[:20])
    assert s.refresh_catalog()
    with duckdb.connect(str(s.catalog_path), read_only=True) as con:
        views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert "raw_records" in views and "student_scores" not in views
    assert s.query_sql("SELECT count(*) AS n FROM raw_records")["n"].to_list() == [1]
    with pytest.raises(UnreadableTable, match=r"table student_scores cannot be read: .*a\.parquet") as info:
        s.query_sql("SELECT * FROM student_scores")
    assert "\n" not in str(info.value)


def test_a_catalogue_file_that_is_no_database_is_set_aside_and_made_again(tmp_path: Path) -> None:
    """Before, refresh_catalog took DuckDB's "not a valid DuckDB database file" for a lock: every write waited its
    20 attempts (about 16 s), and the catalogue stayed broken for good."""
    s = _store(tmp_path)
    s.catalog_path.write_bytes(b"\x00garbage" * 600)
    assert s.refresh_catalog()
    with duckdb.connect(str(s.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM student_scores").fetchall() == [(3,)]
    aside = list(s.catalog_path.parent.glob("mira.duckdb.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x00garbage" * 600  # kept, not deleted

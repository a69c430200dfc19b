"""A growing file: lines appended since the last ingest are read alone, and the partition holds the whole source
as a whole read would (same records, same duplicates, counts that reconcile); any other change is a whole read."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from mira_dagster.io.readers import append_offsets, file_state
from tests.defs.test_ingest_asset import GOOD, _check, _ingested_once, _materialize

MORE = [{"question": f"What is {i} cubed?", "thinking": "multiply twice", "answer": i**3} for i in range(1, 11)]


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _meta(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey("raw_records"))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_appended_lines_are_read_alone(tmp_path: Path) -> None:
    path, mira, instance, stored = _ingested_once(tmp_path, "a.jsonl", _lines(GOOD))
    first = pl.read_parquet(stored)
    with path.open("ab") as fh:  # ten new records, one repeat of an old one, one broken line
        fh.write(_lines(MORE) + _lines(GOOD[:1]) + b"{broken\n")
    result = _materialize(mira, instance, "a")
    assert result.success and _check(result, "lines_reconcile").passed
    meta = _meta(instance)
    assert meta["ingest_mode"] == "append: 12 new units"
    assert meta["lines_read"] == 32 and meta["dagster/row_count"] == 30 and meta["quarantined"] == 2
    assert meta["quarantine_reasons"] == {"duplicate": 1, "invalid JSON": 1}
    after = pl.read_parquet(stored)
    assert after.head(20).equals(first)  # the earlier records, as they were
    assert after["origin_line"].to_list() == list(range(1, 31))  # numbered on from the earlier lines
    quarantine = pl.read_parquet(tmp_path / "home" / "tables" / "quarantine" / "a.parquet")
    assert sorted(quarantine["origin_line"].to_list()) == [31, 32]
    assert "duplicate of a.jsonl:1" in quarantine.filter(pl.col("kind") == "duplicate")["reason"][0]


def test_an_edited_file_is_read_whole(tmp_path: Path) -> None:
    path, mira, instance, stored = _ingested_once(tmp_path, "a.jsonl", _lines(GOOD))
    path.write_bytes(_lines(GOOD[1:] + MORE))  # the first line removed, ten added: not an append
    assert _materialize(mira, instance, "a").success
    assert _meta(instance)["ingest_mode"] == "whole read"
    assert pl.read_parquet(stored).height == 29


def test_append_offsets_only_for_growth(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_lines(GOOD))
    b.write_bytes(_lines(MORE))
    states = {str(a): file_state(a), str(b): file_state(b)}
    units = {str(a): 20, str(b): 10}
    assert append_offsets([a, b], states, units) is None  # nothing new
    with a.open("ab") as fh:
        fh.write(_lines(MORE[:1]))
    assert append_offsets([a, b], states, units) == {a: (states[str(a)]["size"], 20), b: (b.stat().st_size, 10)}
    assert append_offsets([a], states, units) is None  # b is gone: its records must go
    b.write_bytes(_lines(MORE)[:-1])  # a cut last line: b shrank
    assert append_offsets([a, b], states, units) is None
    assert not file_state(b)["appendable"]  # ...and ends inside a line: a later append cannot be read alone

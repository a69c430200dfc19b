"""Discovery reads the records' text columns only: never `original` (the producer's whole value, often the
largest column), and the emptiness check of a unit reads ids, not rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mira_dagster.core.records import RECORD_SCHEMA
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.sending import records_of as _records_of
from mira_dagster.io.store import Store

HELDOUT = Path(__file__).parents[1] / "fixtures" / "heldout"


def test_records_of_selects_the_text_columns_not_the_original(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    ingest = SourceIngest("s", "g", "qa_with_think", [HELDOUT / "slimorca.jsonl"])
    records = pl.concat([r for r, _ in ingest.batches()])
    assert records["original"].null_count() == 0
    store.write("raw_records", records, "s")
    got = _records_of(store, records.select("source", "record_id").head(3))
    assert got.columns == list(RECORD_SCHEMA) and got.height == 3

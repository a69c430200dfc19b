"""Cross-source duplicates and the run summary in DuckDB, on small hand-made tables."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mira_dagster.io.store import Store
from tests.io.test_sql import scores


def _raw(source: str, ids: list[str], tokens: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"record_id": ids, "source": source, "group_id": "g", "n_tokens": tokens})


def _quarantine(source: str, reasons: list[str], kinds: list[str] | None = None) -> pl.DataFrame:
    cols = {"source": source, "origin_file": "f.jsonl", "origin_line": list(range(1, len(reasons) + 1))}
    if kinds is not None:
        cols["kind"] = kinds
    return pl.DataFrame({**cols, "reason": reasons, "excerpt": ""})


@pytest.fixture
def corpus(tmp_path: Path) -> Store:
    """b and c share x and y; a and c share z; `empty` has no record, only quarantined lines."""
    s = Store(tmp_path)
    tables = {
        "b": (["x", "y", "b1"], [10, 20, 30]),
        "c": (["x", "y", "z", "c1"], [10, 20, 5, 40]),
        "a": (["z", "a1"], [5, 50]),
    }
    for src, (ids, tokens) in tables.items():
        s.write("raw_records", _raw(src, ids, tokens), src)
        s.write("student_scores", scores(src, ids, {1: [1.0 * i for i in range(len(ids))]}, tokens), src)
        s.write("quarantine", _quarantine(src, []), src)
    s.write("raw_records", _raw("empty", [], []).cast({"n_tokens": pl.Int64}), "empty")
    reasons = ["duplicate of f.jsonl:1", "duplicate of f.jsonl:2", "invalid JSON: bad at column 3", "blank line"]
    s.write("quarantine", _quarantine("empty", reasons), "empty")
    mask = pl.DataFrame(
        {"source": ["a", "b", "c"], "slot": 1, "masked": False, "mask_version": "v"},
        schema={"source": pl.String, "slot": pl.Int32, "masked": pl.Boolean, "mask_version": pl.String},
    )
    s.write("reliability_mask", mask)
    return s


def test_shared_records_are_one_row_owned_by_the_first_name(corpus: Store) -> None:
    agg = corpus.query("aggregated_scores", normalise="source", sources=["a", "b", "c"])
    assert agg["record_id"].n_unique() == agg.height == 6  # x, y, z, a1, b1, c1
    owner = dict(agg.select("record_id", "source").iter_rows())
    assert owner == {"x": "b", "y": "b", "z": "a", "a1": "a", "b1": "b", "c1": "c"}
    # c keeps its own record only, normalised over what it owns
    assert agg.filter(pl.col("source") == "c")["n_tokens"].to_list() == [40]
    # each budget counts each record once, under its owner: half of the distinct tokens each source owns
    corpus.write("aggregated_scores", agg)
    sel = corpus.query(
        "select_variant", variant="scores", label="MIRA-group", share=0.5, min_share=0.0, max_share=1.0, seed=0
    )
    owned = dict(agg.group_by("source").agg(pl.col("n_tokens").sum()).iter_rows())
    budgets = dict(sel.select("source", "budget_tokens").unique().iter_rows())
    assert budgets and all(b == 0.5 * owned[s] for s, b in budgets.items())  # c's one record is not nearer: none kept
    assert sum(owned.values()) == 10 + 20 + 5 + 30 + 40 + 50


def test_source_overlap_per_pair(corpus: Store) -> None:
    overlap = corpus.query("source_overlap")
    assert overlap.select("source_a", "source_b", "records_shared", "tokens_shared").rows() == [
        ("a", "c", 1, 5),
        ("b", "c", 2, 30),
    ]
    row = overlap.row(1, named=True)
    assert row["share_of_a"] == pytest.approx(30 / 60) and row["share_of_b"] == pytest.approx(30 / 75)


def test_run_summary_lists_empty_sources_reasons_and_duplicates(corpus: Store) -> None:
    corpus.write("selected_subset", pl.DataFrame({"source": ["b"], "record_id": ["x"], "n_tokens": [10]}))
    summary = {r["source"]: r for r in corpus.query("run_summary").iter_rows(named=True)}
    assert sorted(summary) == ["a", "b", "c", "empty"]
    empty = summary["empty"]
    assert (empty["records_in"], empty["quarantined"], empty["tokens_in"], empty["kept_token_share"]) == (0, 4, 0, 0)
    assert empty["top_quarantine_reason"] == "duplicate"  # two duplicates of different lines are one kind
    assert summary["a"]["top_quarantine_reason"] is None
    assert {s: r["duplicates_elsewhere"] for s, r in summary.items()} == {"a": 0, "b": 0, "c": 3, "empty": 0}
    assert summary["b"]["records_kept"] == 1 and summary["b"]["kept_token_share"] == pytest.approx(10 / 60, abs=1e-3)
    for column in ("source", "records_in", "quarantined", "records_scored", "records_with_status", "records_kept"):
        assert column in summary["a"]
    for column in ("tokens_in", "tokens_kept", "kept_token_share"):
        assert column in summary["a"]


def test_quarantine_reasons_grouped_by_kind(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.write("raw_records", _raw("a", ["r"], [1]), "a")
    s.write("student_scores", scores("a", ["r"], {1: [1.0]}), "a")
    s.write("selected_subset", pl.DataFrame({"source": ["a"], "record_id": ["r"], "n_tokens": [1]}))
    reasons = [
        "invalid JSON: Expecting value at column 3",
        "invalid JSON: Expecting value at column 17",
        "no qa layout matches keys ['a', 'b']",
        "no qa layout matches keys ['c']",
        "no qa layout matches keys ['d']",
        "record of 5,000,000 bytes is over the 4,194,304-byte limit (max_record_bytes)",
    ]
    s.write("quarantine", _quarantine("a", reasons), "a")
    assert s.query("run_summary")["top_quarantine_reason"].to_list() == ["no qa layout matches keys"]
    # a kind recorded by ingest wins over the reason's text
    s.write("quarantine", _quarantine("a", reasons, ["json", "json", "layout", "layout", "size", "size"]), "a")
    assert s.query("run_summary")["top_quarantine_reason"].to_list() == ["json"]  # ties: the first name

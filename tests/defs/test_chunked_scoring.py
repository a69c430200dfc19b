"""Scoring streams a source in chunks (pipeline.scoring_chunk_records): the tables, metadata and checks are those of an
unchunked run, and a re-run sends nothing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.registry import load_config

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS


def _chunked(small_config: Path, size: int) -> Path:
    path = small_config.with_name(f"groups_chunk{size}.yaml")
    text = small_config.read_text(encoding="utf-8")
    path.write_text(text.replace("min_heldout: 4}", f"min_heldout: 4, scoring_chunk_records: {size}}}"), "utf-8")
    assert load_config(path).pipeline.scoring_chunk_records == size
    return path


def _run(config: Path, home: Path, selection: list) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        partition_key="lean_qa",
        instance=in_process_instance(load_config(config)),
        resources={"mira": MiraResource(config_path=str(config), home=str(home))},
    )


def _table(home: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(home / "tables" / table / "lean_qa.parquet").sort("record_id")


def _meta(res: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: getattr(v, "value", v) for k, v in res.asset_materializations_for_node(asset)[0].metadata.items()}


def test_chunks_of_7_give_the_unchunked_tables_metadata_and_checks(small_config: Path, tmp_path: Path) -> None:
    whole = _run(small_config, tmp_path / "whole", [RAW, TEACHER, STUDENT])
    chunked = _run(_chunked(small_config, 7), tmp_path / "chunked", [RAW, TEACHER, STUDENT])
    for table in ("student_scores", "teacher_labels"):
        a, b = _table(tmp_path / "whole", table), _table(tmp_path / "chunked", table)
        assert a.height == (67 if table == "student_scores" else 34)
        assert a.equals(b), table  # every row and value, statuses included (row order aside)
    for asset in ("student_scores", "teacher_labels"):
        mw, mc = _meta(whole, asset), _meta(chunked, asset)
        for key in (
            "dagster/row_count",
            "status_counts",
            "requests_sent",
            "prompt_tokens",
            "completion_tokens",
            "degenerate_share",
        ):
            assert mw[key] == mc[key], (asset, key)
    assert _meta(chunked, "student_scores")["records_in"] == 67
    assert _meta(chunked, "teacher_labels")["split_counts"] == _meta(whole, "teacher_labels")["split_counts"]
    checks = chunked.get_asset_check_evaluations()
    # 2 of raw_records, 6 of each scoring asset; all pass but the non-blocking degenerate_replies, which warns on
    # the offline stand-in's templated briefs (the same brief in many records), chunked or not
    assert len(checks) == 14
    assert {c.check_name for c in checks if not c.passed} <= {"degenerate_replies"}
    reconcile = next(
        c for c in checks if c.check_name == "statuses_reconcile" and c.asset_key.path == ["student_scores"]
    )
    assert reconcile.metadata["records_in"].value == reconcile.metadata["records_with_status"].value == 67


def test_a_chunked_rerun_sends_nothing(small_config: Path, tmp_path: Path) -> None:
    config = _chunked(small_config, 7)
    assert _run(config, tmp_path / "home", [RAW, STUDENT]).success
    again = _meta(_run(config, tmp_path / "home", [STUDENT]), "student_scores")
    assert again["requests_sent"] == 0 and again["from_cache"] == 67
    assert _table(tmp_path / "home", "student_scores")["from_cache"].all()

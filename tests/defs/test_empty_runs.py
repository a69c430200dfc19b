"""An empty run never replaces good output: selected_subset, dim_reliability and reliability_mask fail with one line
and leave what an earlier run wrote byte for byte."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster import definitions as d
from mira_dagster.core.tables import SLOT_COLUMNS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.reliability import dim_reliability, reliability_mask
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.selection import aggregated_scores, selected_subset
from tests.pipeline import run_pipeline

SOURCES = ["lean_qa", "agent_openhands"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def done(small_config: Path, tmp_path: Path) -> tuple[MiraResource, dg.DagsterInstance]:
    """The small pipeline run once, successfully: an export and a mask exist."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    run_pipeline(mira, instance, SOURCES)
    return mira, instance


def _failure(res: dg.ExecuteInProcessResult, step: str) -> str:
    assert not res.success
    event = next(e for e in res.all_events if e.is_step_failure and e.step_key == step)
    text = event.step_failure_data.user_failure_data.description
    assert "\n" not in text
    return text


def _run(mira: MiraResource, instance: dg.DagsterInstance, selection: list) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        d.ALL_ASSETS, selection=selection, instance=instance, resources={"mira": mira}, raise_on_error=False
    )


def test_no_scored_record_keeps_the_previous_export(done) -> None:
    mira, instance = done
    store = mira.store()
    export, table = store.exports_dir / "selected_subset", store.partition_path("selected_subset")
    before, table_before = _snapshot(export), table.read_bytes()
    assert "manifest.json" in before
    # a run where the scorer answered nothing: every record request_error, no score
    for s in SOURCES:
        path = store.partition_path("student_scores", s)
        df = pl.read_parquet(path)
        df.with_columns(
            pl.lit("request_error").alias("status"), *(pl.lit(None, pl.Float64).alias(c) for c in SLOT_COLUMNS)
        ).write_parquet(path)
    res = _run(mira, instance, [aggregated_scores, selected_subset])
    text = _failure(res, "selected_subset")
    assert text.startswith("selected_subset: none of the 69 records has a usable score")
    assert "request_error 69" in text and "is left as it was" in text
    assert _snapshot(export) == before and table.read_bytes() == table_before


def test_empty_selection_keeps_the_previous_export(done, small_config: Path) -> None:
    mira, instance = done
    store = mira.store()
    export = store.exports_dir / "selected_subset"
    before = _snapshot(export)
    # no source may keep anything: the selection is empty
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {source_max_share: 0.0, "))
    res = _run(mira, instance, [selected_subset])
    text = _failure(res, "selected_subset")
    assert text.startswith("selected_subset: the MIRA-group selection is empty (")
    assert _snapshot(export) == before


def test_no_heldout_pair_fails_reliability_without_writing(done) -> None:
    mira, instance = done
    store = mira.store()
    rel_path, mask_path = store.partition_path("dim_reliability"), store.partition_path("reliability_mask")
    rel_before, mask_before = rel_path.read_bytes(), mask_path.read_bytes()
    # the teacher answered no held-out record
    for s in SOURCES:
        path = store.partition_path("teacher_labels", s)
        pl.read_parquet(path).filter(pl.col("split") != "heldout").write_parquet(path)
    res = _run(mira, instance, [dim_reliability, reliability_mask])
    text = _failure(res, "dim_reliability")
    assert text.startswith(
        "dim_reliability: no held-out (teacher, student) score pair in any source (teacher_labels: 0"
    )
    assert rel_path.read_bytes() == rel_before and mask_path.read_bytes() == mask_before

    # the mask on its own, over a reliability table without a single pair: fails too, the mask stays
    pl.read_parquet(rel_path).with_columns(pl.lit(0).alias("n"), pl.lit(0).alias("group_n")).write_parquet(rel_path)
    res = _run(mira, instance, [reliability_mask])
    assert _failure(res, "reliability_mask").startswith("reliability_mask: dim_reliability has no held-out")
    assert mask_path.read_bytes() == mask_before

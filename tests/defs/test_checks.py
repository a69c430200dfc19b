"""The blocking and warning checks, made to fail on purpose."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster import definitions as d
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.conftest import SAMPLE

SOURCES = ["lean_qa", "agent_openhands"]


def _prepare(mira: MiraResource, instance: dg.DagsterInstance, sources: list[str] = SOURCES) -> None:
    for s in sources:
        sel = [*d.INGEST_ASSETS, *d.SCORING_ASSETS]
        assert dg.materialize(
            d.ALL_ASSETS, selection=sel, partition_key=s, instance=instance, resources={"mira": mira}
        ).success


def _corpus(mira: MiraResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}, raise_on_error=False
    )


def test_all_checks_pass_on_the_sample(small_config: Path, tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance)
    res = _corpus(mira, instance)
    assert res.success
    evals = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
    assert evals == {"no_source_fully_masked": True, "aggregate_drift": True, "budget_met": True}


def test_fully_masked_source_blocks_downstream(small_config: Path, tmp_path: Path) -> None:
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {mask_max_mae: 0.0, "))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance)
    res = _corpus(mira, instance)
    assert not res.success
    evals = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert not evals["no_source_fully_masked"].passed
    assert instance.get_latest_materialization_event(dg.AssetKey("selected_subset")) is None


@pytest.mark.slow  # the corpus materialised twice: 10-20 s
def test_drift_warns_without_blocking(small_config: Path, tmp_path: Path) -> None:
    # a second source in group 2, so that group-normalised means can move
    data = SAMPLE / "math_think_thoughtanchors_r1distill.jsonl"
    extra = f'  reason_dpsk32: {{group: "2", format: qa_with_think, files: [{data}]}}\n'
    small_config.write_text(small_config.read_text().replace("pipeline: {", extra + "pipeline: {"))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    _prepare(mira, instance, [*SOURCES, "reason_dpsk32"])
    assert _corpus(mira, instance).success
    # the student's scores for one source move (a new scorer, say): the drift check warns, the run still succeeds
    # (held-out records untouched, so reliability and the mask stay as they were)
    store = mira.store()
    heldout = store.read("teacher_labels", "lean_qa").filter(pl.col("split") == "heldout")["record_id"]
    path = store.partition_path("student_scores", "lean_qa")
    bump = ~pl.col("record_id").is_in(heldout.to_list())
    pl.read_parquet(path).with_columns(
        [
            pl.when(bump).then((pl.col(f"a{i}") + 3).clip(0, 10)).otherwise(pl.col(f"a{i}")).alias(f"a{i}")
            for i in range(1, 16)
        ]
    ).write_parquet(path)
    small_config.write_text(small_config.read_text().replace("pipeline: {", "pipeline: {drift_threshold: 0.1, "))
    res = _corpus(mira, instance)
    assert res.success
    drift = next(e for e in res.get_asset_check_evaluations() if e.check_name == "aggregate_drift")
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN
    assert drift.metadata["moved"].value

"""The schedule that re-runs missing and stale source partitions, on a real (temporary) instance."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mira_dagster import definitions as d
from mira_dagster.defs.automation import refresh_sources_job, stale_run_requests, stale_sources
from mira_dagster.defs.resources import MiraResource


def _materialize(mira: MiraResource, instance: dg.DagsterInstance, source: str) -> None:
    sel = [*d.INGEST_ASSETS, *d.SCORING_ASSETS]
    assert dg.materialize(
        d.ALL_ASSETS, selection=sel, partition_key=source, instance=instance, resources={"mira": mira}
    ).success


def _reasons(mira: MiraResource, instance: dg.DagsterInstance) -> dict[str, str]:
    return {s.source: s.reason for s in stale_sources(instance, mira)}


def test_missing_and_stale_partitions_are_found_and_requested(small_config: Path, tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    assert _reasons(mira, instance) == {"lean_qa": "never materialised", "agent_openhands": "never materialised"}
    for source in ("lean_qa", "agent_openhands"):
        _materialize(mira, instance, source)
    assert _reasons(mira, instance) == {}
    assert isinstance(stale_run_requests(instance, mira), dg.SkipReason)

    # an input file edited in place: its partition is stale, the other is not
    data = tmp_path / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:-1]), encoding="utf-8")
    assert _reasons(mira, instance) == {"lean_qa": "input files changed"}
    requests = stale_run_requests(instance, mira)
    assert [(r.partition_key, r.tags["mira/stale_reason"]) for r in requests] == [("lean_qa", "input files changed")]
    _materialize(mira, instance, "lean_qa")
    assert _reasons(mira, instance) == {}

    # a scorer setting that changes scorer_version (the offline stand-ins' noise is part of their name):
    # every partition is stale
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("pipeline: {", "pipeline: {offline_noisy_slots: [2, 5], "))
    os.utime(small_config)
    assert _reasons(mira, instance) == {
        "lean_qa": "teacher_labels scorer_version changed",
        "agent_openhands": "teacher_labels scorer_version changed",
    }


def test_partitions_already_in_flight_are_not_requested_twice(small_config: Path, tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    job = defs.resolve_job_def("refresh_sources")
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "lean_qa"})
    assert [r.partition_key for r in stale_run_requests(instance, mira)] == ["agent_openhands"]

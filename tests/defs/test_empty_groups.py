"""Stage 1 with sources that have 0 records: left out of source_groups, and a group whose sources are all empty is
skipped by teacher_judgments / anchor_rubric / distillation_dataset without touching what an earlier run wrote."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.defs.discovery import anchor_rubric, distillation_dataset, source_groups, teacher_judgments
from mira_dagster.defs.partitions import in_process_instance, register_sources
from mira_dagster.defs.resources import MiraResource

EMPTY = ["agent_empty", "qa_empty"]


@pytest.fixture
def setup(small_config: Path, tmp_path: Path) -> tuple[MiraResource, dg.DagsterInstance]:
    """lean_qa (group 2) has records; qa_empty (group 2) and agent_empty (group D, its only source) have none."""
    text = small_config.read_text().replace(
        "  agent_openhands: {group: D, format: agent, files: [data/swe_openhands_resolver_output.jsonl]}\n",
        "  agent_empty: {group: D, format: agent, files: [data/bad.jsonl]}\n"
        '  qa_empty: {group: "2", format: qa_with_think, files: [data/bad.jsonl]}\n',
    )
    small_config.write_text(text)
    (tmp_path / "data" / "bad.jsonl").write_text("not json\n{also not\n")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    register_sources(instance, EMPTY)
    assert dg.materialize(
        d.ALL_ASSETS, selection=d.INGEST_ASSETS, partition_key="lean_qa", instance=instance, resources={"mira": mira}
    ).success
    # every line of the empty sources is quarantined: their raw_records partitions exist with 0 rows
    store = mira.store()
    for source in EMPTY:
        store.write("raw_records", store.read("raw_records", "lean_qa").head(0), source)
    return mira, instance


def _materialize(mira, instance, asset, partition=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        d.ALL_ASSETS,
        selection=[asset],
        partition_key=partition,
        instance=instance,
        resources={"mira": mira},
        raise_on_error=False,
    )


def _metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.asset_materialization.metadata


def _warnings(instance: dg.DagsterInstance, res: dg.ExecuteInProcessResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(res.run_id) if e.level == logging.WARNING]


def test_source_groups_leaves_out_sources_without_records(setup) -> None:
    mira, instance = setup
    res = _materialize(mira, instance, source_groups)
    assert res.success
    assert mira.store().read("source_groups")["source"].to_list() == ["lean_qa"]
    assert _metadata(instance, "source_groups")["skipped"].value == {s: "no records in raw_records" for s in EMPTY}
    assert any("agent_empty" in w for w in _warnings(instance, res))


def test_source_groups_fails_in_one_line_when_no_source_has_records(setup) -> None:
    mira, instance = setup
    store = mira.store()
    store.write("raw_records", store.read("raw_records", "lean_qa").head(0), "lean_qa")
    res = _materialize(mira, instance, source_groups)
    assert not res.success
    failure = next(e for e in res.all_events if e.is_step_failure)
    assert failure.step_failure_data.user_failure_data.description == (
        "source_groups: no source has records in raw_records; nothing to cluster"
    )


def test_a_group_of_empty_sources_is_skipped_and_keeps_earlier_output(setup) -> None:
    mira, instance = setup
    store = mira.store()
    rubric = store.home / "anchors" / "group_D_dim_anchors.jsonl"
    distilled = store.exports_dir / "distillation" / "group_D.jsonl"
    for path in (rubric, distilled):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"an earlier run": true}\n')
    why = "group D: no records in any of its sources (agent_empty)"
    for asset, name in ((teacher_judgments, "teacher_judgments"), (anchor_rubric, "anchor_rubric")):
        res = _materialize(mira, instance, asset, "D")
        assert res.success, name
        assert _metadata(instance, name)["skipped"].value == why
        assert any(why in w for w in _warnings(instance, res)), name
        assert not store.partition_path(name, "D").exists()
    assert "is kept" in _metadata(instance, "anchor_rubric")["kept"].value
    res = _materialize(mira, instance, distillation_dataset, "D")
    assert res.success and _metadata(instance, "distillation_dataset")["skipped"].value == why
    assert rubric.read_text() == distilled.read_text() == '{"an earlier run": true}\n'


def test_a_group_with_one_empty_source_is_judged_on_the_others(setup) -> None:
    mira, instance = setup
    res = _materialize(mira, instance, teacher_judgments, "2")
    assert res.success
    judged = mira.store().read("teacher_judgments", "2")
    assert set(judged["source"]) == {"lean_qa"}
    assert "skipped" not in _metadata(instance, "teacher_judgments")

"""The code location loads as Dagster loads it, with exactly the assets, checks, jobs, schedules and sensors the
README and docs/ describe: adding or dropping one has to change this test (and the docs) too."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

ASSETS = {
    # group: assets (the groups of the UI's lineage, in pipeline order)
    "ingest": {"raw_records"},
    "discovery": {"source_groups", "teacher_judgments", "anchor_rubric"},
    "teacher": {"teacher_labels", "distillation_dataset"},
    "student": {"student_scores"},
    "reliability": {"dim_reliability", "reliability_mask", "disagreements"},
    "selection": {"aggregated_scores", "selected_subset", "selected_random", "selection_report"},
}
SCORING_CHECKS = {
    "scores_in_range",
    "request_errors",
    "parse_failure_rate",
    "statuses_reconcile",
    "unscored_share",
    "degenerate_replies",
}
CHECKS = {
    ("raw_records", "lines_reconcile"),
    ("raw_records", "records_usable"),
    *(("teacher_labels", name) for name in SCORING_CHECKS),
    *(("student_scores", name) for name in SCORING_CHECKS),
    ("reliability_mask", "no_source_fully_masked"),
    ("aggregated_scores", "aggregate_drift"),
    ("selected_subset", "budget_met"),
}


@pytest.fixture
def defs(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """`mira_dagster.definitions.defs` as `dagster dev -m` gets it (a Definitions, or the function that builds
    one); without DAGSTER_HOME, so loading touches no instance."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    from mira_dagster import definitions

    loaded = definitions.defs if isinstance(definitions.defs, dg.Definitions) else definitions.defs()
    dg.Definitions.validate_loadable(loaded)  # raises on a broken graph, an unknown dependency, a missing resource
    return loaded


def test_the_definitions_load_with_every_asset_in_its_group(defs: dg.Definitions) -> None:
    graph = defs.get_repository_def().asset_graph
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == ASSETS
    undescribed = [k.to_user_string() for k in graph.get_all_asset_keys() if not graph.get(k).description]
    assert undescribed == []  # the UI shows each asset's description


def test_the_definitions_have_every_check_job_schedule_and_sensor(defs: dg.Definitions) -> None:
    repo = defs.get_repository_def()
    checks = {(c.asset_key.to_user_string(), c.name) for c in repo.asset_graph.asset_check_keys}
    assert checks == CHECKS
    assert {j.name for j in repo.get_all_jobs()} == {"refresh_sources", "__ASSET_JOB"}
    assert list(repo.schedule_defs) == []  # what is stale runs through the automation condition, not a schedule
    assert {s.name: s.default_status for s in repo.sensor_defs} == {
        "new_sources": dg.DefaultSensorStatus.RUNNING,
        "default_automation_condition_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    # every asset follows its inputs by the one automation condition (defs/conditions.py)
    conditions = {a.automation_conditions_by_key[k] for a in repo.asset_graph.assets_defs for k in a.keys}
    label = "stale, nothing upstream stale or running, within the group's run limit"
    assert {c.get_label() for c in conditions} == {label, f"{label}; or in the same run as teacher_judgments"}


def _load() -> dg.Definitions:
    from mira_dagster import definitions

    return definitions.defs if isinstance(definitions.defs, dg.Definitions) else definitions.defs()


def _executors(loaded: dg.Definitions) -> dict[str, str]:
    return {j.name: j.executor_def.name for j in loaded.get_repository_def().get_all_jobs()}


def test_the_executor_is_chosen_when_the_code_location_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """MIRA_EXECUTOR is read when the definitions load, never at import, and applies to every job Dagster launches:
    refresh_sources and the asset job behind UI and CLI materialisations and backfills."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("MIRA_EXECUTOR", raising=False)
    assert set(_executors(_load()).values()) == {"multi_or_in_process_executor"}
    monkeypatch.setenv("MIRA_EXECUTOR", "in_process")
    assert _executors(_load()) == {"refresh_sources": "in_process", "__ASSET_JOB": "in_process"}
    monkeypatch.setenv("MIRA_EXECUTOR", "celery")
    monkeypatch.setenv("MIRA_CELERY_BROKER", "redis://127.0.0.1:1/0")  # never contacted: nothing runs here
    assert _executors(_load()) == {"refresh_sources": "celery", "__ASSET_JOB": "celery"}
    monkeypatch.setenv("MIRA_EXECUTOR", "no-such-executor")
    with pytest.raises(Exception, match="MIRA_EXECUTOR=no-such-executor"):
        _load()


def test_loading_the_code_location_leaves_the_heavy_libraries_to_the_steps_that_use_them() -> None:
    """Every Dagster run, step and code-server process imports the definitions: scikit-learn, scipy, openai, aiohttp
    and matplotlib (2.2 of 3.5 CPU seconds measured) load only in the steps that embed, test, send or draw."""
    code = "import sys, mira_dagster.definitions; print(' '.join(sorted(set(m.split('.')[0] for m in sys.modules))))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert not loaded & {"sklearn", "scipy", "openai", "aiohttp", "matplotlib"}, loaded

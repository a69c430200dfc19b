"""The schedule that re-runs missing and stale source partitions, on a real (temporary) instance."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.defs.automation import new_source_result, refresh_sources_job, stale_run_requests, stale_sources
from mira_dagster.defs.partitions import in_process_instance, register_partitions, register_sources
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
    instance = in_process_instance()
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
    instance = in_process_instance()
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    job = defs.resolve_job_def("refresh_sources")
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "lean_qa"})
    assert [r.partition_key for r in stale_run_requests(instance, mira)] == ["agent_openhands"]


def test_new_files_in_a_watched_folder_become_partitions_with_runs(small_config: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    small_config.write_text(small_config.read_text() + 'watch: {"2": incoming}\n', encoding="utf-8")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()  # knows no source yet

    first = new_source_result(instance, mira)
    assert [r.partition_key for r in first.run_requests] == ["agent_openhands", "lean_qa"]
    # the scorer-unit partitions of the scope come with them (the groups: scorer_scope group)
    adds = {r.partitions_def_name: r.partition_keys for r in first.dynamic_partitions_requests}
    assert adds == {"sources": ["agent_openhands", "lean_qa"], "scorer_units": ["2", "D"]}
    register_partitions(instance, mira.config())  # what the daemon does with the requests ...
    _runs_for(mira, instance, ["agent_openhands", "lean_qa"])  # ... and the runs it launches
    assert isinstance(new_source_result(instance, mira), dg.SkipReason)
    # a change of scope swaps the unit partitions: the groups go, the one global unit comes
    original = small_config.read_text()
    small_config.write_text(original.replace("pipeline: {", "pipeline: {scorer_scope: global, "), encoding="utf-8")
    os.utime(small_config, (time.time() + 3, time.time() + 3))
    swap = new_source_result(instance, mira)
    kinds = {(type(r).__name__, tuple(r.partition_keys)) for r in swap.dynamic_partitions_requests}
    assert kinds == {("AddDynamicPartitionsRequest", ("global",)), ("DeleteDynamicPartitionsRequest", ("2", "D"))}
    assert swap.run_requests == []
    register_partitions(instance, mira.config())
    assert instance.get_dynamic_partitions("scorer_units") == ["global"]
    small_config.write_text(original, encoding="utf-8")  # back to the groups (their configured anchors) below
    os.utime(small_config, (time.time() + 6, time.time() + 6))
    register_partitions(instance, mira.config())

    sample = (tmp_path / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl").read_bytes()
    (incoming / "New-Proofs.2026.jsonl").write_bytes(sample)  # becomes source new_proofs_2026 of group 2
    (incoming / "9lives.jsonl").write_bytes(sample)  # not a usable name as it is: a derived one, f_9lives_<hash>
    (incoming / "lean_qa.jsonl").write_bytes(sample)  # taken by the registry: reported, not added
    os.utime(incoming, (time.time() + 5, time.time() + 5))  # the listing changed (coarse mtime clocks)
    result = new_source_result(instance, mira)
    keys = sorted(r.partition_key for r in result.run_requests)
    assert len(keys) == 2 and keys[0].startswith("f_9lives_") and keys[1] == "new_proofs_2026"
    assert all(r.tags["mira/reason"] == "new source" for r in result.run_requests)
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == keys
    cfg = mira.config()
    assert cfg.sources["new_proofs_2026"].group == "2" and cfg.sources["new_proofs_2026"].format == "qa_with_think"
    assert cfg.sources[keys[0]].files[0].name == "9lives.jsonl"
    assert [r for r in cfg.rejected_files if "lean_qa.jsonl" in r and "already exists" in r]

    # the new partition materialises like any other
    register_sources(instance, ["new_proofs_2026"])
    sel = [*d.INGEST_ASSETS, *d.SCORING_ASSETS]
    assert dg.materialize(
        d.ALL_ASSETS, selection=sel, partition_key="new_proofs_2026", instance=instance, resources={"mira": mira}
    ).success
    assert (tmp_path / "home" / "tables" / "student_scores" / "new_proofs_2026.parquet").exists()


def _runs_for(mira: MiraResource, instance: dg.DagsterInstance, sources: list[str]) -> None:
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    job = defs.resolve_job_def("refresh_sources")
    for source in sources:
        instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": source})


def test_sources_registered_at_load_still_get_their_first_run(small_config: Path, tmp_path: Path) -> None:
    """Loading the code location registers the registry's partitions (before any sensor tick). On a fresh instance
    the sensor's first tick still requests one run for each source; later, a registered source the sensor has not
    seen gets one unless it had a run or a materialisation (say, by `mira run`)."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    result = new_source_result(instance, mira)  # the first tick, on a fresh instance
    assert [r.partition_key for r in result.run_requests] == ["agent_openhands", "lean_qa"]
    assert result.dynamic_partitions_requests == []  # already there
    _materialize(mira, instance, "lean_qa")
    # a later tick whose cursor has not seen them (they came with a reload of the code location)
    assert [r.partition_key for r in new_source_result(instance, mira, seen=set()).run_requests] == ["agent_openhands"]
    _runs_for(mira, instance, ["agent_openhands"])
    assert isinstance(new_source_result(instance, mira, seen=set()), dg.SkipReason)


def test_first_tick_on_an_instance_with_runs_starts_no_other_source(small_config: Path, tmp_path: Path) -> None:
    """`mira run --source lean_qa`, then `dagster dev`: the sensor's first tick does not start the other registered
    sources (they are not new, only not run yet: the schedule's business); a source it has seen is not new either."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    _materialize(mira, instance, "lean_qa")
    assert isinstance(new_source_result(instance, mira), dg.SkipReason)
    seen = set(mira.config().source_names())
    assert isinstance(new_source_result(instance, mira, seen=seen), dg.SkipReason)


def test_loading_the_code_location_registers_the_registry_partitions(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `dagster dev` or `dagster asset materialize` does on a fresh DAGSTER_HOME: the sources and scorer
    units are partitions as soon as the definitions load; the automation sensor is on by default."""
    from mira_dagster.definitions import defs
    from mira_dagster.instance import ensure_instance

    home = ensure_instance(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MIRA_CONFIG", str(small_config))
    monkeypatch.setenv("MIRA_HOME", str(tmp_path / "home"))
    loaded = defs()
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("sources") == ["agent_openhands", "lean_qa"]
        assert instance.get_dynamic_partitions("scorer_units") == ["2", "D"]
    sensor = loaded.resolve_sensor_def("default_automation_condition_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    corpus = {a.key for a in d.CORPUS_ASSETS}
    assert corpus <= set(sensor.asset_selection.resolve(loaded.resolve_asset_graph()))

    # a broken registry is a warning at load, never a failed load
    monkeypatch.setenv("MIRA_CONFIG", str(tmp_path / "missing.yaml"))
    assert defs().resolve_sensor_def("new_sources") is not None


def test_refresh_runs_carry_their_scorer_group_for_the_per_group_run_limit() -> None:
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": MiraResource()})
    job = defs.resolve_job_def("refresh_sources")
    assert job.partitioned_config.get_tags_for_partition_key("lean_qa")["mira/scorer_group"] == "2"
    assert job.partitioned_config.get_tags_for_partition_key("swe_qa")["mira/scorer_group"] == "D"


def test_corpus_assets_follow_their_inputs(small_config: Path, tmp_path: Path) -> None:
    """AutomationCondition.eager on the corpus assets, evaluated as the daemon would: nothing while a source
    partition is missing, the corpus once every partition exists, nothing more until an input changes."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, ["lean_qa", "agent_openhands"])
    corpus = {a.key for a in d.CORPUS_ASSETS}

    def requested(cursor: object = None) -> tuple[set, object]:
        defs = dg.Definitions(assets=d.ALL_ASSETS, resources={"mira": mira})
        res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return {k for k in corpus if res.get_num_requested(k)}, res.cursor

    _materialize(mira, instance, "lean_qa")
    got, cursor = requested()
    assert got == set()  # agent_openhands has not run: the corpus would read a missing partition
    _materialize(mira, instance, "agent_openhands")
    got, cursor = requested(cursor)
    assert dg.AssetKey("dim_reliability") in got and dg.AssetKey("aggregated_scores") in got
    assert dg.materialize(d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}).success
    got, cursor = requested(cursor)
    assert got == set()  # up to date
    _materialize(mira, instance, "lean_qa")  # a source re-ran (say, the schedule found it stale)
    got, cursor = requested(cursor)
    assert dg.AssetKey("dim_reliability") in got

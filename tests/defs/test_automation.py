"""What is stale (defs/freshness.py) and the automation condition built on it (defs/conditions.py), on a real
(temporary) instance, evaluated as the daemon's automation sensor does."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.defs.automation import new_source_result, refresh_sources_job
from mira_dagster.defs.freshness import Evaluation
from mira_dagster.defs.partitions import in_process_instance, register_partitions, register_sources
from mira_dagster.defs.resources import MiraResource


def _materialize(mira: MiraResource, instance: dg.DagsterInstance, source: str) -> None:
    sel = [*d.INGEST_ASSETS, *d.SCORING_ASSETS]
    assert dg.materialize(
        d.ALL_ASSETS, selection=sel, partition_key=source, instance=instance, resources={"mira": mira}
    ).success


def _reasons(mira: MiraResource, instance: dg.DagsterInstance) -> dict[str, str]:
    """Per source, why its first stale asset of raw_records, teacher_labels, student_scores must run."""
    ev = Evaluation(instance, mira, retry=False)
    out = {}
    for source in mira.config().source_names():
        for asset in ("raw_records", "teacher_labels", "student_scores"):
            if (why := ev.reason(asset, source)) is not None:
                out[source] = f"{asset}: {why}"
                break
    return out


def _ingesting(
    instance: dg.DagsterInstance, mira: MiraResource, source: str, assets: tuple[str, ...] = ("raw_records",)
) -> None:
    """A refresh_sources run of these assets of `source` (raw_records), in progress."""
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    instance.create_run_for_job(
        defs.resolve_job_def("refresh_sources"),
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": source},
        asset_selection=frozenset(dg.AssetKey(a) for a in assets),
    )


@pytest.fixture
def env(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MiraResource:
    """The registry and home in the environment, where the automation condition (like the code location) reads them."""
    monkeypatch.setenv("MIRA_CONFIG", str(small_config))
    monkeypatch.setenv("MIRA_HOME", str(tmp_path / "home"))
    return MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))


def _requested(instance: dg.DagsterInstance, mira: MiraResource) -> dict[str, list[str] | bool]:
    """What the automation condition requests now: partitions per partitioned asset, True for the others."""
    defs = dg.Definitions(assets=d.ALL_ASSETS, resources={"mira": mira})
    res = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    out: dict[str, list[str] | bool] = {}
    for a in d.ALL_ASSETS:
        if res.get_num_requested(a.key):
            out[a.key.to_user_string()] = sorted(res.get_requested_partitions(a.key)) if a.partitions_def else True
    return out


def _run_requested(instance: dg.DagsterInstance, mira: MiraResource, got: dict[str, list[str] | bool]) -> None:
    """Materialise what _requested returned, one asset partition a run."""
    by_key = {a.key.to_user_string(): a for a in d.ALL_ASSETS}
    for name, partitions in got.items():
        for key in [None] if partitions is True else partitions:
            assert dg.materialize(
                d.ALL_ASSETS, selection=[by_key[name]], partition_key=key, instance=instance, resources={"mira": mira}
            ).success


def test_missing_and_stale_partitions_are_found_and_requested(small_config: Path, tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    assert _reasons(mira, instance) == {
        "lean_qa": "raw_records: never materialised",
        "agent_openhands": "raw_records: never materialised",
    }
    for source in ("lean_qa", "agent_openhands"):
        _materialize(mira, instance, source)
    assert _reasons(mira, instance) == {}

    # an input file edited in place: its partition is stale, the other is not
    data = tmp_path / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:-1]), encoding="utf-8")
    assert _reasons(mira, instance) == {"lean_qa": "raw_records: input files changed"}
    _materialize(mira, instance, "lean_qa")
    assert _reasons(mira, instance) == {}

    # a scorer setting that changes scorer_version (the offline stand-ins' noise is part of their name):
    # every partition is stale
    text = small_config.read_text(encoding="utf-8")
    small_config.write_text(text.replace("pipeline: {", "pipeline: {offline_noisy_slots: [2, 5], "))
    os.utime(small_config)
    assert _reasons(mira, instance) == {
        "lean_qa": "teacher_labels: scorer_version changed",
        "agent_openhands": "teacher_labels: scorer_version changed",
    }


def test_partitions_already_in_flight_are_not_requested_twice(env: MiraResource) -> None:
    mira = env
    instance = in_process_instance()
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands", "lean_qa"]}  # nothing else: upstream
    _ingesting(instance, mira, "lean_qa")
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands"]}


def test_an_evaluation_sees_a_run_in_flight_or_its_materialisations(env: MiraResource) -> None:
    """The runs in flight are read before anything stale: a run that ends while the sensor evaluates is seen in
    flight (not requested) or done (not stale), never as a stale partition with no run (requested twice)."""
    mira = env
    instance = in_process_instance()
    _ingesting(instance, mira, "lean_qa")
    ev = Evaluation(instance, mira, retry=False)
    _materialize(mira, instance, "lean_qa")  # the run's materialisations land while `ev` evaluates
    assert ev.running("raw_records", "lean_qa") is not None
    assert ev.running("raw_records", "agent_openhands") is None
    assert ev.reason("raw_records", "lean_qa") is None  # read after: done


def test_a_failed_partition_waits_for_a_change_or_mira_run(env: MiraResource, small_config: Path) -> None:
    """The daemon does not retry, at every tick, a partition whose latest run failed while nothing it reads changed;
    `mira run` (retry) does; an edited input brings it back."""
    mira = env
    instance = in_process_instance()
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    job = defs.resolve_job_def("refresh_sources")
    time.sleep(1.1)  # the run below is created after the registry's last change (mtime, whole seconds on some disks)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": "lean_qa"})
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands"]}
    assert Evaluation(instance, mira, retry=True).reason("raw_records", "lean_qa") == "never materialised"
    os.utime(small_config, (time.time() + 5, time.time() + 5))  # the registry edited after the failure
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands", "lean_qa"]}


def test_new_files_in_a_watched_folder_become_partitions_with_runs(small_config: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    small_config.write_text(small_config.read_text() + 'watch: {"2": incoming}\n', encoding="utf-8")
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()  # knows no source yet

    first = new_source_result(instance, mira)
    assert not first.run_requests  # the automation condition requests their runs (never materialised: stale)
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
    assert not swap.run_requests
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
    keys = sorted(result.dynamic_partitions_requests[0].partition_keys)
    assert len(keys) == 2 and keys[0].startswith("f_9lives_") and keys[1] == "new_proofs_2026"
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


def test_sources_registered_at_load_get_their_first_run(env: MiraResource) -> None:
    """Loading the code location registers the registry's partitions (before any sensor tick); the condition then
    requests the ingest of each, and of a source added later, whoever materialised the others."""
    mira = env
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands", "lean_qa"]}
    _materialize(mira, instance, "lean_qa")
    assert _requested(instance, mira) == {"raw_records": ["agent_openhands"]}


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


def test_corpus_assets_follow_their_inputs(env: MiraResource) -> None:
    """The condition as the daemon evaluates it: each stage once everything upstream of it is fresh; the corpus
    assets as one block, nothing while an upstream partition is stale, nothing more until an input changes."""
    mira = env
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    corpus = {a.key.to_user_string() for a in d.CORPUS_ASSETS}
    _materialize(mira, instance, "lean_qa")
    got = _requested(instance, mira)
    assert got == {"raw_records": ["agent_openhands"]}  # upstream of everything else, and stale
    _materialize(mira, instance, "agent_openhands")
    assert set(_requested(instance, mira)) == {"source_groups"}
    for _ in range(8):  # what the daemon does: run what is requested, evaluate again
        got = _requested(instance, mira)
        assert not corpus & set(got) or corpus <= set(got), got  # the whole block or nothing of it
        _run_requested(instance, mira, {k: v for k, v in got.items() if k not in corpus})
    assert corpus <= set(_requested(instance, mira))  # the whole block at once: one run
    assert dg.materialize(d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}).success
    assert _requested(instance, mira) == {}  # up to date
    _materialize(mira, instance, "lean_qa")  # a source re-ran (a backfill, say)
    got = _requested(instance, mira)
    assert "source_groups" in got and not corpus & set(got)  # the corpus waits for what is stale upstream


def test_a_file_a_step_writes_beside_its_table_is_missed_when_gone(env: MiraResource, tmp_path: Path) -> None:
    """Tables no asset is named after, deleted by hand: a source's column types (`table_schemas`, which the export
    retypes table rows by) make its ingest stale; the corpus's side tables (`source_overlap`, `selection_variants`,
    this scope's `scope_selections`) make the corpus stale. Before, each was noticed only when its step ran again
    for another reason, and an export without the column types wrote a table's dates and decimals as text."""
    mira = env
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    corpus = {a.key.to_user_string() for a in d.CORPUS_ASSETS}
    for _ in range(10):
        got = _requested(instance, mira)
        if corpus & set(got):
            selection = d.CORPUS_ASSETS
            assert dg.materialize(
                d.ALL_ASSETS, selection=selection, instance=instance, resources={"mira": mira}
            ).success
        elif got:
            _run_requested(instance, mira, got)
        else:
            break
    assert _requested(instance, mira) == {}
    tables = tmp_path / "home" / "tables"
    scope = mira.config().pipeline.scorer_scope
    for rel, asset, partition in [
        ("table_schemas/lean_qa.parquet", "raw_records", "lean_qa"),
        ("source_overlap/all.parquet", "selection_report", None),
        ("selection_variants/all.parquet", "dim_reliability", None),
        (f"scope_selections/{scope}.parquet", "selected_subset", None),
    ]:
        path = tables / rel
        kept = path.read_bytes()
        path.unlink()
        assert (
            Evaluation(instance, mira, retry=False).reason(asset, partition) == f"its table file tables/{rel} is gone"
        )
        path.write_bytes(kept)
        assert Evaluation(instance, mira, retry=False).reason(asset, partition) is None


def test_a_stage_runs_its_steps_in_one_run(env: MiraResource) -> None:
    """anchor_rubric reads teacher_judgments of its unit: the daemon requests both in one tick (the sensor makes one
    run of a partition's requests: test_daemon_handoff sees it), not a tick and a process apart."""
    mira = env
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, mira.config())
    for source in ("lean_qa", "agent_openhands"):
        _materialize(mira, instance, source)
    assert dg.materialize(
        d.ALL_ASSETS, selection=["source_groups"], instance=instance, resources={"mira": mira}
    ).success
    units = sorted(mira.config().scorer_units())
    assert _requested(instance, mira) == {"teacher_judgments": units, "anchor_rubric": units}
    by_key = {a.key.to_user_string(): a for a in d.ALL_ASSETS}
    for unit in units:  # runs of the judgments alone (from the UI, say): the rubric is stale and runs by itself
        judged = dg.materialize(
            d.ALL_ASSETS,
            selection=[by_key["teacher_judgments"]],
            partition_key=unit,
            instance=instance,
            resources={"mira": mira},
        )
        assert judged.success
    assert _requested(instance, mira) == {"anchor_rubric": units}


def test_a_mira_run_request_makes_the_daemon_retry_once(env: MiraResource, small_config: Path) -> None:
    """With a daemon, `mira run` asks for its retry through the instance: a failed partition runs again once (not
    at every tick once that retry failed too), and nothing reads the output of a failed run meanwhile."""
    from mira_dagster.defs.conditions import failed_upstream
    from mira_dagster.defs.freshness import latest_request, record_request

    mira = env
    instance = in_process_instance()
    defs = dg.Definitions(assets=d.ALL_ASSETS, jobs=[refresh_sources_job], resources={"mira": mira})
    job = defs.resolve_job_def("refresh_sources")
    _materialize(mira, instance, "agent_openhands")
    time.sleep(1.1)  # run creation times are whole seconds on SQLite
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": "lean_qa"})
    assert _requested(instance, mira) == {}  # waits, and so does what reads it
    ev = Evaluation(instance, mira, retry=False)
    assert "failed, waiting for a change" in str(ev.waiting("raw_records", "lean_qa"))
    assert "raw_records[lean_qa]" in str(failed_upstream(ev, "source_groups"))

    time.sleep(1.1)
    request = record_request(instance, force=False, sources=None)
    assert latest_request(instance) == request and not request.force
    assert _requested(instance, mira) == {"raw_records": ["lean_qa"]}
    time.sleep(1.1)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.FAILURE, tags={"dagster/partition": "lean_qa"})
    assert _requested(instance, mira) == {}  # the retry was tried and failed: it waits again


def test_a_forced_request_reruns_what_it_covers(env: MiraResource) -> None:
    from mira_dagster.defs.freshness import record_request

    mira = env
    instance = in_process_instance()
    for source in ("lean_qa", "agent_openhands"):
        _materialize(mira, instance, source)
    assert _reasons(mira, instance) == {}
    time.sleep(0.01)
    record_request(instance, force=True, sources=["lean_qa"])
    assert _reasons(mira, instance) == {"lean_qa": "raw_records: forced by `mira run --force`"}
    _materialize(mira, instance, "lean_qa")  # materialised after the request: done
    assert _reasons(mira, instance) == {}


def test_automation_keeps_dagster_yamls_per_group_run_limit(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs an automation sensor requests carry no per-partition tag, so the run queue cannot apply dagster.yaml's
    per-group limit to them: the condition does, to the steps that send to a group's endpoints (the scoring steps).
    Ingests send nothing: every one is requested at once. Three sources of group 2 under a limit of 2."""
    import yaml

    from mira_dagster.package_data import DAGSTER_YAML

    text = small_config.read_text(encoding="utf-8")
    entry = '  {}: {{group: "2", format: qa_with_think, files: [data/{}.jsonl]}}\n'
    extra = "".join(entry.format(name, name) for name in ("lean_b", "lean_c"))
    small_config.write_text(text.replace("sources:\n", "sources:\n" + extra), encoding="utf-8")
    for name in ("lean_b", "lean_c"):
        (tmp_path / "data" / f"{name}.jsonl").write_text(
            (tmp_path / "data" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl").read_text()
        )
    monkeypatch.setenv("MIRA_CONFIG", str(small_config))
    monkeypatch.setenv("MIRA_HOME", str(tmp_path / "home"))
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    settings = yaml.safe_load(DAGSTER_YAML.read_text(encoding="utf-8"))
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster"), overrides=settings)
    register_partitions(instance, mira.config())
    everything = ["agent_openhands", "lean_b", "lean_c", "lean_qa"]
    assert _requested(instance, mira) == {"raw_records": everything}  # no limit: an ingest sends nothing
    for _ in range(4):  # what the daemon does, up to the scoring: run what is requested, evaluate again
        got = _requested(instance, mira)
        if "teacher_labels" in got:
            break
        _run_requested(instance, mira, got)
    # two per group: group 2's first two (by name), group D's one
    two = ["agent_openhands", "lean_b", "lean_c"]
    assert _requested(instance, mira) == {"teacher_labels": two, "student_scores": two}
    _ingesting(instance, mira, "lean_b", ("teacher_labels", "student_scores"))
    one_more = ["agent_openhands", "lean_c"]  # lean_b sends: one more of group 2
    assert _requested(instance, mira) == {"teacher_labels": one_more, "student_scores": one_more}


def test_a_run_dg_materialize_made_is_seen_with_its_assets(env: MiraResource) -> None:
    """`mira run` without a daemon (on this or another machine) runs `dg.materialize`, whose runs record no asset
    selection, only their steps: they must still count as in progress for their assets, and for those alone."""
    from mira_dagster.defs.conditions import upstream_busy
    from mira_dagster.defs.freshness import run_assets

    instance = in_process_instance()
    register_partitions(instance, env.config())
    by_key = {k.to_user_string(): a for a in d.ALL_ASSETS for k in a.keys}
    done = dg.materialize(
        d.ALL_ASSETS,
        selection=[by_key["raw_records"], by_key["teacher_labels"]],
        partition_key="lean_qa",
        instance=instance,
        resources={"mira": env},
        tags={"mira/host": "machine-2"},
    )
    run = instance.get_run_by_id(done.run_id)
    assert run is not None and not run.asset_selection  # what Dagster 1.13 records for it
    assert run_assets(run) == {"raw_records", "teacher_labels"}
    # the same run as if machine 2 were still executing it (its materialisations not written yet)
    instance.delete_run(run.run_id)
    instance.add_run(run.with_status(dg.DagsterRunStatus.STARTED))
    ev = Evaluation(instance, env, retry=False)
    assert ev.running("raw_records", "lean_qa") == run.run_id
    assert ev.running("student_scores", "lean_qa") is None
    assert ev.running("raw_records", "agent_openhands") is None
    assert upstream_busy(ev, "source_groups") == f"run {run.run_id[:8]} in progress upstream"

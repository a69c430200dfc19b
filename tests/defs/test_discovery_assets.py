"""Stage 1 and the distillation export through Dagster, on the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mira_dagster import definitions as d
from mira_dagster.cli import main
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.registry import load_config


def run(mira: MiraResource, instance: dg.DagsterInstance, selection: list, partition: str | None = None) -> None:
    res = dg.materialize(
        d.ALL_ASSETS, selection=selection, partition_key=partition, instance=instance, resources={"mira": mira}
    )
    assert res.success


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> tuple[MiraResource, dg.DagsterInstance, Path]:
    home = tmp_path_factory.mktemp("home")
    mira = MiraResource(home=str(home))
    instance = in_process_instance()
    cfg = load_config()
    for s in cfg.source_names():
        run(mira, instance, d.INGEST_ASSETS, s)
    run(mira, instance, d.GROUPING_ASSETS)
    for g in cfg.groups:
        run(mira, instance, d.DISCOVERY_ASSETS, g)
    return mira, instance, home


def test_source_groups_separate_math_from_agents(discovered) -> None:
    _, _, home = discovered
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT source, configured_group, cluster, agrees FROM source_groups").fetchall()
    clusters = {}
    for source, group, cluster, agrees in rows:
        clusters.setdefault(group, set()).add(cluster)
        assert agrees, source
    assert len(clusters["2"]) == 1 and len(clusters["D"]) == 1 and clusters["2"] != clusters["D"]


def test_anchor_rubric_writes_15_unique_slots(discovered) -> None:
    mira, _, home = discovered
    for g in ("2", "D"):
        lines = [json.loads(x) for x in (home / "anchors" / f"group_{g}_dim_anchors.jsonl").read_text().splitlines()]
        assert [x["slot"] for x in lines] == list(range(1, 16))
        assert len({x["name"] for x in lines}) == 15
        assert sum(bool(x["calibration_references"]) for x in lines) == 12


def test_discovered_rubric_drives_scorers_and_versions(
    discovered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mira, instance, home = discovered
    configured_spec, _, _ = mira.scorer("student", "2")
    cfg_file = tmp_path / "groups.yaml"
    text = Path(load_config().path).read_text().replace("pipeline:\n", "pipeline:\n  rubric_source: discovered\n")
    root = Path(load_config().path).parent.parent  # its data and anchors: ../data/, ../mira_dagster/resources/
    text = text.replace(": ../", f": {root}/").replace("[../", f"[{root}/").replace("- ../", f"- {root}/")
    cfg_file.write_text(text)
    disc = MiraResource(home=str(home), config_path=str(cfg_file))
    spec, _, _ = disc.scorer("student", "2")
    rubric = disc.rubric("2")
    assert spec.version != configured_spec.version
    # the discovered rubric's references (slot 1 is the largest cluster, so it has one) are in the system prompt
    assert f"\n- {rubric.names[0]}: " in spec.system_prompt and "Calibration references" in spec.system_prompt
    assert sum(1 for line in spec.system_prompt.splitlines() if line.startswith("- ")) == 12
    # a changed anchor file is a new scorer_version: old scores are re-made, not mixed
    anchor = home / "anchors" / "group_2_dim_anchors.jsonl"
    original = anchor.read_text()
    anchor.write_text(original.replace(rubric.names[0], rubric.names[0] + " X", 1))
    try:
        assert disc.scorer("student", "2")[0].version != spec.version
    finally:
        anchor.write_text(original)


def test_distillation_dataset_excludes_heldout(discovered) -> None:
    mira, instance, home = discovered
    for s in ("lean_qa", "reason_dpsk32", "swe_qa"):
        run(mira, instance, d.SCORING_ASSETS, s)
    for g in ("2", "D"):
        run(mira, instance, d.DISTILL_ASSETS, g)
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        heldout = {r[0] for r in con.execute("SELECT record_id FROM teacher_labels WHERE split = 'heldout'").fetchall()}
        distill = {r[0] for r in con.execute("SELECT record_id FROM teacher_labels WHERE split = 'distill'").fetchall()}
    rows = [
        json.loads(x)
        for g in ("2", "D")
        for x in (home / "exports" / "distillation" / f"group_{g}.jsonl").read_text().splitlines()
    ]
    ids = {r["record_id"] for r in rows}
    assert ids and not ids & heldout and ids <= distill
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["messages"][2]["content"].startswith("[A1] ")
    meta = instance.get_latest_materialization_event(dg.AssetKey("distillation_dataset")).asset_materialization
    assert meta.metadata["per_source"].value == {"swe_qa": sum(r["source"] == "swe_qa" for r in rows)}


def test_regroup_moves_a_misfiled_source(tmp_path: Path, small_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # qwq is math with thinking traces, filed here in a group of its own: discovery puts it with lean_qa
    data = Path(load_config().path).parent.parent / "data" / "sample" / "math_think_marco_o1_cot_demo.part2.jsonl"
    text = small_config.read_text().replace(
        "sources:",
        '  "3": {family: qa_with_think, student_model: m3, anchors: group_2_dim_anchors.jsonl}\n'
        f'sources:\n  qwq: {{group: "3", format: qa_with_think, files: [{data}]}}',
    )
    small_config.write_text(text)
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(small_config), home=str(home))
    instance = in_process_instance()
    for s in ("lean_qa", "agent_openhands", "qwq"):
        run(mira, instance, d.INGEST_ASSETS, s)
    run(mira, instance, d.GROUPING_ASSETS)
    out = tmp_path / "regrouped.yaml"
    for var in ("MIRA_CONFIG", "MIRA_HOME", "DAGSTER_HOME"):  # the CLI sets these; have them restored afterwards
        monkeypatch.setenv(var, "")
    assert main(["regroup", "--config", str(small_config), "--home", str(home), "--out", str(out)]) == 0
    regrouped = load_config(out)
    assert regrouped.sources["qwq"].group == "2"
    assert regrouped.sources["lean_qa"].group == "2" and regrouped.sources["agent_openhands"].group == "D"

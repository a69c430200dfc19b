"""Assets through Dagster's in-process materialize, on real files and a real loopback HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from mira_dagster.definitions import ALL_ASSETS, CORPUS_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.loopback import ChatServer, serve

ALL = ALL_ASSETS
SOURCES = ["lean_qa", "agent_openhands"]


def materialize_all(mira: MiraResource, instance: dg.DagsterInstance) -> None:
    for source in SOURCES:
        res = dg.materialize(
            ALL, selection=PARTITIONED_ASSETS, partition_key=source, instance=instance, resources={"mira": mira}
        )
        assert res.success
    assert dg.materialize(ALL, selection=CORPUS_ASSETS, instance=instance, resources={"mira": mira}).success


def test_pipeline_end_to_end_offline(small_config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(small_config), home=str(home))
    instance = in_process_instance()
    materialize_all(mira, instance)

    con = duckdb.connect(str(home / "mira.duckdb"), read_only=True)
    counts = dict(con.sql("SELECT source, count(*) FROM raw_records GROUP BY source").fetchall())
    assert counts == {"lean_qa": 67, "agent_openhands": 2}
    statuses = dict(con.sql("SELECT source, count(*) FROM student_scores GROUP BY source").fetchall())
    assert statuses == counts  # every record ends with exactly one status
    splits = con.sql("SELECT split, count(*) FROM teacher_labels WHERE source = 'lean_qa' GROUP BY split").fetchall()
    assert dict(splits) == {"distill": 20, "heldout": 14}
    assert con.execute("SELECT count(*) FROM reliability_mask").fetchone()[0] == 30
    assert con.execute("SELECT count(DISTINCT source) FROM selected_subset").fetchone()[0] == 2
    kept = con.execute(
        "SELECT sum(s.n_tokens) / (SELECT sum(n_tokens) FROM raw_records WHERE source = 'lean_qa') "
        "FROM selected_subset s WHERE s.source = 'lean_qa'"
    )
    assert abs(kept.fetchone()[0] - 0.5) < 0.05
    # the scope's selection and random keep the same budget, within one record per source
    report = con.execute(
        "SELECT variant, sum(tokens_kept), sum(source_tokens) FROM selection_report GROUP BY 1"
    ).fetchall()
    biggest = con.execute("SELECT max(n_tokens) FROM raw_records").fetchone()[0]
    for _, kept_tokens, total in report:
        assert abs(kept_tokens - total / 2) <= 2 * biggest
    assert {v for v, *_ in report} == {"MIRA-group", "random"}
    manifest = json.loads((home / "exports" / "selected_subset" / "manifest.json").read_text())
    assert manifest["variant"] == "MIRA-group" and manifest["mask_version"] and manifest["scorer_versions"]
    # the default export: each kept record as its producer wrote it, with the selection columns added
    lines = (home / "exports" / "selected_subset" / "lean_qa-00000.jsonl").read_text(encoding="utf-8").splitlines()
    export = [json.loads(line) for line in lines]
    assert sum(f["records"] for f in manifest["files"]) == manifest["records"]
    assert len(export) == con.execute("SELECT count(*) FROM selected_subset WHERE source='lean_qa'").fetchone()[0]
    assert all(r["formal_statement"] and r["formal_proof"] and r["mira_source"] == "lean_qa" for r in export)

    # the disagreement queue: held-out records only, largest gaps first
    rows = con.execute(
        "SELECT kind, source, record_id, gap, pos FROM disagreements ORDER BY source, kind, pos"
    ).fetchall()
    heldout = {r[0] for r in con.execute("SELECT record_id FROM teacher_labels WHERE split = 'heldout'").fetchall()}
    assert rows and {r[2] for r in rows} <= heldout
    overall = [r[3] for r in rows if r[0] == "overall" and r[1] == "lean_qa"]
    assert overall == sorted(overall, reverse=True) and len(overall) <= 10

    # pictures inline in the metadata
    for key, field in [
        ("reliability_mask", "heatmap"),
        ("aggregated_scores", "retention_curves"),
        ("aggregated_scores", "distributions"),
    ]:
        md = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata[field].value
        assert md.startswith("![") and "data:image/png;base64,iVBORw0KGgo" in md

    # metadata reported on the materialisation
    ev = instance.get_latest_materialization_event(dg.AssetKey("student_scores"))
    meta = ev.asset_materialization.metadata
    assert meta["dagster/row_count"].value == 2  # the last partition run: agent_openhands
    assert meta["status_counts"].value["ok"] == 2
    assert "preview" in meta


def test_student_scores_over_http_and_never_twice(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ChatServer()
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        monkeypatch.setenv("MIRA_STUDENT_API_KEY", "sk-very-secret")
        sel = [PARTITIONED_ASSETS[0], PARTITIONED_ASSETS[2]]  # raw_records, student_scores
        res = dg.materialize(ALL, selection=sel, partition_key="lean_qa", instance=instance, resources={"mira": mira})
        assert res.success
        assert server.chat_requests == 67
        assert {b["model"] for b in server.requests} == {"whw06/MIRA-QA-Group3"}
        res = dg.materialize(ALL, selection=sel, partition_key="lean_qa", instance=instance, resources={"mira": mira})
        assert res.success
        assert server.chat_requests == 67  # the second materialisation sent nothing
    df = pl.read_parquet(tmp_path / "home" / "tables" / "student_scores" / "lean_qa.parquet")
    assert df["status"].to_list() == ["ok"] * 67
    assert df["from_cache"].all()
    # the key never reaches the tables, the cache or Dagster's event log
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert b"sk-very-secret" not in path.read_bytes(), path
    logs = instance.all_logs(res.run_id)
    assert not any("sk-very-secret" in str(e) for e in logs)

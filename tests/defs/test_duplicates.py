"""The same content in two sources: one record in the budget, the selection and the export, owned by the source
whose name sorts first; the overlap reported per source pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from mira_dagster.defs.partitions import in_process_instance, register_sources
from mira_dagster.defs.resources import MiraResource
from tests.conftest import ANCHORS, SAMPLE
from tests.pipeline import run_pipeline

LEAN = SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
SOURCES = ["zeta", "alpha", "agent_openhands"]


def _config(tmp_path: Path) -> Path:
    """zeta (lines 31-67 of the lean sample) is listed before alpha (lines 1-50): they share lines 31-50."""
    data = tmp_path / "data"
    data.mkdir()
    lines = LEAN.read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "alpha.jsonl").write_text("".join(lines[:50]), encoding="utf-8")
    (data / "zeta.jsonl").write_text("".join(lines[30:]), encoding="utf-8")
    shutil.copy(SAMPLE / "swe_openhands_resolver_output.jsonl", data / "agent.jsonl")
    for name in ("group_2_dim_anchors.jsonl", "group_D_dim_anchors.jsonl"):
        shutil.copy(ANCHORS / name, tmp_path / name)
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        """
groups:
  "2": {family: qa_with_think, student_model: whw06/MIRA-QA-Group3, anchors: group_2_dim_anchors.jsonl}
  D: {family: agent, student_model: whw06/MIRA-Agent-Group4, anchors: group_D_dim_anchors.jsonl}
sources:
  zeta: {group: "2", format: qa_with_think, files: [data/zeta.jsonl]}
  alpha: {group: "2", format: qa_with_think, files: [data/alpha.jsonl]}
  agent_openhands: {group: D, format: agent, files: [data/agent.jsonl]}
pipeline: {teacher_sample_min: 10, min_heldout: 4}
""",
        encoding="utf-8",
    )
    return cfg


def test_shared_records_count_once_and_belong_to_the_first_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(_config(tmp_path)), home=str(home))
    instance = in_process_instance()
    register_sources(instance, SOURCES)
    run_pipeline(mira, instance, SOURCES)

    con = duckdb.connect(str(home / "mira.duckdb"), read_only=True)
    raw = con.sql("SELECT source, record_id, n_tokens FROM raw_records").pl()
    alpha = set(raw.filter(pl.col("source") == "alpha")["record_id"])
    zeta = set(raw.filter(pl.col("source") == "zeta")["record_id"])
    shared = alpha & zeta
    assert len(alpha) == 50 and len(zeta) == 37 and len(shared) == 20
    # the reply cache scored the shared content once, but both sources have their student_scores rows
    assert con.sql("SELECT count(*) FROM student_scores WHERE source IN ('alpha', 'zeta')").fetchall()[0][0] == 87

    # one row per record in the aggregate: the shared ones under alpha (sorts first, although listed second)
    agg = con.sql("SELECT source, record_id, n_tokens FROM aggregated_scores").pl()
    assert agg["record_id"].n_unique() == agg.height == 67 + 2
    owners = dict(agg.filter(pl.col("record_id").is_in(list(shared))).select("record_id", "source").iter_rows())
    assert set(owners.values()) == {"alpha"}

    # the budget counts each record once: half of the tokens each source owns (per-source retention), so zeta's
    # budget leaves out the content alpha owns
    budgets = dict(con.sql("SELECT DISTINCT unit, budget_tokens FROM selected_subset").fetchall())
    zeta_only = raw.filter((pl.col("source") == "zeta") & ~pl.col("record_id").is_in(list(shared)))
    assert budgets["zeta"] == 0.5 * zeta_only["n_tokens"].sum()
    assert budgets["alpha"] == 0.5 * raw.filter(pl.col("source") == "alpha")["n_tokens"].sum()
    sel = con.sql("SELECT source, record_id FROM selected_subset").pl()
    assert sel["record_id"].n_unique() == sel.height
    assert sel.filter((pl.col("source") == "zeta") & pl.col("record_id").is_in(list(shared))).is_empty()

    # the export: each kept record once, with its owner
    out = home / "exports" / "selected_subset"
    manifest = json.loads((out / "manifest.json").read_text())
    lines = [line for f in manifest["files"] for line in (out / f["file"]).read_text(encoding="utf-8").splitlines()]
    exported = pl.DataFrame([json.loads(line) for line in lines]).select(
        pl.col("mira_record_id").alias("record_id"), pl.col("mira_source").alias("source")
    )
    assert exported.height == manifest["records"] == sel.height
    assert exported["record_id"].n_unique() == exported.height
    assert set(exported.filter(pl.col("record_id").is_in(list(shared)))["source"]) <= {"alpha"}

    # the overlap per source pair, as a table and in the metadata
    overlap = con.sql("SELECT * FROM source_overlap").pl()
    tokens_shared = int(
        raw.filter(pl.col("record_id").is_in(list(shared)) & (pl.col("source") == "alpha"))["n_tokens"].sum()
    )
    assert overlap.select("source_a", "source_b", "records_shared", "tokens_shared").rows() == [
        ("alpha", "zeta", 20, tokens_shared)
    ]
    meta = instance.get_latest_materialization_event(dg.AssetKey("selected_subset")).asset_materialization.metadata
    assert "| alpha" in meta["source_overlap"].value and "zeta" in meta["source_overlap"].value

    # the summary: zeta's shared records are owned elsewhere, and kept only under alpha
    summary = {r["source"]: r for r in mira.store().query("run_summary").iter_rows(named=True)}
    assert summary["zeta"]["duplicates_elsewhere"] == 20 and summary["alpha"]["duplicates_elsewhere"] == 0
    assert summary["zeta"]["records_in"] == 37 and summary["zeta"]["records_scored"] == 37
    kept = sel.group_by("source").len()
    assert dict(kept.iter_rows()) == {s: summary[s]["records_kept"] for s in SOURCES if summary[s]["records_kept"]}

"""The warnings a released student's scoring steps give: no calibration reference, or a rubric it was not trained
on (metadata and log, once per step)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import dagster as dg
import polars as pl

from mira_dagster.definitions import ALL_ASSETS, DISCOVERY_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource


def test_scoring_steps_report_the_warning_in_their_metadata(small_config: Path, tmp_path: Path) -> None:
    """The shipped anchors have no references: both scoring steps of a released student's group say so."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    res = dg.materialize(
        ALL_ASSETS, selection=PARTITIONED_ASSETS, partition_key="lean_qa", instance=instance, resources={"mira": mira}
    )
    assert res.success
    for key in ("teacher_labels", "student_scores"):
        meta = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata
        assert meta["calibration_references"].value == 0
        (warning,) = meta["warnings"].value
        assert "whw06/MIRA-QA-Group3 is prompted without any calibration reference" in warning
    logged = [
        e.level for e in instance.all_logs(res.run_id) if "without any calibration reference" in (e.message or "")
    ]
    # once per step; a note, not a warning, while the offline stand-in scores (it reads no prompt)
    assert logged == [logging.INFO, logging.INFO]


def test_references_generated_from_the_judgments_end_the_warning(small_config: Path, tmp_path: Path) -> None:
    """anchor_rubric gives the configured rubric (no references) the teacher judgments nearest its 12 largest slots'
    centres, in a generated file beside the shipped one (unchanged); the scorers then prompt with them, no warning."""
    shipped = small_config.parent / "group_2_dim_anchors.jsonl"
    before = shipped.read_bytes()
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    raw, teacher, student = PARTITIONED_ASSETS

    def run(selection: list, partition: str) -> dg.ExecuteInProcessResult:
        res = dg.materialize(
            ALL_ASSETS, selection=selection, partition_key=partition, instance=instance, resources={"mira": mira}
        )
        assert res.success
        return res

    run([raw], "lean_qa")
    run(DISCOVERY_ASSETS, "2")
    assert shipped.read_bytes() == before  # the shipped file is never changed
    generated = tmp_path / "home" / "anchors" / "group_2_dim_anchors.generated.jsonl"
    lines = [json.loads(x) for x in generated.read_text().splitlines()]
    assert [x["name"] for x in lines] == [json.loads(x)["name"] for x in before.decode().splitlines()]
    refs = [(x["slot"], r) for x in lines for r in x["calibration_references"]]
    assert len(refs) == 12 and len({s for s, _ in refs}) == 12
    judged = pl.read_parquet(tmp_path / "home" / "tables" / "teacher_judgments" / "2.parquet")
    sha = hashlib.sha256(before).hexdigest()
    for _, ref in refs:
        assert ref["configured_sha256"] == sha and ref["configured_file"] == "group_2_dim_anchors.jsonl"
        assert ref["origin"] == "teacher judgment nearest the slot's cluster centre" and ref["cluster_items"] >= 1
        # the reference is a real judgment item, its score and rationale as the teacher gave them
        item = judged.filter(
            (pl.col("record_id") == ref["record_id"]) & (pl.col("dimension") == ref["source_dimension"])
        )
        assert (ref["score"], ref["rationale"]) in list(zip(item["score"], item["rationale"], strict=True))
    meta = instance.get_latest_materialization_event(dg.AssetKey("anchor_rubric")).asset_materialization.metadata
    assert meta["configured_references"].value.startswith("written to ")
    # a later discovery run keeps them (new references would be a new scorer_version: the whole group re-asked)
    made = generated.read_bytes()
    run(DISCOVERY_ASSETS, "2")
    meta = instance.get_latest_materialization_event(dg.AssetKey("anchor_rubric")).asset_materialization.metadata
    assert meta["configured_references"].value.startswith("kept ") and generated.read_bytes() == made

    res = run([teacher, student], "lean_qa")
    for key in ("teacher_labels", "student_scores"):
        meta = instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata
        assert meta["calibration_references"].value == 12
        assert not meta["warnings"].value if "warnings" in meta else True
    assert not [e for e in instance.all_logs(res.run_id) if "without any calibration reference" in (e.message or "")]
    prompt = mira.scorer("student", "2")[0].system_prompt
    assert "none yet" not in prompt and prompt.count("\n- ") == 12


def test_a_generated_file_made_from_another_configured_file_is_not_used(small_config: Path, tmp_path: Path) -> None:
    """Editing the configured file makes the generated copy stale: the scorers use the configured file again."""
    mira = MiraResource(config_path=str(small_config), home=str(tmp_path / "home"))
    instance = in_process_instance()
    raw = PARTITIONED_ASSETS[0]
    for selection, partition in (([raw], "lean_qa"), (DISCOVERY_ASSETS, "2")):
        dg.materialize(
            ALL_ASSETS, selection=selection, partition_key=partition, instance=instance, resources={"mira": mira}
        )
    assert mira.rubric("2").n_references() == 12
    shipped = small_config.parent / "group_2_dim_anchors.jsonl"
    shipped.write_text(shipped.read_text().replace("Factual Correctness", "Factual Accuracy"))
    assert mira.rubric("2").n_references() == 0

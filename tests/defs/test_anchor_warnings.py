"""The warnings a released student's scoring steps give: no calibration reference, or a rubric it was not trained
on (metadata and log, once per step)."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
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

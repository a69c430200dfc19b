from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.package_data import ANCHORS_DIR

SAMPLE = PROJECT_ROOT / "data" / "sample"
ANCHORS = ANCHORS_DIR  # the shipped anchors files (package data)


@pytest.fixture(autouse=True)
def _no_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their endpoints explicitly; nothing leaks in from the environment."""
    import os

    for var in list(os.environ):
        if var.startswith(("MIRA_STUDENT_", "MIRA_TEACHER_", "MIRA_EMBED_")):
            monkeypatch.delenv(var, raising=False)
    # `mira ...` called in process (cli.main) sets these for its process: restored after each test, set or not
    for var in ("MIRA_CONFIG", "MIRA_HOME", "DAGSTER_HOME"):
        monkeypatch.setenv(var, os.environ.get(var, ""))
        if not os.environ[var]:
            monkeypatch.delenv(var)


@pytest.fixture(autouse=True)
def _reset_defs_state_storage() -> Iterator[None]:
    """`dg.materialize` enters its instance, which sets a process-wide "current defs state storage" that nothing
    resets (dagster 1.13.27). Once that instance is garbage-collected, the next in-process materialisation
    fails ("undefined DagsterInstance weakref", or "unable to open database file" once its folder is gone),
    depending on when the collector ran. Reset it around each test."""
    from dagster._core.storage.defs_state import base

    base._current_storage.set(None)
    yield
    base._current_storage.set(None)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    """A registry with one small source per group, backed by copies of real sample files."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl", "swe_openhands_resolver_output.jsonl"):
        shutil.copy(SAMPLE / name, data / name)
    for name in ("group_2_dim_anchors.jsonl", "group_D_dim_anchors.jsonl"):
        shutil.copy(ANCHORS / name, tmp_path / name)
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        """
groups:
  "2": {family: qa_with_think, student_model: whw06/MIRA-QA-Group3, anchors: group_2_dim_anchors.jsonl,
        description: QA / math reasoning with thinking traces}
  D: {family: agent, student_model: whw06/MIRA-Agent-Group4, anchors: group_D_dim_anchors.jsonl,
      description: Agent / SWE repository repair}
sources:
  lean_qa: {group: "2", format: qa_with_think, files: [data/lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl]}
  agent_openhands: {group: D, format: agent, files: [data/swe_openhands_resolver_output.jsonl]}
pipeline: {teacher_sample_min: 10, min_heldout: 4}
""",
        encoding="utf-8",
    )
    return cfg

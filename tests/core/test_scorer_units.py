"""Each scorer unit of the scope gets its own student: its endpoint (MIRA_STUDENT_BASE_URL_<UNIT>), its model name,
its rubric's prompts, and so its own scorer_version."""

from __future__ import annotations

import socket

import pytest

from mira_dagster.core.config import MiraConfig
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_judge, make_scorer
from mira_dagster.package_data import ANCHORS_DIR
from mira_dagster.settings import Settings

ANCHORS = ANCHORS_DIR


def _scoped(scope: str) -> MiraConfig:
    cfg = load_config()
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"scorer_scope": scope})})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_source_unit_uses_its_own_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _scoped("source")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.setenv("MIRA_STUDENT_BASE_URL_LEAN_QA", url)
    settings = Settings.from_env()
    rubric = load_rubric(ANCHORS / "group_2_dim_anchors.jsonl", "lean_qa", "qa_with_think")
    unit = cfg.unit_of("lean_qa")
    spec, _, where = make_scorer("student", unit, cfg, rubric, settings.endpoint("student", unit))
    assert spec.backend == "openai" and url in where and spec.model == "mira-source-student-lean_qa"
    unit = cfg.unit_of("qwq")
    other, _, where = make_scorer("student", unit, cfg, rubric, settings.endpoint("student", unit))
    assert other.backend == "offline" and "offline" in where and "mira-source-student-qwq" in other.model
    assert other.version != spec.version


def test_the_global_unit_judges_each_record_in_its_own_family() -> None:
    cfg = _scoped("global")
    spec, _, _ = make_judge(cfg.unit_of("qwq"), cfg)
    assert "## Trajectory" in spec.user_template and "## Thinking" in spec.user_template
    group_spec, _, _ = make_judge(load_config().unit_of("qwq"), load_config())
    assert "## Trajectory" not in group_spec.user_template

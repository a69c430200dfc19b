"""The registry at the boundary: names that would escape MIRA_HOME or break SQL are refused, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mira_dagster.core.config import ConfigError
from mira_dagster.io.registry import load_config


def _registry(tmp_path: Path, source_name: str) -> Path:
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    path = tmp_path / "groups.yaml"
    path.write_text(
        f"""
groups:
  "2": {{family: qa_with_think, student_model: m}}
sources:
  {source_name!r}: {{group: "2", format: qa_with_think, files: [a.jsonl]}}
""",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("name", ["../outside", "a/b", "x'; DROP TABLE raw_records; --", "Upper", "", "a" * 65, "1st"])
def test_unsafe_source_names_are_refused(tmp_path: Path, name: str) -> None:
    path = _registry(tmp_path, name)
    with pytest.raises(ConfigError, match=r"(?s)groups\.yaml.*source name .* must match"):
        load_config(path)


def test_a_safe_name_loads_with_paths_relative_to_the_registry(tmp_path: Path) -> None:
    cfg = load_config(_registry(tmp_path, "my_source_2"))
    assert cfg.sources["my_source_2"].files == [(tmp_path / "a.jsonl").resolve()]


def test_a_watched_folder_of_an_unknown_group_is_refused(tmp_path: Path) -> None:
    path = _registry(tmp_path, "ok")
    path.write_text(path.read_text(encoding="utf-8") + "watch: {Z: incoming}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="watch: unknown group 'Z'"):
        load_config(path)


def _scoped(scope: str) -> object:
    cfg = load_config()
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"scorer_scope": scope})})


def test_scorer_units_of_each_scope() -> None:
    group, one, per_source = _scoped("group"), _scoped("global"), _scoped("source")
    units = group.scorer_units()
    assert list(units) == ["2", "D"] and units["D"].sources == ["agent_openhands", "davinc_dev", "swe_qa"]
    assert units["2"].student_model == "whw06/MIRA-QA-Group3" and units["2"].anchors is not None
    (only,) = one.scorer_units().values()
    assert only.key == "global" and only.family == "mixed" and only.sources == one.source_names()
    assert only.anchors is None and only.group is None  # no released rubric or student for one global scorer
    assert list(per_source.scorer_units()) == per_source.source_names()
    assert per_source.unit_of("qwq").sources == ["qwq"] and per_source.unit_of("qwq").family == "qa_with_think"
    assert {group.unit_of(s).key for s in group.source_names()} == {"2", "D"}
    assert {one.unit_of(s).key for s in one.source_names()} == {"global"}


def test_a_group_switch_wins_over_the_pipeline_one(tmp_path: Path) -> None:
    path = _registry(tmp_path, "a")
    text = path.read_text().replace("student_model: m}", "student_model: m, constrained_decoding: off}")
    path.write_text(text + "pipeline: {constrained_decoding: on}\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.scorer_units()["2"].constrained_decoding == "off"


def test_the_removed_selection_variant_names_its_replacements(tmp_path: Path) -> None:
    path = _registry(tmp_path, "a")
    path.write_text(path.read_text() + "pipeline: {selection_variant: group}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"selection_variant was removed.*scorer_scope.*normalise_within"):
        load_config(path)

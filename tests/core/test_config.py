"""The registry at the boundary: names that would escape MIRA_HOME or break SQL are refused, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mira_dagster.core.config import ConfigError, load_config


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

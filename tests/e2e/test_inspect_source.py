"""`mira inspect --source X` reads the files as the source's ingest would: its `preference` (which side of a pair is
the record, or both), and names each file's container."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mira_dagster.cli import main
from tests.conftest import ANCHORS

HELDOUT = Path(__file__).parents[1] / "fixtures" / "heldout"


@pytest.mark.parametrize(
    ("preference", "line"),
    [
        (None, "qa_with_think: 6 records (100%); layouts: ranked_answers:chosen 6"),
        ("rejected", "qa_with_think: 6 records (100%); layouts: ranked_answers:rejected 6"),
        ("both", "qa_with_think: 12 records (200%); layouts: ranked_answers:chosen 6, ranked_answers:rejected 6"),
    ],
)
def test_inspect_source_honours_preference(
    preference: str | None, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for var in ("MIRA_CONFIG", "MIRA_HOME", "DAGSTER_HOME"):  # set by the command; restored after the test
        monkeypatch.setenv(var, str(tmp_path / "unused"))
    shutil.copy(ANCHORS / "group_2_dim_anchors.jsonl", tmp_path / "a2.jsonl")
    source = {"group": "2", "format": "qa_with_think", "files": [str(HELDOUT / "nectar.jsonl")]}
    if preference:
        source["preference"] = preference
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "groups": {"2": {"family": "qa_with_think", "student_model": "m", "anchors": "a2.jsonl"}},
                "sources": {"nectar": source},
            }
        )
    )
    code = main(["inspect", "--config", str(cfg), "--home", str(tmp_path / "home"), "--source", "nectar"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "read as: JSON Lines" in out and line in out
    assert not (tmp_path / "home" / "scratch").exists() or not any((tmp_path / "home" / "scratch").iterdir())

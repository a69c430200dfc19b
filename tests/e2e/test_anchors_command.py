"""`mira anchors check FILE`, run as a user runs it: a report, then the system prompt exactly as the scorer sends it;
exit 1 with one line naming the problem for an unusable file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.registry import load_config
from mira_dagster.package_data import ANCHORS_DIR
from tests.helpers import system_prompt

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parents[1] / "fixtures" / "anchors"
GOLDEN = Path(__file__).parents[1] / "core" / "golden"


def mira(*args: str | Path, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_"))}
    return subprocess.run(
        [BIN / "mira", "anchors", "check", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def prompt_part(stdout: str) -> str:
    return stdout.split("=== system prompt ===\n", 1)[1]


def test_a_downloaded_file_with_references() -> None:
    path = FIXTURES / "upstream" / "group_2_dim_anchors.jsonl"
    run = mira(path)  # the group comes from the file name
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    report = run.stdout.split("=== system prompt ===")[0]
    assert "group 2, family qa_with_think: 15 slots" in report
    assert "[A1] Factual Correctness  facet combined (derived: no facet in the file)" in report
    assert "3 reference(s), 1 shown, other fields: centroid_norm, cluster_id, top_names" in report
    assert "calibration references: 17, 12 shown in the system prompt (at most 12): A1, A2," in report
    cfg = load_config()
    expected = system_prompt(load_rubric(path, "2", "qa_with_think"), cfg.groups["2"].description)
    assert prompt_part(run.stdout) == expected + "\n"


def test_the_shipped_files_show_the_golden_system_prompts() -> None:
    for group, family in (("2", "qa_with_think"), ("D", "agent")):
        run = mira(ANCHORS_DIR / f"group_{group}_dim_anchors.jsonl", "--group", group)
        assert run.returncode == 0, run.stderr
        assert "calibration references: none" in run.stdout
        golden = (GOLDEN / f"prompt_group_{group}.txt").read_text(encoding="utf-8")
        system = golden.split("=== system ===\n", 1)[1].split("=== user ===\n", 1)[0]
        assert prompt_part(run.stdout) == system, family


def test_a_file_for_no_known_group_needs_a_family(tmp_path: Path) -> None:
    path = tmp_path / "downloaded.jsonl"
    path.write_text((FIXTURES / "strings_agent.jsonl").read_text())
    run = mira(path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "mira: cannot tell the prompt family: pass --group G (from the registry) or --family F"
    ]
    run = mira(path, "--family", "agent")
    assert run.returncode == 0, run.stderr
    assert "- Goal Achievement: 7/10 — string reference 3" in prompt_part(run.stdout)


def test_an_unusable_file_exits_1_with_one_line(tmp_path: Path) -> None:
    rows = (ANCHORS_DIR / "group_D_dim_anchors.jsonl").read_text().splitlines()
    bad = [*rows[:4], json.dumps({"slot": 5, "cluster_size": 3}), *rows[5:]]
    path = tmp_path / "group_D_dim_anchors.jsonl"
    path.write_text("\n".join(bad) + "\n")
    run = mira(path)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [f"mira: {path}:5: slot 5 has no name (`name` must be a non-empty string)"]
    path.write_text("\n".join(rows[:14]) + "\n")
    run = mira(path, "--group", "D")
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"mira: {path}: 14 slots, slot(s) 15 missing (an anchors file has the 15 slots 1-15, one a line)"
    ]
    run = mira(tmp_path / "nope.jsonl", "--group", "D")
    assert run.returncode == 1 and "anchor file not found" in run.stderr


def test_show_ours_marks_every_line_of_both_messages() -> None:
    run = mira(ANCHORS_DIR / "group_2_dim_anchors.jsonl", "--show-ours")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "=== system prompt ===" not in out  # the marked prompt replaces the plain one
    system = out.split("=== system prompt: ", 1)[1].split("\n", 1)[1].split("=== user message", 1)[0]
    user = out.split("=== user message (a placeholder qa_with_think record): ", 1)[1].split("\n", 1)[1]
    user, why = user.split("=== why ours ===\n", 1)
    for line in (system + user).splitlines():
        assert line.startswith(("card | ", "ours | ")) or line.strip() == "|", line
    assert "ours | You are MIRA's anchored data-quality scorer for group 2 (" in system
    assert "ours | Score this record." in user and "ours | ## Thinking" in user
    assert "card | <the record's thinking>" in user
    assert "card | [A1] Factual Correctness: <score>/10 — <justification>" in user
    assert "card | brief: <one-sentence summary>" in user
    assert "ours | Dimensions:" in user  # group 2's slots look at three facets: the guide says which
    assert "- a heading, so the record's parts cannot run together" in why.splitlines()


def test_where_each_reference_came_from(tmp_path: Path) -> None:
    """A generated file's references name their origin; the shipped file says its scorers use the generated one
    (in MIRA_HOME, here the working directory's .mira) when it was made from this very file."""
    shipped = ANCHORS_DIR / "group_2_dim_anchors.jsonl"
    sha = hashlib.sha256(shipped.read_bytes()).hexdigest()
    rows = [json.loads(x) for x in shipped.read_text().splitlines()]
    rows[0]["calibration_references"] = [
        {
            "dimension": rows[0]["name"],
            "score": 8.0,
            "rationale": "Every step checks out.",
            "origin": "teacher judgment nearest the slot's cluster centre",
            "record_id": "r-1",
            "source": "lean_qa",
            "source_dimension": "Correctness",
            "cluster_items": 9,
            "configured_file": shipped.name,
            "configured_sha256": sha,
        }
    ]
    generated = tmp_path / ".mira" / "anchors" / "group_2_dim_anchors.generated.jsonl"
    generated.parent.mkdir(parents=True)
    generated.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = PROJECT_ROOT / "anchors" / "groups.yaml"
    run = mira(generated, "--config", config, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (
        "  [A1] from teacher judgment nearest the slot's cluster centre, record r-1 of source lean_qa, judged as "
        "'Correctness', 9 judged items in the slot's cluster, for group_2_dim_anchors.jsonl"
    ) in run.stdout
    run = mira(shipped, "--config", config, cwd=tmp_path)
    assert "its scorers use the 1 that anchor_rubric generated from the teacher's judgments" in run.stdout
    generated.write_text(generated.read_text().replace(sha, "0" * 64))  # made from another version of the file
    run = mira(shipped, "--config", config, cwd=tmp_path)
    assert "was generated from another version of this file: not used" in run.stdout

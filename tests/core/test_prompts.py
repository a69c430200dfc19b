"""The full prompts for one record of each seed group are kept in tests/core/golden/, so a reviewer
can read exactly what the scorer sees; a change to them is a change of scorer_version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mira_dagster.core.config import load_config
from mira_dagster.core.prompts import render_user, system_prompt, user_template
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import load_rubric

GOLDEN = Path(__file__).parent / "golden"

QA = Record(
    record_id="r1",
    source="reason_dpsk32",
    group_id="2",
    format="qa_with_think",
    layout="question_answer",
    question="What is 7 × 6?",
    thinking="Seven sixes: 6+6+6+6+6+6+6 = 42.",
    answer="The product is \\boxed{42}.",
    n_tokens=30,
    origin_file="x.jsonl",
    origin_line=1,
)
AGENT = Record(
    record_id="r2",
    source="swe_qa",
    group_id="D",
    format="agent",
    layout="agent_turns",
    task="Fix the missing colon in tests/missing_colon.py.",
    trajectory="### assistant\nLet me open the file.\n[action] open tests/missing_colon.py\n\n### tool\n1: def f()\n",
    outcome="diff --git a/tests/missing_colon.py b/tests/missing_colon.py\n-def f()\n+def f():",
    n_tokens=60,
    origin_file="y.jsonl",
    origin_line=3,
)


def full_prompt(record: Record) -> str:
    cfg = load_config()
    group = cfg.groups[record.group_id]
    rubric = load_rubric(group.anchors, record.group_id, group.family)
    system = system_prompt(rubric, group.description)
    user = render_user(user_template(rubric), record)
    return f"=== system ===\n{system}\n=== user ===\n{user}\n"


@pytest.mark.parametrize(("record", "name"), [(QA, "prompt_group_2.txt"), (AGENT, "prompt_group_D.txt")])
def test_full_prompt_matches_golden(record: Record, name: str) -> None:
    text = full_prompt(record)
    if os.environ.get("MIRA_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text, encoding="utf-8")
    assert text == (GOLDEN / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("record", [QA, AGENT])
def test_user_prompt_follows_contract(record: Record) -> None:
    cfg = load_config()
    group = cfg.groups[record.group_id]
    rubric = load_rubric(group.anchors, record.group_id, group.family)
    user = render_user(user_template(rubric), record)
    lines = user.splitlines()
    slot_lines = [ln for ln in lines if ln.startswith("[A")]
    assert slot_lines == [f"[A{d.slot}] {d.name}: <score>/10 — <justification>" for d in rubric.dims]
    assert lines[-4:] == [
        "overall: <0-100>",
        "training_recommendation: <keep | downsample | drop>",
        "domain_tag: <short tag>",
        "brief: <one-sentence summary>",
    ]


def test_system_prompt_is_identical_for_every_record_of_a_group() -> None:
    cfg = load_config()
    rubric = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    prompts = {system_prompt(rubric, cfg.groups["2"].description) for _ in range(3)}
    assert len(prompts) == 1
    assert "What is 7" not in prompts.pop()


def test_qa_with_think_lists_five_dimensions_per_facet() -> None:
    cfg = load_config()
    rubric = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    template = user_template(rubric)
    for facet_text in (
        "judge the thinking trace itself",
        "judge the thinking trace and the answer together",
        "judge the question and the final answer",
    ):
        line = next(ln for ln in template.splitlines() if ln.endswith(facet_text))
        assert line.count("A") == 5


def test_record_text_that_looks_like_a_placeholder_stays_literal() -> None:
    cfg = load_config()
    rubric = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think")
    rec = QA.model_copy(update={"question": "Explain ⟦answer⟧ please"})
    user = render_user(user_template(rubric), rec)
    assert "Explain ⟦answer⟧ please" in user

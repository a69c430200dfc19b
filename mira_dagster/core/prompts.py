"""The scorer prompts: one system prompt per group (byte-identical for all its records, so vLLM's
prefix cache serves it) and one user template per group, filled with a record's fields."""

from __future__ import annotations

import re

from mira_dagster.core.records import Record
from mira_dagster.core.rubric import FAMILY_FACETS, Rubric

TRAILER = (
    "overall: <0-100>\n"
    "training_recommendation: <keep | downsample | drop>\n"
    "domain_tag: <short tag>\n"
    "brief: <one-sentence summary>"
)

_FACET_TEXT = {
    "think": "judge the thinking trace itself",
    "combined": "judge the thinking trace and the answer together",
    "qa": "judge the question and the final answer",
    "agent": "judge the agent's trajectory and outcome",
}

_PLACEHOLDER = re.compile(r"⟦(\w+)⟧")


def system_prompt(rubric: Rubric, description: str) -> str:
    lines = [
        f"You are MIRA's anchored data-quality scorer for group {rubric.group} ({description}).",
        "You score one mid-training record at a time on the group's 15 anchor dimensions, each from 0 "
        "(absent or harmful) to 10 (exemplary), with a one-sentence justification, then give an overall "
        "score from 0 to 100, a training recommendation, a short domain tag and a one-sentence brief.",
        "",
        "Anchor dimensions (sorted by how much of the corpus they describe):",
    ]
    lines += [f"[A{d.slot}] {d.name}" for d in rubric.dims]
    lines += ["", "Calibration references (scored examples that fix the scale):"]
    # at most 12 (the cards' top-12), one line each; CalibrationReference.line says how each part is shown
    refs = rubric.shown_references()
    if refs:
        lines += [ref.line(dim.name) for dim, ref in refs]
    else:
        lines.append("- none yet: use the full 0-10 range, 5 meaning typical for this group.")
    lines += ["", "Answer in exactly the line format the user asks for, and nothing else."]
    return "\n".join(lines)


def _record_sections(family: str) -> str:
    if family == "agent":
        return "## Task\n⟦task⟧\n\n## Trajectory\n⟦trajectory⟧\n\n## Outcome (final patch or submission)\n⟦outcome⟧"
    if family == "qa_with_think":
        return "## Question\n⟦question⟧\n\n## Thinking\n⟦thinking⟧\n\n## Answer\n⟦answer⟧"
    return "## Question\n⟦question⟧\n\n## Answer\n⟦answer⟧"


def user_template(rubric: Rubric) -> str:
    """The record-independent user message with ⟦field⟧ placeholders; part of scorer_version."""
    guide = [
        f"- {', '.join(f'A{d.slot}' for d in rubric.dims if d.facet == facet)}: {_FACET_TEXT[facet]}"
        for facet in FAMILY_FACETS[rubric.family]
        if any(d.facet == facet for d in rubric.dims)  # a file may leave a facet without slots
    ]
    rows = [f"[A{d.slot}] {d.name}: <score>/10 — <justification>" for d in rubric.dims]
    return "\n".join(
        [
            "Score this record.",
            "",
            _record_sections(rubric.family),
            "",
            "Dimensions:",
            *guide,
            "",
            "Reply with exactly these lines, in this order:",
            *rows,
            TRAILER,
        ]
    )


def render_user(template: str, record: Record) -> str:
    """Fill the placeholders in one pass, so record text that looks like a placeholder stays literal."""
    values = record.model_dump()

    def fill(m: re.Match[str]) -> str:
        return values.get(m.group(1)) or "(none)"

    return _PLACEHOLDER.sub(fill, template)


def contract_regex(rubric: Rubric, rationale_chars: int = 200, tag_chars: int = 40) -> str:
    """The scorer contract as a regex, for servers that constrain decoding (vLLM structured outputs).

    Slot names are fixed, scores are integers 0-10, overall 0-100; rationale lengths are bounded so a
    constrained reply always fits in max_tokens.
    """
    text = rf"[^\n]{{1,{rationale_chars}}}"
    rows = [rf"\[A{d.slot}\] {re.escape(d.name)}: (10|[0-9])/10 — {text}\n" for d in rubric.dims]
    trailer = (
        r"overall: (100|[1-9]?[0-9])\n"
        r"training_recommendation: (keep|downsample|drop)\n"
        rf"domain_tag: [^\n]{{1,{tag_chars}}}\n"
        rf"brief: {text}\n"
    )
    return "".join(rows) + trailer


def judge_system_prompt(description: str) -> str:
    return (
        f"You are a frontier data-quality judge for mid-training data ({description}). You propose your own "
        "quality dimensions for each record, score each from 0 to 10 and justify each score in one sentence."
    )


def judge_template(family: str) -> str:
    """The free-form judging prompt of rubric discovery (Phase 1): the teacher names its own dimensions."""
    sections = (
        "Group the dimensions under the headings `Thinking:` (the reasoning trace), `Answer:` (question and final "
        "answer) and `Both:` (the trace and the answer together)."
        if family == "qa_with_think"
        else ""
    )
    return "\n".join(
        [
            "Score this record.",
            "",
            _record_sections(family),
            "",
            "Judge this record freely: name the 5 to 10 quality dimensions that matter most for it, in your own "
            f"words. {sections}".rstrip(),
            "One dimension per line: <dimension name>: <score>/10 — <one-sentence justification>",
        ]
    )

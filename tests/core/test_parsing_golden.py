"""Golden table: replies written the way real models format them, each with everything the parser must read.

Each reply is a file in tests/fixtures/replies/. Group 2 (QA with thinking, a repeated slot name) and group D
(agent, names with slashes and parentheses) rubrics are used as in the model cards. Rows marked `defect:` are
the measured failures of the previous parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mira_dagster.core.parsing import parse_reply

REPLIES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"

QA = [9.0, 7.0, 8.0, 6.0, 7.0, 8.0, 9.0, 8.0, 9.0, 7.0, 8.0, 8.0, 6.0, 5.0, 6.0]
AG = [7.0, 6.0, 8.0, 7.0, 5.0, 8.0, 6.0, 9.0, 6.0, 8.0, 9.0, 7.0, 8.0, 7.0, 9.0]
QA_TRAILER = (
    78.0,
    "keep",
    "math/algebra",
    "A correct, well-explained algebra solution whose trace matches its answer.",
)
AG_TRAILER = (
    72.0,
    "keep",
    "swe/python-bugfix",
    "A focused bug fix with a minimal diff, verified only by the target test.",
)
NO_TRAILER = (None, None, None, None)
QA_R1 = "The final value 7/12 is correct and every algebraic step checks out."
MISSING_TRAILER = "missing overall, training_recommendation, domain_tag, brief"


def with_(scores: list[float], **at: float | None) -> list[float | None]:
    """`scores` with some slots replaced: with_(QA, a9=None)."""
    out: list[float | None] = list(scores)
    for k, v in at.items():
        out[int(k[1:]) - 1] = v
    return out


def first(scores: list[float], n: int) -> list[float | None]:
    return [*scores[:n], *[None] * (15 - n)]


def missing_from(n: int) -> str:
    return "missing slots " + ",".join(f"A{i}" for i in range(n, 16))


@dataclass
class Row:
    file: str
    status: str
    scores: list[float | None]
    trailer: tuple[float | None, str | None, str | None, str | None]
    issues: list[str] = field(default_factory=list)
    finish_reason: str | None = "stop"
    rationales: dict[int, str | None] = field(default_factory=dict)


ROWS = [
    Row("01_contract_exact", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: markdown bullets and bold
    Row("02_gpt4o_bullets_bold", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # preamble and closing remark, no final newline (defect: was "cut off")
    Row("03_claude_preamble_closing", "ok", QA, QA_TRAILER),
    # defect: `**[A1]** **Name**: **7**/10`
    Row("04_emphasis_split", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: `1. [A1] ...`
    Row("05_numbered_list", "ok", QA, QA_TRAILER),
    Row("06_code_fence", "ok", QA, QA_TRAILER),
    # defect: a <think> draft with its own scores and trailer came out with status ok
    Row("07_r1_think_draft", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # reasoning whose opening tag stayed in the prompt: only </think> is in the reply
    Row("08_r1_no_open_tag", "ok", QA, QA_TRAILER),
    # defect: an unclosed <think> holding a draft, then the final set
    Row(
        "09_qwen_unclosed_think",
        "ok",
        QA,
        QA_TRAILER,
        [
            "unclosed <think> block; read the last set of slot lines in it",
            "2 sets of slot lines; the last one was read",
        ],
        rationales={1: QA_R1},
    ),
    # defect: other reasoning wrappers
    Row("10_reasoning_wrapper", "ok", AG, AG_TRAILER),
    Row("11_kimi_markers_fullwidth", "ok", AG, AG_TRAILER),
    # cut inside an unclosed think block: the draft is not the answer
    Row(
        "12_cut_inside_think",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        [
            "reply cut off inside an unclosed <think> block; its draft is ignored",
            missing_from(1),
            MISSING_TRAILER,
            "reply cut off",
        ],
        finish_reason="length",
    ),
    Row(
        "13_think_then_cut_answer",
        "partial",
        first(QA, 8),
        NO_TRAILER,
        ["A9: score cut off", missing_from(10), MISSING_TRAILER, "reply cut off"],
        finish_reason="length",
    ),
    # defect: no colon after the name and "3:1" in the rationale gave scores of 1
    Row(
        "14_no_colon_ratio_in_rationale",
        "ok",
        QA,
        QA_TRAILER,
        rationales={
            3: "Shows how to set up a ratio of 3:1 and carry it through the substitution. Ratio kept at 3:1 in step 2."
        },
    ),
    # defect: `Name - 7/10 - ...` with colons and digits in the rationale
    Row(
        "15_hyphen_form_colon_rationale",
        "ok",
        AG,
        AG_TRAILER,
        rationales={
            12: "Reads the pytest output carefully, including the 3:1 ratio of failures to errors. "
            "Timing 10:42, 2:1 odds."
        },
    ),
    # defect: overall 7.8/10 was stored as 7.8 on the 0-100 scale
    Row("16_overall_out_of_10", "ok", QA, QA_TRAILER, ["overall 7.8/10 converted to 78 on 0-100"]),
    Row(
        "17_llama_score_label_out_of_10",
        "ok",
        AG,
        AG_TRAILER,
        ["overall 7.2/10 converted to 72 on 0-100"],
        rationales={1: "States a plan up front (reproduce, locate, patch, test) and follows it."},
    ),
    # defect: bracketed scores were not read
    Row("18_parenthesised_scores", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    Row("19_square_bracket_scores", "ok", AG, AG_TRAILER),
    Row("20_markdown_table", "ok", QA, QA_TRAILER, rationales={1: QA_R1}),
    # defect: "[A4]" in the brief lost the brief and marked A4 repeated
    Row(
        "21_tags_in_text",
        "ok",
        QA,
        (78.0, "keep", "math/algebra", "Correct and clear; see [A4] for why it is only medium difficulty."),
        rationales={8: "Complete, unlike what [A4] suggests about difficulty."},
    ),
    # defect: a rationale starting "none of ..." (or n/a, null) lost the score
    Row(
        "22_none_in_rationale",
        "ok",
        AG,
        AG_TRAILER,
        rationales={
            5: "none of the neighbouring tests are run.",
            7: "n/a: no error occurred, so nothing to recover from; neutral.",
            12: "null results from grep are read correctly.",
        },
    ),
    # N/A in the score position is "no score"
    Row(
        "23_na_score_position",
        "partial",
        with_(QA, a9=None, a14=None),
        QA_TRAILER,
        ["A9: no score (N/A)", "A14: no score (none)"],
        rationales={9: "no checkable final value is given.", 14: None},
    ),
    # defect: finish_reason stop without a trailer was reported as "cut off"
    Row("24_stop_without_trailer", "partial", QA, NO_TRAILER, [MISSING_TRAILER]),
    # no finish_reason and a last line cut inside its score: obviously truncated
    Row(
        "25_no_finish_reason_cut",
        "partial",
        first(AG, 6),
        NO_TRAILER,
        ["A7: score cut off", missing_from(8), MISSING_TRAILER, "reply cut off"],
        finish_reason=None,
    ),
    Row("26_reordered_trailer", "ok", QA, QA_TRAILER),
    Row("27_separators_half_points_blank_lines", "ok", with_(QA, a2=7.5, a14=5.5), QA_TRAILER),
    Row(
        "28_heading_blocks",
        "ok",
        AG,
        AG_TRAILER,
        rationales={15: "Never reaches for network or destructive commands."},
    ),
    Row(
        "29_out_of_range_scores",
        "partial",
        with_(QA, a2=None, a6=None),
        QA_TRAILER,
        ["A2: score 11 outside 0-10", "A6: score out of 100, not 10"],
    ),
    Row("30_repeated_slot", "ok", AG, AG_TRAILER, ["A5 repeated; first kept"]),
    Row("31_prose_only", "parse_error", [None] * 15, NO_TRAILER, [missing_from(1), MISSING_TRAILER]),
    Row(
        "32_recommendation_echoed",
        "partial",
        QA,
        (78.0, None, "math/algebra", QA_TRAILER[3]),
        ["unknown recommendation '<keep | downsample | drop>'"],
    ),
    Row("33_draft_then_final_untagged", "ok", QA, QA_TRAILER, ["2 sets of slot lines; the last one was read"]),
    Row("34_empty", "parse_error", [None] * 15, NO_TRAILER, [missing_from(1), MISSING_TRAILER]),
    Row("35_values_on_next_line", "ok", AG, AG_TRAILER),
    Row(
        "36_content_filter",
        "partial",
        first(QA, 4),
        NO_TRAILER,
        ["finish_reason 'content_filter'", missing_from(5), MISSING_TRAILER],
        finish_reason="content_filter",
    ),
    Row("37_bare_tags_en_dash", "ok", AG, AG_TRAILER),
    Row("38_digit_in_name_percent_overall", "ok", QA, QA_TRAILER),
    Row(
        "39_cut_in_brief",
        "partial",
        QA,
        (*QA_TRAILER[:3], None),
        ["brief cut off", "reply cut off"],
        finish_reason="length",
    ),
    # a closed think block holding the only slot lines: the reasoning is not the answer
    Row(
        "40_think_then_prose",
        "parse_error",
        [None] * 15,
        NO_TRAILER,
        ["slot lines only inside the reasoning block (ignored)", missing_from(1), MISSING_TRAILER],
    ),
]


def test_every_fixture_has_a_row() -> None:
    assert sorted(p.stem for p in REPLIES.glob("*.txt")) == sorted(r.file for r in ROWS)
    assert len(ROWS) >= 30


@pytest.mark.parametrize("row", ROWS, ids=[r.file for r in ROWS])
def test_golden(row: Row) -> None:
    text = (REPLIES / f"{row.file}.txt").read_text(encoding="utf-8")
    r = parse_reply(text, row.finish_reason)
    assert r.status == row.status
    assert r.scores == row.scores
    assert (r.overall, r.recommendation, r.domain_tag, r.brief) == row.trailer
    assert r.issues == row.issues
    for slot, rationale in row.rationales.items():
        assert r.rationales[slot - 1] == rationale, slot
    # everything scored has its rationale (the fixtures all give one)
    assert all(r.rationales[i] for i, s in enumerate(r.scores) if s is not None)


@pytest.mark.parametrize("row", ROWS, ids=[r.file for r in ROWS])
def test_golden_survives_crlf(row: Row) -> None:
    text = (REPLIES / f"{row.file}.txt").read_text(encoding="utf-8")
    a, b = parse_reply(text, row.finish_reason), parse_reply(text.replace("\n", "\r\n"), row.finish_reason)
    assert a == b
